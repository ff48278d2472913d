"""Long sweeps you can leave running: segments, checkpoints, interrupts, leases (runner/execute.py).

What is shown here (issue "long sweeps"):

* a SIGINT and a SIGKILL *inside* a block (between two of its segments, after the first
  checkpoint) resume to a store bitwise equal to a run straight through;
* a SIGINT during XLA compilation exits cleanly (status 130, the resume command on one line, no
  crash), once in the default suite and in a loop of random-time signals in a `slow` test;
* two writers on one store without `--shard` compute every block exactly once (leases);
* the run-time cap trips after the first segment and keeps the checkpoint; `forget-jax plan`.

The reference is the same sweep run straight through in one process (`segment_logs` = all log
points); the comparisons are bitwise (NaN-aware), because segments replay the same compiled step
on an exact host copy of the carry.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

import forget_jax
from forget_jax.config import ConfigError
from forget_jax.runner.interrupts import Interrupted

#: Monte Carlo (pathwise) so that the PRNG stream must survive the checkpoint; 13 log points.
CONFIG = {
    "name": "long",
    "objective": "fkl",
    "estimator": "pathwise",
    "batch_size": 16,
    "learning_rate": 0.05,
    "steps": 60,
    "log_every": 5,
    "seeds": 2,
    "samplewise_items": 0,  # no test here reads the sample-wise variables (NaN); they are most of the compile
    "grid": {"separation": [1.5, 2.5, 3.5]},
}


class _CPU:
    """In-process runs on this session's CPU devices, like the CLI subprocesses (JAX_PLATFORMS=cpu):
    bitwise comparisons stay valid on a GPU host."""

    @staticmethod
    def sweep(*args, **kwargs):
        return forget_jax.sweep(*args, devices=jax.devices("cpu"), **kwargs)


fj = _CPU()


def _assert_bitwise(a, b) -> None:
    assert dict(a.sizes) == dict(b.sizes)
    for name in b.data_vars:
        x, y = np.asarray(a[name].values), np.asarray(b[name].values)
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The sweep straight through, in one segment, into a store."""
    out = tmp_path_factory.mktemp("reference") / "ref.zarr"
    return fj.sweep(CONFIG, out, progress=False, segment_logs=10_000).load()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    environment = dict(os.environ)
    environment["FORGET_JAX_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    environment["JAX_COMPILATION_CACHE_DIR"] = environment["FORGET_JAX_CACHE_DIR"]
    environment["JAX_PLATFORMS"] = "cpu"
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


def _checkpoints(store: Path) -> list[Path]:
    return sorted((store / ".forget_jax").rglob("*.npz"))


def test_sigint_inside_a_block_resumes_bitwise(reference, tmp_path):
    """SIGINT after the second segment: the segment is finished, checkpointed, `Interrupted`
    says how to resume; resuming continues at that log point and ends bitwise equal."""
    store = tmp_path / "s.zarr"
    seen = []

    def interrupt_after_two(block, stop, num_logs):
        seen.append(stop)
        if len(seen) == 2:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(Interrupted) as info:
        fj.sweep(CONFIG, store, progress=False, segment_logs=2, on_segment=interrupt_after_two)
    assert seen == [2, 4]
    assert "checkpointed at log point 4/13" in str(info.value)
    assert "resume=True" in str(info.value)
    assert len(_checkpoints(store)) == 1
    resumed = []
    ds = fj.sweep(
        CONFIG, store, resume=True, progress=False, segment_logs=3, on_segment=lambda b, s, n: resumed.append(s)
    )
    assert resumed[0] == 7, "the resumed run must start at the checkpoint (log point 4), not at 0"
    assert _checkpoints(store) == []
    _assert_bitwise(ds, reference)


def test_sigkill_inside_a_block_resumes_bitwise(reference, tmp_path, env):
    """SIGKILL (no handler can run) after the third segment's checkpoint."""
    store = tmp_path / "k.zarr"
    script = textwrap.dedent(
        f"""
        import os, signal, forget_jax as fj
        count = []
        def kill(block, stop, num_logs):
            count.append(stop)
            if len(count) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        fj.sweep({CONFIG!r}, {str(store)!r}, progress=False, segment_logs=2, on_segment=kill)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(_checkpoints(store)) == 1
    resumed = []
    ds = fj.sweep(CONFIG, store, resume=True, progress=False, on_segment=lambda b, s, n: resumed.append(s))
    assert resumed[0] > 6, "resumed from the checkpoint at log point 6"
    _assert_bitwise(ds, reference)


def _write_config(tmp_path: Path) -> Path:
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    return path


def test_sigint_during_compilation_exits_cleanly(reference, tmp_path, env):
    """The signal arrives while XLA compiles (a timer thread fires inside `_compiled`): the
    process finishes compiling, exits 130 with one line naming the resume command, no crash."""
    store = tmp_path / "c.zarr"
    config = _write_config(tmp_path)
    script = textwrap.dedent(
        f"""
        import os, signal, threading
        import forget_jax.runner.execute as ex
        real = ex.make_segments
        def make_segments(setup):
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()
            return real(setup)
        ex.make_segments = make_segments
        import sys
        from forget_jax.cli import app
        sys.argv = ["forget-jax", "sweep", {str(config)!r}, "--out", {str(store)!r}, "--no-progress"]
        app()
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted: stopped before block 0 ran; resume with: forget-jax sweep"), last
    assert last.endswith("--resume"), last
    ds = fj.sweep(CONFIG, store, resume=True, progress=False)
    _assert_bitwise(ds, reference)


@pytest.mark.slow
def test_random_sigint_loop_never_crashes_and_resumes(reference, tmp_path, env):
    """SIGINT at random moments (import, compilation, segments, store writes), repeatedly: every
    exit is clean (0 or 130; a death by SIGINT only after the sweep completed, during the
    interpreter's shutdown), never a crash, and the store always resumes to the same result."""
    store = tmp_path / "loop.zarr"
    config = _write_config(tmp_path)
    rng = random.Random(0)
    outcomes = []
    for _ in range(7):
        cmd = [sys.executable, "-m", "forget_jax.cli", "sweep", str(config), "--out", str(store), "--resume"]
        cmd += ["--segment-logs", "1", "--no-progress"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.5, 6.0))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
        outcomes.append(proc.returncode)
        # -SIGINT only once the sweep is complete ("wrote ..."): Python's finalization restores
        # the default handler while JAX shuts down, when nothing is left to save
        finished = out.startswith("wrote ")
        assert proc.returncode in (0, 130) or (finished and proc.returncode == -signal.SIGINT), err
        assert "Traceback" not in err and "pure virtual" not in err, err
    ds = fj.sweep(CONFIG, store, resume=True, progress=False)
    _assert_bitwise(ds, reference)
    assert 130 in outcomes


def test_two_writers_without_shard_share_the_blocks(reference, tmp_path, env):
    """Two processes on one store, no --shard: blocks are taken through leases, so every block is
    computed by exactly one of them, and the store equals the reference."""
    store = tmp_path / "w.zarr"
    logs = [tmp_path / f"writer{i}.json" for i in range(2)]
    procs = []
    for log in logs:
        script = textwrap.dedent(
            f"""
            import json, forget_jax as fj
            blocks = set()
            def record(block, stop, num_logs):
                blocks.add(block.index)
            fj.sweep({CONFIG!r}, {str(store)!r}, resume=True, progress=False, chunk_size=1, segment_logs=4,
                     on_segment=record)
            open({str(log)!r}, "w").write(json.dumps(sorted(blocks)))
            """
        )
        procs.append(subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    computed = [set(json.loads(log.read_text())) for log in logs]
    assert not (computed[0] & computed[1]), f"blocks computed twice: {computed[0] & computed[1]}"
    assert computed[0] | computed[1] == set(range(6))
    ds = fj.sweep(CONFIG, store, resume=True, progress=False, chunk_size=1)
    # one configuration per block here vs six in the reference: the vmapped batch shape differs,
    # so XLA may round differently (last bits of float32); the values agree to float rounding
    for name in reference.data_vars:
        np.testing.assert_allclose(ds[name].values, reference[name].values, rtol=1e-5, atol=1e-6, err_msg=name)


def test_run_time_cap_trips_after_the_first_segment_and_keeps_it(reference, tmp_path):
    store = tmp_path / "cap.zarr"
    with pytest.raises(ConfigError, match=r"exceeds --max-hours 1e-09; pass a larger --max-hours"):
        fj.sweep(CONFIG, store, progress=False, segment_logs=2, max_hours=1e-9)
    assert len(_checkpoints(store)) == 1
    _assert_bitwise(fj.sweep(CONFIG, store, resume=True, progress=False), reference)


def test_plan_dry_run_describes_and_writes_nothing(tmp_path):
    from typer.testing import CliRunner

    from forget_jax.cli import app

    config = _write_config(tmp_path)
    result = CliRunner().invoke(app, ["plan", str(config), "--chunk-size", "4"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "6 configurations = separation 3 x seed 2" in text
    assert "2 of up to 4 configurations" in text  # 2 blocks
    assert "1 group(s)" in text
    assert "estimate     run" in text and "probe" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.yaml"]


def test_extend_adds_seeds_and_values_without_recomputing(reference, tmp_path):
    """A finished store extended with a seed and two separations: the 6 configurations it holds
    are copied (markers count them), only the 9 new ones are simulated, and the result equals
    the bigger sweep run from scratch."""
    from forget_jax.store import block_markers

    store = tmp_path / "e.zarr"
    fj.sweep(CONFIG, store, progress=False)
    bigger = {**CONFIG, "seeds": 3, "grid": {"separation": [1.5, 2.0, 2.5, 3.5, 4.5]}}
    ds = fj.sweep(bigger, store, progress=False, extend=True, chunk_size=4)
    assert sum(m.get("copied", 0) for m in block_markers(store)) == 6
    fresh = fj.sweep(bigger, tmp_path / "fresh.zarr", progress=False, chunk_size=4)
    # a new configuration may sit at another position of the vmapped batch than in the fresh
    # run (XLA's vector lanes vs its remainder loop can round differently): float rounding only
    assert dict(ds.sizes) == dict(fresh.sizes)
    for name in fresh.data_vars:
        np.testing.assert_allclose(ds[name].values, fresh[name].values, rtol=1e-5, atol=1e-6, err_msg=name)
    old = reference.sel(separation=[1.5, 2.5, 3.5])
    _assert_bitwise(ds.sel(separation=[1.5, 2.5, 3.5], seed=[0, 1]), old)
    assert not any(p.name.endswith((".extending", ".replaced")) for p in tmp_path.iterdir())


def test_extend_refuses_a_change_that_is_not_an_extension(tmp_path):
    store = tmp_path / "x.zarr"
    fj.sweep(CONFIG, store, progress=False)
    with pytest.raises(ConfigError, match=r"--extend: learning_rate=0.1 differs from the store's 0.05"):
        fj.sweep({**CONFIG, "learning_rate": 0.1}, store, progress=False, extend=True)
    with pytest.raises(ConfigError, match=r"separation value\(s\) \[1.5\] of the store are missing"):
        fj.sweep({**CONFIG, "grid": {"separation": [2.5, 3.5]}}, store, progress=False, extend=True)
