"""The sweep runner and its store: results independent of sharding / chunking / processes,
kill-and-resume, NaN isolation, the store layout (public contract), --shard, multi-host via
jax.distributed, clear errors, and the chen2025 preset end to end.

Compile budget: almost every run here shares one compiled program (one Setup, blocks padded to a
multiple of the device count; with conftest.py's 4 CPU devices a block of at most 4 configurations
pads to 4, so chunk sizes 1 to 4 reuse it). Subprocesses share a persistent compilation cache.

Any number and kind of devices: in-process runs use the default devices (a GPU where there is
one) and are compared with each other; CLI subprocesses run on this host's CPU devices
(JAX_PLATFORMS=cpu, their count from the inherited XLA_FLAGS), so what they write is compared
with a run of this process on the same CPU devices (`cpu_reference`, `_cpu_devices`). Checked
with XLA_FLAGS=--xla_force_host_platform_device_count=1, 3 and 4.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner

import forget_jax
from forget_jax.cli import app
from forget_jax.config import load_config
from forget_jax.runner import make_plan, run
from forget_jax.store import PROGRESS_DIR, StoreError, export_netcdf

ROOT = Path(__file__).resolve().parents[1]
RTOL, ATOL = 1e-5, 1e-6
CONTRACT_VARS = (
    "old_weight",
    "old_drift",
    "new_mean_error",
    "kl_to_target",
    "loss",
    "starved_fraction",
    "old_overlap",
    "new_overlap",
    "diverged",
)

#: One small Monte Carlo setup shared by every test (one compiled program per device set).
BASE = dict(
    name="tiny",
    objective="fkl",
    estimator="score",
    sampling="ancestral",
    batch_size=16,
    steps=20,
    log_every=5,
    learning_rate=0.05,
    samplewise_items=0,  # no test here reads the sample-wise variables (NaN); they are most of the compile
)
GRID_CFG = {**BASE, "seeds": 2, "grid": {"separation": [1.5, 3.0, 5.0], "replay_ratio": [0.0, 0.3]}}


def _write_cfg(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _assert_same(a: xr.Dataset, b: xr.Dataset, exact: bool = False, names=None):
    assert dict(a.sizes) == dict(b.sizes)
    for name in a.coords:
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    for name in names or a.data_vars:
        x, y = np.asarray(a[name].values), np.asarray(b[name].values)
        assert a[name].dims == b[name].dims, name
        if exact or x.dtype == bool:
            np.testing.assert_array_equal(x, y, err_msg=name)
        else:
            np.testing.assert_allclose(x, y, rtol=RTOL, atol=ATOL, equal_nan=True, err_msg=name)


def _done(store: Path) -> set[int]:
    d = store / PROGRESS_DIR / "done"
    return {int(p.stem) for p in d.glob("*.json")} if d.exists() else set()


@pytest.fixture(scope="session")
def subprocess_env(tmp_path_factory):
    """Environment of CLI subprocesses: this session's 4 CPU devices (XLA_FLAGS from conftest.py)
    and a persistent compilation cache shared between them (a fresh process compiles in ~10 s)."""
    env = dict(os.environ)
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_cache"))
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "forget_jax.cli", *args]


def _cpu_devices() -> list:
    """The devices the CLI subprocesses run on (subprocess_env: JAX_PLATFORMS=cpu, the same
    XLA_FLAGS): this host's CPU devices, whatever the default backend of this process."""
    return jax.devices("cpu")


@pytest.fixture(scope="module")
def spec():
    return load_config(GRID_CFG)


@pytest.fixture(scope="module")
def reference(spec):
    """The sweep in memory on the default devices (any number, any kind), blocks of 4 configurations."""
    return run(spec, None, chunk_size=4, progress=False)


@pytest.fixture(scope="module")
def cpu_reference(spec, reference):
    """The reference on the CPU devices the subprocesses use (the reference itself on a CPU host)."""
    if list(jax.local_devices()) == list(_cpu_devices()):
        return reference
    return run(spec, None, chunk_size=4, devices=_cpu_devices(), progress=False)


@pytest.fixture(scope="module")
def stored(spec, tmp_path_factory):
    """The same sweep written to a store (blocks of 2 configurations, padded to 4)."""
    path = tmp_path_factory.mktemp("stored") / "sweep.zarr"
    run(spec, path, chunk_size=3, progress=False)
    return path


# ---------------------------------------------------------------------------------------------
# (a) sharding, device count and chunking do not change results


def test_chunk_size_and_device_count_do_not_change_results(spec, reference):
    assert reference.attrs["chunk_shape"] == [1, 2, 2]
    assert not reference["diverged"].values.any()
    # blocks of 2 configurations, padded to the device count (on 4 devices half is padding)
    chunked = run(spec, None, chunk_size=2, progress=False)
    assert chunked.attrs["chunk_shape"] == [1, 1, 2]
    _assert_same(reference, chunked)
    # unsharded: one device, blocks of 8 (the last block is ragged: 4 configurations)
    single = run(spec, None, chunk_size=8, devices=jax.local_devices()[:1], progress=False)
    assert single.attrs["chunk_shape"] == [2, 2, 2]
    _assert_same(reference, single)


def test_store_equals_in_memory(reference, stored):
    _assert_same(reference, xr.open_zarr(stored))


def test_block_plan_is_rectangular_and_covering(spec):
    for chunk in (1, 3, 4, 5, 12, 100):
        plan = make_plan(spec, chunk)
        seen = np.zeros(spec.shape, dtype=int)
        for block in plan.blocks:
            seen[block.region] += 1
            assert block.size <= max(chunk, 1)
        assert (seen == 1).all(), chunk
        for n in (2, 3):
            shards = [set(b.index for b in plan.shard(i, n)) for i in range(n)]
            assert set().union(*shards) == {b.index for b in plan.blocks}
            assert sum(len(s) for s in shards) == len(plan.blocks)


# ---------------------------------------------------------------------------------------------
# (b) SIGKILL in the middle of a sweep, then --resume: same values as a straight run


def test_kill_and_resume(tmp_path, subprocess_env):
    cfg = {
        **BASE,
        "name": "killable",
        "seeds": 2,
        "grid": {"separation": {"linspace": [1.0, 6.0, 25]}, "replay_ratio": [0.0, 0.3]},
    }
    path = _write_cfg(tmp_path / "kill.yaml", cfg)
    store = tmp_path / "kill.zarr"
    total = len(make_plan(load_config(cfg), 1).blocks)
    assert total == 100
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(
        _cli("sweep", str(path), "--out", str(store), "--chunk-size", "1", "--no-progress"),
        env=subprocess_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 180
    try:
        while not _done(store):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "no block finished in 180 s"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    first = _done(store)
    assert 1 <= len(first) < total, f"{len(first)} of {total} blocks done when killed"
    # without --resume: one clear line, exit 2
    again = subprocess.run(
        _cli("sweep", str(path), "--out", str(store), "--chunk-size", "1", "--no-progress"),
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 2, again.stderr
    assert again.stderr.strip().count("\n") == 0 and again.stderr.startswith("error: ") and "--resume" in again.stderr
    # --resume finishes the rest (the chunk size comes from the store)
    resumed = subprocess.run(
        _cli("sweep", str(path), "--out", str(store), "--resume", "--no-progress"),
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert _done(store) == set(range(total))
    straight = run(load_config(cfg), None, chunk_size=1, devices=_cpu_devices(), progress=False)  # as the CLI
    ds = xr.open_zarr(store)
    assert bool(ds["completed"].all())
    _assert_same(straight, ds, exact=True)


# ---------------------------------------------------------------------------------------------
# (c) a diverging configuration is flagged and isolated


def test_nan_isolation():
    cfg = {**BASE, "seeds": 2, "grid": {"separation": [2.0, 4.0], "learning_rate": [0.05, 1e6]}}
    ds = forget_jax.sweep(cfg, chunk_size=4, progress=False)  # each block holds both learning rates
    diverged = ds["diverged"].values
    expected = np.zeros_like(diverged)
    expected[:, 1, :] = True
    np.testing.assert_array_equal(diverged, expected)
    assert np.isnan(ds["old_weight"].sel(learning_rate=1e6).isel(step=-1).values).all()
    good = forget_jax.sweep(
        {**cfg, "grid": {"separation": [2.0, 4.0], "learning_rate": [0.05]}}, chunk_size=4, progress=False
    )
    assert not good["diverged"].values.any()
    _assert_same(ds.sel(learning_rate=[0.05]), good)
    assert np.isfinite(good["old_weight"].values).all()


# ---------------------------------------------------------------------------------------------
# (d) the store is the public contract; netCDF export round trip


def test_store_layout_contract(spec, stored, tmp_path):
    ds = xr.open_zarr(stored)
    assert tuple(ds["old_weight"].dims) == ("separation", "replay_ratio", "seed", "step")
    assert tuple(ds["diverged"].dims) == ("separation", "replay_ratio", "seed")
    assert dict(ds.sizes) == {"separation": 3, "replay_ratio": 2, "seed": 2, "step": 5}
    np.testing.assert_array_equal(ds["separation"].values, [1.5, 3.0, 5.0])
    np.testing.assert_array_equal(ds["replay_ratio"].values, [0.0, 0.3])
    np.testing.assert_array_equal(ds["seed"].values, [0, 1])
    np.testing.assert_array_equal(ds["step"].values, [0, 5, 10, 15, 20])
    for name in CONTRACT_VARS:
        assert name in ds.data_vars, name
    assert ds["diverged"].dtype == bool and ds["completed"].dtype == bool
    assert bool(ds["completed"].all())
    assert np.isnan(ds["starved_fraction"].isel(step=0)).all()  # no step taken at step 0
    # step 0 is the initial state: beta(0) = init_old_weight
    np.testing.assert_allclose(ds["old_weight"].isel(step=0).values, 0.5)
    attrs = ds.attrs
    assert load_config(yaml.safe_load(attrs["config"])).to_yaml() == spec.to_yaml()
    assert attrs["forget_jax_version"] == forget_jax.__version__ and attrs["jax_version"] == jax.__version__
    devices = jax.local_devices()
    assert attrs["device_kind"] == devices[0].device_kind and attrs["platform"] == devices[0].platform
    assert attrs["local_device_count"] == len(devices)
    for key in ("wall_time_s", "compile_time_s", "run_time_s"):
        assert attrs[key] >= 0, key
    assert attrs["blocks_done"] == attrs["blocks_total"] == 6 and attrs["chunk_shape"] == [1, 1, 2]

    nc = export_netcdf(stored, tmp_path / "sweep.nc")
    back = xr.open_dataset(nc, engine="h5netcdf").load()
    _assert_same(ds.load(), back, exact=True)
    assert back.attrs["config"] == attrs["config"]

    # the CLI export writes the same file
    result = CliRunner().invoke(app, ["export", str(stored), "--out", str(tmp_path / "cli.nc")])
    assert result.exit_code == 0, result.output
    _assert_same(back, xr.open_dataset(tmp_path / "cli.nc", engine="h5netcdf").load(), exact=True)


# ---------------------------------------------------------------------------------------------
# (e) --shard i/N processes fill one store


def test_shards_fill_one_store(spec, reference, tmp_path):
    path = _write_cfg(tmp_path / "grid.yaml", GRID_CFG)
    store = tmp_path / "sharded.zarr"
    runner = CliRunner()
    first = runner.invoke(
        app, ["sweep", str(path), "--out", str(store), "--shard", "0/2", "--chunk-size", "3", "--no-progress"]
    )
    assert first.exit_code == 0, first.output
    partial = xr.open_zarr(store)["completed"].values
    assert 0 < partial.sum() < partial.size
    second = runner.invoke(
        app, ["sweep", str(path), "--out", str(store), "--shard", "1/2", "--chunk-size", "3", "--no-progress"]
    )
    assert second.exit_code == 0, second.output
    assert "12/12 configurations done" in second.output
    _assert_same(reference, xr.open_zarr(store))


# ---------------------------------------------------------------------------------------------
# (f) two processes with jax.distributed on 127.0.0.1 fill one store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_process_waits_for_a_store_being_created(spec, reference, tmp_path):
    """Processes launched together: one finds the store folder while another is still writing its
    metadata (the `.creating` lock is held); it must wait, not call the store foreign."""
    import shutil
    import threading

    from forget_jax.runner.execute import store_attrs
    from forget_jax.store import create

    store = tmp_path / "racing.zarr"
    lock = store.with_name(store.name + ".creating")
    lock.touch()
    store.mkdir()  # the creator has started writing
    staging = tmp_path / "staging" / "racing.zarr"
    create(staging, spec, make_plan(spec, 3), store_attrs(spec))

    def finish_creation():
        time.sleep(0.5)
        shutil.copytree(staging, store, dirs_exist_ok=True, ignore=shutil.ignore_patterns("ready"))
        (store / PROGRESS_DIR / "ready").write_text("now")
        lock.unlink()

    thread = threading.Thread(target=finish_creation)
    thread.start()
    try:
        ds = run(spec, store, chunk_size=3, progress=False)
    finally:
        thread.join()
    _assert_same(reference, ds)


def test_import_and_load_config_leave_the_backend_alone(subprocess_env):
    """`jax.distributed.initialize` must run before the XLA backend starts: importing forget_jax
    (e.g. a module-level jnp constant) or loading a config must not start it."""
    code = (
        "import forget_jax, forget_jax.cli, forget_jax.runner, forget_jax.store\n"
        "from forget_jax.config import load_config\n"
        "load_config('configs/quickstart.yaml')\n"
        "from jax._src import xla_bridge\n"
        "assert not xla_bridge.backends_are_initialized(), 'XLA backend initialised at import time'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_distributed_two_processes(cpu_reference, tmp_path, subprocess_env):
    path = _write_cfg(tmp_path / "grid.yaml", GRID_CFG)
    store = tmp_path / "multihost.zarr"
    port = _free_port()
    procs, logs = [], []
    for i in range(2):
        logs.append(tmp_path / f"process{i}.log")
        procs.append(
            subprocess.Popen(
                _cli(
                    "sweep",
                    str(path),
                    "--out",
                    str(store),
                    "--chunk-size",
                    "3",
                    "--no-progress",
                    "--distributed",
                    "--coordinator",
                    f"127.0.0.1:{port}",
                    "--num-processes",
                    "2",
                    "--process-id",
                    str(i),
                ),
                env=subprocess_env,
                stdout=logs[-1].open("w"),
                stderr=subprocess.STDOUT,
            )
        )
    try:
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    output = "\n".join(f"--- process {i}\n{log.read_text()}" for i, log in enumerate(logs))
    assert codes == [0, 0], output
    # each process ran its own disjoint half of the blocks (round robin by process index)
    assert len(_done(store)) == 6
    _assert_same(cpu_reference, xr.open_zarr(store))


# ---------------------------------------------------------------------------------------------
# (g) clear one-line errors for a finished store and for a different sweep


def test_rerun_without_resume_and_other_config_rejected(spec, stored, tmp_path):
    with pytest.raises(StoreError) as info:
        run(spec, stored, progress=False)
    assert "\n" not in str(info.value) and "--resume" in str(info.value)
    # --resume on a finished store runs nothing and returns the same data
    again = run(spec, stored, resume=True, progress=False)
    _assert_same(xr.open_zarr(stored), again, exact=True)
    other = load_config({**GRID_CFG, "steps": 40})
    with pytest.raises(StoreError) as info:
        run(other, stored, resume=True, progress=False)
    assert "\n" not in str(info.value) and "different sweep" in str(info.value)
    # through the CLI: exit status 2, a single 'error:' line, no traceback
    path = _write_cfg(tmp_path / "grid.yaml", GRID_CFG)
    other_path = _write_cfg(tmp_path / "other.yaml", {**GRID_CFG, "steps": 40})
    runner = CliRunner()
    for args, needle in (
        (["sweep", str(path), "--out", str(stored)], "--resume"),
        (["sweep", str(other_path), "--out", str(stored), "--resume"], "different sweep"),
    ):
        result = runner.invoke(app, [*args, "--no-progress"])
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
        assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------
# (h) the chen2025 preset from configs/chen2025.yaml


@pytest.mark.parametrize(
    "name, objective, rates",
    [
        ("chen2025.yaml", "chen2025_fkl", [0.15, 0.01]),  # FWD_LR
        ("chen2025_rkl.yaml", "chen2025_rkl", None),  # REV_LR = [0.01], the preset's default
    ],
)
def test_chen2025_config_runs(tmp_path, name, objective, rates):
    raw = yaml.safe_load((ROOT / "configs" / name).read_text())
    raw.update(steps=4, batch_size=200, seeds=2)  # shortened: CRNC25 runs 200 steps of 1000 samples
    spec = load_config(raw)
    assert spec.base.objective == objective
    if rates is None:
        assert spec.dims == ("seed",) and spec.base.learning_rate == 0.01
    else:
        assert spec.dims == ("learning_rate", "seed") and spec.axes["learning_rate"] == rates
    ds = run(spec, tmp_path / "chen2025.zarr", progress=False)
    np.testing.assert_array_equal(ds["step"].values, [0, 1, 2, 3, 4])  # every iteration is logged
    for var in ("old_overlap", "new_overlap"):
        values = ds[var].values
        assert values.shape == (*spec.shape, 5)
        assert np.isfinite(values).all() and (values >= -1e-6).all() and (values <= 1 + 1e-5).all()
    assert not ds["diverged"].values.any()
    # step 0: overlaps of q(0) = 0.75 N(-3.5, 1) + 0.25 N(0.5, 0.7) with the target components,
    # 2 Phi(-|shift| / (2 sigma)): old 2 Phi(-0.25) = 0.8026, new 2 Phi(-3 / 1.4) = 0.0321
    np.testing.assert_allclose(ds["old_overlap"].isel(step=0).values, 0.8026, atol=2e-3)
    np.testing.assert_allclose(ds["new_overlap"].isel(step=0).values, 0.0321, atol=2e-3)
    if objective == "chen2025_fkl":
        # SFT on the new mode moves the new component toward it: the new overlap grows
        assert (ds["new_overlap"].isel(step=-1) > ds["new_overlap"].isel(step=0)).all()
