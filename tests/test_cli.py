"""The `forget-jax` command line: help texts, the quickstart end to end (sweep -> info -> export),
and user mistakes ending in exit status 2 with a single `error:` line and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner

from forget_jax.cli import app
from forget_jax.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ("sweep", "info", "export", "plot", "reproduce")


def _console_script() -> list[str]:
    script = Path(sys.executable).with_name("forget-jax")
    return [str(script)] if script.exists() else [sys.executable, "-m", "forget_jax.cli"]


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------
# help


def test_console_script_help():
    result = subprocess.run([*_console_script(), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in SUBCOMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help(command):
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_sweep_help_lists_options():
    out = CliRunner().invoke(app, ["sweep", "--help"]).output
    for option in (
        "--out",
        "--resume",
        "--shard",
        "--chunk-size",
        "--distributed",
        "--coordinator",
        "--num-processes",
        "--process-id",
    ):
        assert option in out, option


# ---------------------------------------------------------------------------------------------
# the quickstart end to end


def test_quickstart_end_to_end(tmp_path):
    store = tmp_path / "quickstart.zarr"
    runner = CliRunner()
    result = runner.invoke(
        app, ["sweep", str(ROOT / "configs" / "quickstart.yaml"), "--out", str(store), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "144/144 configurations done" in result.stdout

    ds = xr.open_zarr(store)
    assert tuple(ds["old_weight"].dims) == ("objective", "separation", "replay_ratio", "seed", "step")
    assert dict(ds.sizes) == {"objective": 2, "separation": 12, "replay_ratio": 6, "seed": 1, "step": 41}
    assert bool(ds["completed"].all()) and not bool(ds["diverged"].any())
    # the science the quickstart advertises, at a well-separated point (Delta = 6) after t = 2000
    # logit-GD steps of the config's eta (.5):
    # * FKL with replay lambda > 0 (T2): beta -> lambda; the logit-weight curvature at the optimum is
    #   lambda (1 - lambda) >= .09, so the error has decayed like e^{-eta .09 t} <= e^{-18}: 1e-4 is the
    #   float32 / quadrature floor, not the convergence;
    # * FKL without replay (T1 (b), fact 3): beta ~ 1/(1/beta0 + eta t), within 2x;
    # * RKL (T3, fact 6): beta -> beta* = .5 within 1e-4.
    final = ds["old_weight"].isel(step=-1, seed=0).sel(separation=6.0)
    fkl, lam = final.sel(objective="fkl").values, ds["replay_ratio"].values
    np.testing.assert_allclose(fkl[lam > 0], lam[lam > 0], atol=1e-4)
    eta = load_config(ROOT / "configs" / "quickstart.yaml").base.learning_rate
    law = 1.0 / (1.0 / 0.5 + eta * 2000)
    assert 0.5 < fkl[lam == 0][0] / law < 2.0, fkl[lam == 0]
    np.testing.assert_allclose(final.sel(objective="rkl").values, 0.5, atol=1e-4)

    info = runner.invoke(app, ["info", str(store)])
    assert info.exit_code == 0, info.output
    text = info.stdout
    assert "dims       objective=2, separation=12, replay_ratio=6, seed=1, step=41" in text
    assert "144/144 configurations" in text and "2/2 blocks" in text
    assert "quickstart" in text and "compile" in text

    nc = tmp_path / "quickstart.nc"
    exported = runner.invoke(app, ["export", str(store), "--out", str(nc)])
    assert exported.exit_code == 0, exported.output
    back = xr.open_dataset(nc, engine="h5netcdf")
    np.testing.assert_array_equal(back["old_weight"].values, ds["old_weight"].values)


def test_info_counts_partial_store(tmp_path):
    cfg = {
        "name": "partial",
        "estimator": "population",
        "steps": 10,
        "log_every": 5,
        "grid": {"separation": [1.0, 2.0, 3.0, 4.0]},
    }
    path = tmp_path / "partial.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    store = tmp_path / "partial.zarr"
    runner = CliRunner()
    result = runner.invoke(
        app, ["sweep", str(path), "--out", str(store), "--shard", "0/2", "--chunk-size", "1", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    info = runner.invoke(app, ["info", str(store)])
    assert info.exit_code == 0, info.output
    assert "dims       separation=4, seed=1, step=3" in info.stdout
    assert "done       2/4 configurations (2/4 blocks)" in info.stdout


# ---------------------------------------------------------------------------------------------
# user mistakes: exit 2, one 'error:' line, no traceback


def test_bad_config_subprocess_exit_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("objective: fkl\nreplay_ratio: 1.0\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [*_console_script(), "sweep", str(path), "--out", str(tmp_path / "x.zarr")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    line = _one_error_line(result.stderr)
    assert "replay_ratio=1.0" in line and "less than 1" in line
    assert not (tmp_path / "x.zarr").exists()  # rejected before anything ran


BAD_INVOCATIONS = [
    ("typo_key", "seperation: 3\n", [], ["seperation", "separation"]),
    ("unknown_objective", "objective: sdft2\n", [], ["objective='sdft2'", "'fkl'"]),
    ("not_mapping", "- 1\n- 2\n", [], ["mapping"]),
    ("bad_grid", "grid:\n  separation: {linspace: [0, 1]}\n", [], ["grid.separation"]),
    ("bad_shard", "steps: 10\nlog_every: 5\n", ["--shard", "2/2"], ["--shard", "2/2"]),
    ("bad_shard_text", "steps: 10\nlog_every: 5\n", ["--shard", "half"], ["--shard", "i/N"]),
    ("bad_chunk", "steps: 10\nlog_every: 5\n", ["--chunk-size", "0"], ["--chunk-size", "0"]),
    ("shard_and_distributed", "steps: 10\nlog_every: 5\n", ["--shard", "0/2", "--distributed"], ["--distributed"]),
]


@pytest.mark.parametrize("text, extra, expected", [pytest.param(t, e, x, id=i) for i, t, e, x in BAD_INVOCATIONS])
def test_bad_invocation_one_error_line(tmp_path, text, extra, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["sweep", str(path), "--out", str(tmp_path / "x.zarr"), *extra])
    assert result.exit_code == 2, result.output
    line = _one_error_line(result.stderr)
    for part in expected:
        assert part in line, (part, line)
    assert not (tmp_path / "x.zarr").exists()


def test_missing_files_one_error_line(tmp_path):
    runner = CliRunner()
    for args, needle in (
        (["sweep", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "x.zarr")], "nope.yaml"),
        (["info", str(tmp_path / "missing.zarr")], "missing.zarr"),
        (["export", str(tmp_path / "missing.zarr"), "--out", str(tmp_path / "m.nc")], "missing.zarr"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert needle in _one_error_line(result.stderr)


def test_sweep_into_foreign_folder_one_error_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 10\nlog_every: 5\n")
    foreign = tmp_path / "foreign.zarr"
    foreign.mkdir()
    result = CliRunner().invoke(app, ["sweep", str(path), "--out", str(foreign)])
    assert result.exit_code == 2, result.output
    assert "not a forget-jax store" in _one_error_line(result.stderr)
