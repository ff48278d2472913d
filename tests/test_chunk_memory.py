"""The default block size from XLA's memory analysis (runner/plan.py `choose_chunk_size`).

The engine's memory analysis is replaced by a known linear model total(n) = FIXED + PER_CONFIG n
(bytes of the segment program for n configurations) and the free memory by a known number, so
the expected size is computed here independently: the largest n whose program fits the safety
fraction of the free memory, per device on accelerators (a block is split over them), with the
fixed part once per host device on CPU (they share the host's memory). Nothing is compiled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from forget_jax import train
from forget_jax.config import load_config
from forget_jax.runner import plan

FIXED = 3_000_000  # bytes of the fake program that do not grow with n
PER_CONFIG = 250_000  # bytes per configuration of the fake program
FRACTION = 0.25  # the share of free memory the docstring of plan.MEMORY_FRACTION argues for
GIB = 2**30


@dataclass(frozen=True)
class FakeDevice:
    platform: str
    id: int
    free: int = 0

    def memory_stats(self):
        return {"bytes_limit": self.free + 123, "bytes_in_use": 123}


def _big_spec():
    """Two compile groups (batch_size 8 and 64) of 100 x 50 x 64 = 320,000 configurations."""
    return load_config(
        {
            "estimator": "score",
            "steps": 100,
            "log_every": 10,
            "seeds": 64,
            "grid": {
                "batch_size": [8, 64],
                "separation": {"linspace": [1.0, 6.0, 100]},
                "replay_ratio": {"linspace": [0.0, 0.5, 50]},
            },
        }
    )


@pytest.fixture
def memory(monkeypatch):
    """Fake memory analysis (records the (batch size, n) it was asked for) and fresh choices."""
    calls = []

    def program_memory(setup, n):
        calls.append((setup.batch_size, n))
        return {"total": FIXED + PER_CONFIG * n}

    monkeypatch.setattr(train, "program_memory", program_memory)
    monkeypatch.setattr(plan, "_CHOICES", {})
    return calls


def _free(monkeypatch, nbytes):
    monkeypatch.setattr(plan, "free_memory", lambda devices: (nbytes, "test"))


def test_size_is_the_largest_batch_that_fits_the_fraction_of_free_memory(memory, monkeypatch):
    assert plan.MEMORY_FRACTION == FRACTION
    free = 8 * GIB
    _free(monkeypatch, free)
    spec = _big_spec()
    choice = plan.choose_chunk_size(spec, [FakeDevice("cpu", 0)])
    expected = math.floor((FRACTION * free - FIXED) / PER_CONFIG)  # 8583 < group and cap
    assert choice.source == "memory analysis" and choice.size == expected
    assert choice.per_config_bytes == pytest.approx(PER_CONFIG) and choice.fixed_bytes == pytest.approx(FIXED)
    # one group probed, the one with the larger samples (B = 64), at two batch sizes
    assert {b for b, _ in memory} == {64} and len(memory) == 2
    assert str(choice.size) in choice.describe() and "memory analysis" in choice.describe()
    # remembered: a second call (make_plan after check_limits) compiles nothing more
    assert plan.default_chunk_size(spec, [FakeDevice("cpu", 0)]) == expected and len(memory) == 2
    # two CPU host devices share the host memory: the fixed part twice, the same configurations
    two = plan.choose_chunk_size(spec, [FakeDevice("cpu", 0), FakeDevice("cpu", 1)])
    assert two.size == math.floor((FRACTION * free - 2 * FIXED) / PER_CONFIG)


def test_accelerators_hold_a_share_of_the_block_each(memory, monkeypatch):
    free = 2 * GIB  # the smallest free memory of the devices sets the size
    devices = [FakeDevice("gpu", i, free + i * GIB) for i in range(4)]
    choice = plan.choose_chunk_size(_big_spec(), devices)
    per_device = (FRACTION * free - FIXED) / PER_CONFIG  # configurations one device can hold
    assert choice.size == math.floor(4 * per_device)
    assert choice.free_bytes == free


def test_capped_at_max_chunk_and_the_group(memory, monkeypatch):
    _free(monkeypatch, 10**6 * GIB)
    assert plan.choose_chunk_size(_big_spec(), [FakeDevice("cpu", 0)]).size == plan.MAX_CHUNK == 65536


def test_small_sweep_runs_each_group_in_one_block_without_a_probe(memory, monkeypatch):
    _free(monkeypatch, 1 * GIB)
    spec = load_config("quickstart")  # 2 groups (objective) of 12 x 6 configurations
    choice = plan.choose_chunk_size(spec, [FakeDevice("cpu", 0)])
    assert (choice.size, choice.source, memory) == (72, "whole group fits", [])
    assert plan.make_plan(spec, choice.size).chunk_shape == (1, 12, 6, 1)


def test_fallback_formula_when_memory_analysis_is_unavailable(monkeypatch):
    monkeypatch.setattr(plan, "_CHOICES", {})
    _free(monkeypatch, 8 * GIB)
    spec = _big_spec()

    def broken(setup, n):
        raise RuntimeError("no memory_analysis on this backend")

    monkeypatch.setattr(train, "program_memory", broken)
    choice = plan.choose_chunk_size(spec, [FakeDevice("cpu", 0)])
    assert (choice.source, choice.size) == ("formula fallback", plan.formula_chunk_size(spec))
    assert "no memory_analysis" in choice.describe()
    monkeypatch.setattr(plan, "_CHOICES", {})
    monkeypatch.setattr(train, "program_memory", lambda setup, n: None)
    assert plan.choose_chunk_size(spec, [FakeDevice("cpu", 0)]).source == "formula fallback"
    # free memory unknown: the fallback too, and probe=False (limits.py) never compiles
    monkeypatch.setattr(plan, "_CHOICES", {})
    _free(monkeypatch, None)
    assert plan.choose_chunk_size(spec, [FakeDevice("cpu", 0)]).source == "formula fallback"


def test_no_probe_wanted_compiles_nothing(memory, monkeypatch):
    _free(monkeypatch, 8 * GIB)
    choice = plan.choose_chunk_size(_big_spec(), [FakeDevice("cpu", 0)], probe=False)
    assert (choice.source, memory) == ("formula fallback", [])


def test_host_free_memory_is_meminfo_available():
    """Read independently of plan.py: /proc/meminfo's MemAvailable (kB), within 10% (other
    processes allocate in between); a cgroup limit may only lower it."""
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        pytest.skip("no /proc/meminfo")
    free, where = plan.host_free_memory()
    if where == "host MemAvailable":
        assert free == pytest.approx(kib * 1024, rel=0.1)
    else:
        assert free <= kib * 1024 * 1.1
    assert plan.free_memory([FakeDevice("gpu", 0, 5 * GIB)]) == (5 * GIB, "gpu memory_stats, per device")


def test_plan_report_names_the_size_and_its_origin(memory, monkeypatch):
    from forget_jax.runner.dry_run import plan_report

    _free(monkeypatch, 8 * GIB)
    lines = plan_report(_big_spec(), probe=False, devices=[FakeDevice("cpu", 0)])
    line = next(x for x in lines if x.startswith("chunk size"))
    expected = math.floor((FRACTION * 8 * GIB - FIXED) / PER_CONFIG)
    assert f"{expected} configurations per block" in line and "memory analysis" in line and "0.25 of 8 GiB" in line
    # a block takes whole rows of replay_ratio x seed (50 x 64): 2 separation values of 100
    rows = expected // (50 * 64)
    assert f"chunk (1, {rows}, 50, 64)" in next(x for x in lines if x.startswith("blocks"))


def test_probe_results_are_remembered_on_disk(monkeypatch, tmp_path):
    """A rerun reads the probe from `memory-probes.json` instead of compiling it again; another
    platform or Setup probes again; an unmarked (replaced) program_memory is never remembered."""
    from forget_jax import train
    from forget_jax.runner.plan import PROBE_SIZES, _probe_memory
    from forget_jax.spec import Setup

    calls = []

    def measured(setup, n):
        calls.append((setup.batch_size, n))
        return dict(total=1000 * n + setup.batch_size)

    measured.memoisable = True  # type: ignore[attr-defined]
    monkeypatch.setattr(train, "program_memory", measured)
    a, b = Setup(batch_size=8), Setup(batch_size=16)
    first = _probe_memory(a, "cpu", str(tmp_path))
    assert first == _probe_memory(a, "cpu", str(tmp_path))  # read back, not measured
    assert calls == [(8, n) for n in PROBE_SIZES]
    assert first[0] == dict(total=1000 * PROBE_SIZES[0] + 8)
    _probe_memory(a, "gpu", str(tmp_path))
    _probe_memory(b, "cpu", str(tmp_path))
    assert len(calls) == 3 * len(PROBE_SIZES)
    _probe_memory(a, "cpu", None)  # no cache folder: measured
    assert len(calls) == 4 * len(PROBE_SIZES)
    del measured.memoisable
    _probe_memory(a, "cpu", str(tmp_path))  # a replaced function is not remembered
    assert len(calls) == 5 * len(PROBE_SIZES)
