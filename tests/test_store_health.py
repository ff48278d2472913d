"""A store that knows its own health (forget_jax/store.py; issue 11 part 3).

Every corruption class is made on a copy of one clean store: `verify` must name the damaged thing
(variable, chunk key, block index, coordinate, bookkeeping file), `prepare_resume` must repair it
(or refuse, naming the block) and a `--resume` must then reproduce the clean store bit for bit
(every variable compared with np.array_equal, NaN == NaN). The reference is the clean store itself,
written by a straight run: recomputing a block is deterministic (same compiled program, same seeds).
Also: a SIGKILL during creation recovered by `--resume` with no manual step, stale creation locks,
leases for concurrent writers and checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

import forget_jax
from forget_jax import store as st
from forget_jax.cli import app
from forget_jax.config import load_config

ROOT = Path(__file__).resolve().parents[1]
#: population estimator (no sampling), 4 x 2 grid x 2 seeds = 16 configurations; chunk_size 4
#: gives blocks of (1, 2, 2): 4 blocks, each padded to the same compiled batch.
CFG = dict(
    name="health",
    objective="fkl",
    estimator="population",
    steps=20,
    log_every=10,
    seeds=2,
    grid={"separation": [1.5, 3.0, 5.0, 7.0], "replay_ratio": [0.0, 0.3]},
)
CHUNK = 4
DONE = f"{st.PROGRESS_DIR}/done"


@pytest.fixture(scope="module")
def spec():
    return load_config(CFG)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("health") / "clean.zarr"
    forget_jax.sweep(CFG, path, chunk_size=CHUNK, progress=False, devices=_one_device())
    assert st.done_blocks(path) == {0, 1, 2, 3}
    return path


@pytest.fixture
def copy(clean, tmp_path) -> Path:
    target = tmp_path / "copy.zarr"
    shutil.copytree(clean, target)
    return target


def _one_device():
    """The store does not care about devices: one device keeps the compiled program small."""
    import jax

    return jax.local_devices()[:1]


def _resume(path: Path, **options) -> xr.Dataset:
    return forget_jax.sweep(CFG, path, chunk_size=CHUNK, resume=True, progress=False, devices=_one_device(), **options)


def _assert_bitwise_equal(a: Path, b: Path) -> None:
    x, y = xr.open_zarr(a), xr.open_zarr(b)
    assert set(x.variables) == set(y.variables)
    for name in x.variables:
        u, v = x[name].values, y[name].values
        assert u.dtype == v.dtype, name
        assert np.array_equal(u, v, equal_nan=u.dtype.kind == "f"), name


def _flip_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x10
    p.write_bytes(bytes(data))


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _alter_coordinate(path: Path) -> None:
    import zarr

    zarr.open_array(str(path / "replay_ratio"), mode="r+", zarr_format=2)[:] = [0.0, 0.5]


def _damaged_checkpoint(path: Path) -> None:
    st.write_checkpoint(path, 0, {"leaf_000": np.arange(4.0)}, {"stop": 1})
    (npz,) = (path / st.PROGRESS_DIR / "checkpoints").glob("0-*.npz")
    _flip_byte(npz)


#: (corruption, what verify must say, the report field that must name it)
CORRUPTIONS = {
    "deleted_chunk": (lambda p: (p / "old_weight/1.0.0.0").unlink(), "old_weight/1.0.0.0 is missing"),
    "truncated_chunk": (lambda p: _truncate(p / "kl_to_target/2.0.0.0"), "chunk kl_to_target/2.0.0.0 was altered"),
    "bit_flipped_chunk": (lambda p: _flip_byte(p / "loss/3.0.0.0"), "chunk loss/3.0.0.0 was altered"),
    "deleted_completed_chunk": (lambda p: (p / "completed/0.0.0").unlink(), "completed/0.0.0 is missing"),
    "deleted_coordinate_chunk": (lambda p: (p / "separation/0").unlink(), "coordinate 'separation': separation/0"),
    "altered_coordinate": (_alter_coordinate, "coordinate 'replay_ratio': replay_ratio/0 was altered"),
    "altered_metadata": (
        lambda p: (p / "loss/.zattrs").write_text('{"_ARRAY_DIMENSIONS": ["x"]}'),
        "metadata file loss/.zattrs was altered",
    ),
    "deleted_ready": (lambda p: (p / st.PROGRESS_DIR / "ready").unlink(), "ready marker"),
    "deleted_manifest": (lambda p: (p / st.PROGRESS_DIR / st.MANIFEST).unlink(), "manifest.json is missing"),
    "unreadable_marker": (lambda p: (p / DONE / "2.json").write_bytes(b'{"block": 2, "chu'), "2.json is unreadable"),
    "truncated_root_attrs": (lambda p: _truncate(p / ".zattrs"), ".zattrs is missing or unreadable"),
    "damaged_checkpoint": (_damaged_checkpoint, "block 0: checkpoint file 0-"),
}
EXPECTED = {  # what the report's fields must hold
    "deleted_chunk": dict(damaged_blocks={1: ["old_weight/1.0.0.0"]}),
    "truncated_chunk": dict(damaged_blocks={2: ["kl_to_target/2.0.0.0"]}),
    "bit_flipped_chunk": dict(damaged_blocks={3: ["loss/3.0.0.0"]}),
    "deleted_completed_chunk": dict(damaged_blocks={0: ["completed/0.0.0"]}),
    "deleted_coordinate_chunk": dict(damaged_coords=["separation"]),
    "altered_coordinate": dict(damaged_coords=["replay_ratio"]),
    "altered_metadata": dict(damaged_metadata=["loss/.zattrs"]),
    "deleted_ready": dict(missing_ready=True),
    "deleted_manifest": dict(missing_manifest=True),
    "unreadable_marker": dict(damaged_blocks={2: [f"{DONE}/2.json"]}),
    "truncated_root_attrs": dict(bad_root=[".zattrs"]),
    "damaged_checkpoint": dict(damaged_checkpoints=[0]),
}


def test_clean_store_is_healthy_and_labelled(clean):
    report = st.verify(clean)
    assert report.ok, report.lines()
    assert report.blocks_checked == 4 and report.chunks_checked > 4 * 20
    ds = xr.open_zarr(clean)
    for name in ds.variables:
        assert ds[name].attrs.get("long_name") and "units" in ds[name].attrs, name
    assert ds["kl_to_target"].attrs["units"] == "nat"
    assert ds["step"].attrs["long_name"] == "optimisation step"


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corruption_is_named_repaired_and_resumed_bitwise(case, clean, copy, spec):
    corrupt, said = CORRUPTIONS[case]
    corrupt(copy)
    report = st.verify(copy)
    text = "\n".join(report.lines())
    assert said in text, text
    for name, value in EXPECTED[case].items():
        assert getattr(report, name) == value, (name, text)
    assert report.ok == (case == "damaged_checkpoint"), text  # a damaged checkpoint is not fatal
    lines = st.prepare_resume(copy, spec)
    assert len(lines) > 1, lines  # the report and one line per repair
    after = st.verify(copy)
    assert after.ok and not after.damaged_checkpoints, after.lines()
    _resume(copy)
    assert st.verify(copy).ok
    _assert_bitwise_equal(clean, copy)


def test_resume_can_refuse_damage_naming_the_block(copy, spec):
    (copy / "old_weight/1.0.0.0").unlink()
    _flip_byte(copy / "loss/3.0.0.0")
    with pytest.raises(st.StoreError, match=r"block 1 \(old_weight/1.0.0.0\); block 3 \(loss/3.0.0.0\)"):
        st.prepare_resume(copy, spec, refuse_damaged=True)
    assert st.done_blocks(copy) == {0, 1, 2, 3}  # refusing changes nothing


def test_repair_keeps_intact_blocks(clean, copy, spec):
    (copy / "old_weight/1.0.0.0").unlink()
    before = {p: p.read_bytes() for p in copy.glob("*/0.*")}
    st.prepare_resume(copy, spec)
    assert st.done_blocks(copy) == {0, 2, 3}
    assert before == {p: p.read_bytes() for p in copy.glob("*/0.*")}


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_lock_next_to_a_complete_store_is_reported_and_removed(copy, spec):
    lock = copy.with_name(copy.name + ".creating")
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": os.uname().nodename, "lease_until": time.time() + 600}))
    report = st.verify(copy)
    assert report.stale_lock and "stale creation lock" in "\n".join(report.lines())
    st.prepare_resume(copy, spec)
    assert not lock.exists() and st.verify(copy).ok


def test_sigkill_during_creation_is_recovered_by_resume(clean, tmp_path):
    """The creator is killed after writing the zarr metadata, before the manifest and ready marker."""
    path = tmp_path / "killed.zarr"
    code = (
        "import json, sys, time\n"
        "import forget_jax.store as st\n"
        "from forget_jax.config import load_config\n"
        "from forget_jax.runner.plan import make_plan\n"
        "spec = load_config(json.loads(sys.argv[1]))\n"
        "write = st._write_template\n"
        "def slow(*args, **kwargs):\n"
        "    write(*args, **kwargs)\n"
        "    print('written', flush=True)\n"
        "    time.sleep(120)\n"
        "st._write_template = slow\n"
        f"st.create(sys.argv[2], spec, make_plan(spec, {CHUNK}), {{'config': spec.to_yaml()}})\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    child = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(CFG), str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout.readline().strip() == "written"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    lock = path.with_name(path.name + ".creating")
    assert lock.exists() and (path / ".zmetadata").exists() and not (path / st.PROGRESS_DIR / "ready").exists()
    report = st.verify(path)
    assert report.stale_lock and report.missing_ready
    twin = tmp_path / "twin.zarr"  # the same wreck, recovered by prepare_resume itself
    shutil.copytree(path, twin)
    shutil.copy(lock, twin.with_name(twin.name + ".creating"))
    lines = st.prepare_resume(twin, load_config(CFG))
    assert "created it again" in lines[0] and st.verify(twin).ok, lines
    start = time.perf_counter()
    _resume(path)
    assert time.perf_counter() - start < 60  # no 300 s wait for the dead creator
    assert not lock.exists() and st.verify(path).ok
    _assert_bitwise_equal(clean, path)


def test_claims_two_owners_expiry_and_dead_owner(copy):
    (copy / DONE / "1.json").unlink()  # block 1 is not committed: it can be claimed
    a, b = st.owner_id(), st.owner_id()
    assert a != b
    assert st.claim(copy, 1, a, 60.0)
    assert not st.claim(copy, 1, b, 60.0)  # a live writer holds it
    assert st.claim(copy, 1, a, 60.0)  # its own claim
    assert st.renew(copy, 1, a, 60.0) and not st.renew(copy, 1, b, 60.0)
    assert list(st.live_claims(copy)) == [1] and st.live_claims(copy)[1]["owner"] == a
    st.release(copy, 1, b)  # not b's: nothing happens
    assert 1 in st.live_claims(copy)
    st.release(copy, 1, a)
    assert st.live_claims(copy) == {}
    assert st.claim(copy, 1, a, 0.05)
    time.sleep(0.1)  # a's lease expires
    assert 1 not in st.live_claims(copy)
    assert st.claim(copy, 1, b, 60.0)  # taken over
    assert not st.renew(copy, 1, a, 60.0)  # a learns it lost the block
    claim_file = copy / st.PROGRESS_DIR / "claims" / "1.json"
    record = {"owner": "gone", "pid": _dead_pid(), "host": os.uname().nodename, "expires": time.time() + 600}
    claim_file.write_text(json.dumps(record))
    assert st.claim(copy, 1, a, 60.0)  # the owner process is dead
    assert not st.claim(copy, 0, a, 60.0)  # committed: nothing to compute


def test_checkpoint_roundtrip_overwrite_and_drop(copy):
    arrays = {"leaf_000": np.arange(6, dtype=np.float32).reshape(2, 3), "leaf_001": np.array([7], dtype=np.int32)}
    st.write_checkpoint(copy, 2, arrays, {"stop": 3, "subset": None})
    st.write_checkpoint(copy, 2, {k: v + 1 for k, v in arrays.items()}, {"stop": 4})
    assert len(list((copy / st.PROGRESS_DIR / "checkpoints").glob("2-*.npz"))) == 1
    loaded, meta = st.read_checkpoint(copy, 2)
    assert meta == {"stop": 4}
    for k, v in arrays.items():
        assert loaded[k].dtype == v.dtype and np.array_equal(loaded[k], v + 1)
    st.drop_checkpoint(copy, 2)
    assert st.read_checkpoint(copy, 2) is None
    _damaged_checkpoint(copy)
    with pytest.warns(UserWarning, match="checkpoint of block 0 file 0-.* was altered"):
        assert st.read_checkpoint(copy, 0) is None
    assert st.read_checkpoint(copy, 0) is None  # discarded


def test_cli_verify_exit_codes(copy, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["verify", str(copy)])
    assert result.exit_code == 0 and "healthy" in result.output, result.output
    (copy / "old_weight/1.0.0.0").unlink()
    result = runner.invoke(app, ["verify", str(copy)])
    assert result.exit_code == 1 and "block 1: variable 'old_weight' chunk old_weight/1.0.0.0" in result.output
    result = runner.invoke(app, ["verify", str(tmp_path / "nope.zarr")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_export_refuses_to_overwrite_without_force(clean, tmp_path):
    out = tmp_path / "s.nc"
    out.write_text("keep me")
    result = CliRunner().invoke(app, ["export", str(clean), "--out", str(out)])
    assert result.exit_code == 2 and "--force" in result.output and out.read_text() == "keep me"
    result = CliRunner().invoke(app, ["export", str(clean), "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output
    ds = xr.open_dataset(out, engine="h5netcdf")
    assert ds["old_weight"].attrs["units"] == "1" and ds.attrs["git_dirty"] in (0, 1)
    ds.close()


def test_provenance_names_the_code_and_command():
    prov = st.provenance()
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    assert prov["git_commit"] == (git.stdout.strip() if git.returncode == 0 else "")
    assert prov["command"] and prov["host"] and prov["python_version"].count(".") == 2
