"""One CPU device per core for the CLI and `forget_jax.sweep` (forget_jax/host_devices.py).

Each case runs in a fresh Python (the device count is fixed when JAX initialises its backends),
all at once, and reads the count from `jax.devices("cpu")`: the CLI entry point (`cli.main`,
here with `--help`) and `forget_jax.sweep` (here with a config it refuses before any work) must
have set XLA_FLAGS by then. The expected counts come from the environment given, and the
default from this machine's CPU affinity read here.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from forget_jax import host_devices

FLAG = "--xla_force_host_platform_device_count"

CLI = """
import sys
from forget_jax import cli
sys.argv = ["forget-jax", "--help"]
try:
    cli.main()
except SystemExit:
    pass
"""
SWEEP = """
import forget_jax
from forget_jax.config import ConfigError
try:
    forget_jax.sweep({"steps": -1})
except ConfigError:
    pass
"""
REPORT = """
import jax
print(len(jax.devices("cpu")))
from forget_jax import host_devices
print(host_devices.configure(5))
print(len(jax.devices("cpu")))
"""


def _env(**values: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", host_devices.ENV, "JAX_NUM_CPU_DEVICES")}
    env["JAX_PLATFORMS"] = "cpu"
    env.update({k: v for k, v in values.items() if v is not None})
    return env


def test_cli_and_sweep_expose_one_cpu_device_per_core_unless_told_otherwise():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cases = {  # name: (program, environment, expected CPU devices); =1 is in the test below
        "cli, default: the cores": (CLI, _env(), cores),
        "sweep, FORGET_JAX_HOST_DEVICES=2": (SWEEP, _env(FORGET_JAX_HOST_DEVICES="2"), 2),
        "cli, the user's XLA_FLAGS count wins": (CLI, _env(FORGET_JAX_HOST_DEVICES="2", XLA_FLAGS=f"{FLAG}=3"), 3),
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", program + REPORT], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, (program, env, _) in cases.items()
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{name}: {err[-2000:]}"
        before, did, after = out.split("\n")[-4:-1]
        expected = cases[name][2]
        assert int(before) == expected, f"{name}: {before} CPU devices, expected {expected}"
        # once JAX runs, configure changes nothing (a library user keeps the devices they have)
        assert did.startswith("unchanged:") and int(after) == expected, f"{name}: {did}, {after}"


def test_configure_appends_to_xla_flags_and_respects_choices(monkeypatch):
    monkeypatch.setattr(host_devices, "_backends_initialized", lambda: False)
    monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
    monkeypatch.delenv(host_devices.ENV, raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    assert host_devices.configure(6) == f"set {FLAG}=6"
    assert os.environ["XLA_FLAGS"] == f"--xla_cpu_enable_fast_math=false {FLAG}=6"  # the user's flags kept
    assert host_devices.configure(2).startswith("unchanged: XLA_FLAGS already sets")  # now a chosen count
    assert os.environ["XLA_FLAGS"].count(FLAG) == 1
    monkeypatch.delenv("XLA_FLAGS")
    monkeypatch.setenv(host_devices.ENV, "1")
    assert host_devices.configure().startswith("unchanged") and "XLA_FLAGS" not in os.environ
    for bad in ("two", "0"):
        monkeypatch.setenv(host_devices.ENV, bad)
        with pytest.raises(ValueError, match=host_devices.ENV):
            host_devices.configure()
    import jax

    jax.devices()  # this process's backends are up: JAX's own state says so
    monkeypatch.undo()
    assert host_devices._backends_initialized()
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert host_devices.configure(4) == "unchanged: JAX's backends are already initialised in this process"
    assert "XLA_FLAGS" not in os.environ
