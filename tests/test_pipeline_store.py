"""The store of a pipeline sweep (issue 10 item 3; store.py module doc): a `mode` dimension for
the per-task variables, a `stage` coordinate along `step`, the schedule in the root attributes,
and the store's health machinery (verify, repair, resume, export) on the extra dimension; the two
pipeline plots (plots.py: stacked mode weights, phase diagram of a per-task metric at the end of
a stage).

One small K = 3 pipeline sweep (population estimator, 9 log points, 2 x 2 grid x 2 seeds, blocks
of 2 configurations) is run once per module into a store; every test reads it or a copy. The
stage coordinate is checked against the schedule computed here from the config (cumulative stage
ends), not against pipeline.schedule; values are checked for an exact round trip (a hand-built
block of distinct numbers through write_block, the engine's store against its in-memory Dataset)
and for one identity of the mixture (the K weights sum to 1, w_0 is the two-mode `old_weight`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

import forget_jax
from forget_jax import fields, plots, store
from forget_jax.cli import app
from forget_jax.config import load_config
from forget_jax.metrics import METRIC_NAMES
from forget_jax.runner import make_plan

MODE_NAMES = ("mode_weight", "mode_drift", "mode_mean_position", "mode_starved_fraction")
STAGE_STEPS = (60, 40, 60)
LOG_EVERY = 20
K = 3
CONFIG = {
    "name": "pipeline_store",
    "modes": K,
    "separation": 6.0,
    "estimator": "population",
    "learning_rate": 0.5,
    "log_every": LOG_EVERY,
    "seeds": 2,
    "stages": [
        {"objective": "fkl", "task": 1, "steps": STAGE_STEPS[0]},
        {"objective": "fkl", "task": 2, "steps": STAGE_STEPS[1], "replay_ratio": 0.2},
        {"objective": "rkl", "target": "full", "steps": STAGE_STEPS[2]},
    ],
    "grid": {"stages.1.replay_ratio": [0.0, 0.3], "stages.2.learning_rate": [0.2, 0.5]},
}
CHUNK = 2  # 8 configurations -> 4 blocks (resume has committed and pending blocks to tell apart)
#: float32 engine: the K weights are a softmax, summing to 1 within a few ulp of 1.
WEIGHT_SUM_ATOL = 1e-5


def _sweep(out=None, **kwargs):
    return forget_jax.sweep(CONFIG, out, chunk_size=CHUNK, progress=False, devices=jax.devices("cpu"), **kwargs)


def _expected_stage(steps: np.ndarray) -> np.ndarray:
    """Stage of each logged step from the config alone: step 0 is stage 0, a step t > 0 belongs to
    the first stage whose cumulative end is >= t (its state is that stage's result)."""
    ends = np.cumsum(STAGE_STEPS)
    return np.searchsorted(ends, steps, side="left")


def _assert_bitwise(a: xr.Dataset, b: xr.Dataset) -> None:
    assert dict(a.sizes) == dict(b.sizes)
    assert set(a.data_vars) == set(b.data_vars)
    for name in b.data_vars:
        x, y = np.asarray(a[name].values), np.asarray(b[name].values)
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pipeline") / "p.zarr"
    _sweep(out)
    return out


@pytest.fixture(scope="module")
def ds(stored) -> xr.Dataset:
    return store.open_store(stored).load()


def test_layout_mode_dim_stage_coordinate_and_schedule(ds):
    spec = load_config(CONFIG)
    grid = ("stages.1.replay_ratio", "stages.2.learning_rate", "seed")
    assert ds["mode"].values.tolist() == list(range(K))
    assert ds["mode"].attrs["long_name"] == "mode (task)"
    for name in MODE_NAMES:
        assert ds[name].dims == (*grid, "step", "mode"), name
        assert ds[name].attrs["long_name"] and ds[name].attrs["units"] == "1", name
    for name in METRIC_NAMES:  # the two-mode names stay, without `mode`
        assert ds[name].dims == (*grid, "step"), name
    steps = np.arange(0, sum(STAGE_STEPS) + 1, LOG_EVERY)
    assert ds["step"].values.tolist() == steps.tolist()
    assert ds["stage"].dims == ("step",)
    assert ds["stage"].values.tolist() == _expected_stage(steps).tolist()
    assert "stage" in ds["stage"].attrs["description"] and ds["stage"].attrs["units"] == "1"
    assert ds["stages.1.replay_ratio"].attrs["long_name"] == "replay ratio (stage 1)"
    starts = np.concatenate([[0], np.cumsum(STAGE_STEPS)[:-1]])
    rows = ds.attrs["stages"]
    assert ds.attrs["modes"] == K and len(rows) == len(STAGE_STEPS)
    for i, (row, raw) in enumerate(zip(rows, CONFIG["stages"], strict=True)):
        assert row["index"] == i and row["objective"] == raw["objective"] and row["task"] == raw.get("task")
        assert row["first_step"] == starts[i] and row["steps"] == STAGE_STEPS[i]
        assert row["end_step"] == starts[i] + STAGE_STEPS[i]
    assert rows[2]["target"] == "full"
    json.dumps(rows)  # JSON-able
    # the in-memory attributes agree with the store's
    for name, attrs in store.variable_attrs(spec).items():
        assert {k: ds[name].attrs[k] for k in attrs} == attrs, name


def test_values_round_trip_and_mixture_identities(ds):
    memory = _sweep()  # same compiled program (chunk size and devices as the store's run)
    _assert_bitwise(memory, ds)
    assert memory["stage"].values.tolist() == ds["stage"].values.tolist()
    assert memory.attrs["stages"] == ds.attrs["stages"]
    weights = ds["mode_weight"].values
    assert np.all(np.isfinite(weights))
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=0, atol=WEIGHT_SUM_ATOL)
    # w_0 is the old mode's weight (same number, two names); at step 0 the weights are theta(0):
    # w_0 = init_old_weight, the rest equal (pipeline/modes.py init_params)
    np.testing.assert_array_equal(weights[..., 0], ds["old_weight"].values)
    beta0 = fields.get("init_old_weight").default
    start = np.array([beta0, *[(1.0 - beta0) / (K - 1)] * (K - 1)])
    np.testing.assert_allclose(weights[..., 0, :], np.broadcast_to(start, weights[..., 0, :].shape), atol=1e-7)


def test_hand_built_block_round_trips_through_write_block(tmp_path):
    """Distinct numbers in every (configuration, step, mode) cell: a transposed or shifted write
    would not read back equal."""
    spec = load_config(CONFIG)
    plan = make_plan(spec, CHUNK)
    path = tmp_path / "hand.zarr"
    store.create(path, spec, plan, {"config": spec.to_yaml(), "name": spec.base.name})
    n_steps = len(store.coordinates(spec)["step"])
    block = plan.blocks[1]
    rng = np.random.default_rng(0)
    metrics = {name: rng.standard_normal((*block.shape, n_steps)).astype(np.float32) for name in METRIC_NAMES}
    metrics.update({name: rng.standard_normal((*block.shape, n_steps, K)).astype(np.float32) for name in MODE_NAMES})
    diverged = np.zeros(block.shape, dtype=bool)
    store.write_block(path, spec, block, metrics, diverged, {"compile_s": 0.0, "run_s": 0.0, "wall_s": 0.0})
    back = store.open_store(path)
    for name, values in metrics.items():
        np.testing.assert_array_equal(back[name][block.region].values, values, err_msg=name)
        other = back[name][plan.blocks[0].region].values
        assert np.all(np.isnan(other)), f"{name}: block 0 was written by block 1"
    assert store.verify(path).ok


def test_verify_cli_and_a_damaged_mode_chunk_is_recomputed(stored, ds, tmp_path):
    result = CliRunner().invoke(app, ["verify", str(stored)])
    assert result.exit_code == 0, result.output
    assert "healthy" in result.output
    copy = tmp_path / "damaged.zarr"
    shutil.copytree(stored, copy)
    marker = json.loads((copy / ".forget_jax" / "done" / "2.json").read_text())
    key = next(k for k in marker["chunks"] if k.startswith("mode_weight/"))
    assert key.count(".") == len(ds["mode_weight"].dims) - 1  # a chunk key over every dim, mode included
    raw = bytearray((copy / key).read_bytes())
    raw[-1] ^= 0xFF
    (copy / key).write_bytes(bytes(raw))
    # the stage coordinate is checked (and rewritten from the config) like any coordinate
    stage_chunk = copy / "stage" / "0"
    stage_chunk.write_bytes(stage_chunk.read_bytes()[:-3])
    report = store.verify(copy)
    assert not report.ok and report.damaged_blocks == {2: [key]}
    assert report.damaged_coords == ["stage"]
    result = CliRunner().invoke(app, ["verify", str(copy)])
    assert result.exit_code == 1 and "mode_weight" in result.output
    repaired = _sweep(copy, resume=True)
    assert store.verify(copy).ok
    repaired = repaired.load()
    _assert_bitwise(repaired, ds)
    assert repaired["stage"].values.tolist() == ds["stage"].values.tolist()


def test_resume_of_a_half_written_pipeline_store_completes_it(ds, tmp_path):
    """Stopped inside block 1 (block 0 committed, block 1 checkpointed after its first segment):
    --resume continues block 1 from its checkpoint and ends bitwise equal to the straight run."""
    out = tmp_path / "half.zarr"

    class Stop(Exception):
        pass

    def stop_inside_block_one(block, stop, num_logs):
        if block.index == 1:
            raise Stop

    with pytest.raises(Stop):
        _sweep(out, segment_logs=2, on_segment=stop_inside_block_one)
    assert store.done_blocks(out) == {0}
    assert (out / ".forget_jax" / "checkpoints" / "1.json").is_file()
    resumed_at = []
    finished = _sweep(out, resume=True, segment_logs=2, on_segment=lambda b, s, n: resumed_at.append((b.index, s)))
    assert resumed_at[0] == (1, 4), "block 1 resumes after its checkpointed segment (log point 2)"
    assert store.done_blocks(out) == {0, 1, 2, 3}
    _assert_bitwise(finished.load(), ds)
    assert store.verify(out).ok
    nc = store.export_netcdf(out, tmp_path / "half.nc")
    with xr.open_dataset(nc) as exported:
        assert exported["mode_weight"].dims == ds["mode_weight"].dims
        assert exported["stage"].values.tolist() == ds["stage"].values.tolist()
        assert json.loads(exported.attrs["stages"]) == ds.attrs["stages"]
        np.testing.assert_array_equal(exported["mode_weight"].values, ds["mode_weight"].values)


def test_plots_stacked_weights_and_end_of_stage_phase_diagram(stored, ds, tmp_path):
    assert plots.label("stages.1.replay_ratio") == "λ (stage 1) replay ratio"
    end_of_stage_1 = sum(STAGE_STEPS[:2])
    assert plots.stage_end_step(ds, 1) == (end_of_stage_1, end_of_stage_1 // LOG_EVERY)
    # (b) the phase diagram draws w_1 at the end of stage 1, seeds averaged
    fig = plots.plot_store(
        ds, x="stages.1.replay_ratio", y="stages.2.learning_rate", var="mode_weight", mode=1, stage=1
    )
    drawn = np.asarray(fig.axes[0].collections[0].get_array()).reshape(2, 2)  # (y, x)
    at = np.flatnonzero(ds["step"].values == end_of_stage_1)[0]
    want = ds["mode_weight"].isel(step=at, mode=1).mean("seed").transpose("stages.2.learning_rate", ...).values
    np.testing.assert_allclose(drawn, want, rtol=1e-6)
    assert "end of stage 1" in fig.axes[0].get_title()
    # the dashed P1 optimum against the stage's replay ratio: stage 1 trains on task 2 and replays
    # the earlier tasks 0 and 1 in equal shares, so w_0 = lambda / 2 (theory.fkl_stage_weights)
    fig = plots.plot_store(
        ds, x="stages.1.replay_ratio", var="mode_weight", mode=0, stage=1, sel={"stages.2.learning_rate": 0.5}
    )
    (dashed,) = [line for line in fig.axes[0].lines if line.get_linestyle() == "--"]
    np.testing.assert_allclose(dashed.get_ydata(), np.asarray(dashed.get_xdata()) / 2, rtol=1e-12)
    with pytest.raises(ValueError, match="mode=k"):
        plots.plot_store(ds, var="mode_weight", stage=1)
    runner = CliRunner()
    heat = tmp_path / "pd.png"
    args = ["plot", str(stored), "--var", "mode_weight", "--mode", "1", "--stage", "1", "-o", str(heat)]
    result = runner.invoke(app, [*args, "--x", "stages.1.replay_ratio", "--y", "stages.2.learning_rate"])
    assert result.exit_code == 0, result.output
    # (a) stacked weights of one configuration, stage boundaries and labels
    stacked = tmp_path / "stacked.png"
    sel = ["--sel", "stages.1.replay_ratio=0.3", "--sel", "stages.2.learning_rate=0.5"]
    result = runner.invoke(app, ["plot", str(stored), "--stacked", *sel, "-o", str(stacked)])
    assert result.exit_code == 0, result.output
    for png in (heat, stacked):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    fig = plots.plot_mode_weights(ds, sel={"stages.1.replay_ratio": 0.3, "stages.2.learning_rate": 0.5})
    ax = fig.axes[0]
    boundaries = sorted(line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == "-")
    assert boundaries == np.cumsum(STAGE_STEPS)[:-1].tolist()
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["0: FKL task 1", "1: FKL task 2, λ=0.3", "2: RKL → p*"]
    result = runner.invoke(app, ["plot", str(stored), "--stacked"])  # two axes left open
    assert result.exit_code == 2 and "stages.1.replay_ratio" in result.output
