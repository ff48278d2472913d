"""`forget-jax reproduce`: the rate fitter, the study configurations, and one quick run of every
study (module-scoped fixture) whose claims must all PASS and whose figures must exist."""

from __future__ import annotations

import json
import math
import shutil

import matplotlib.image as mpimg
import numpy as np
import pytest

from forget_jax.config import load_config
from forget_jax.reproduce import STUDY_NAMES, run_studies, study_module
from forget_jax.reproduce.fitting import estimate_floor, fit_exponential_rate, linear_fit, steps_to_threshold
from forget_jax.reproduce.framework import _merge, read_study_yaml, study_configs

ALL_CLAIMS = [c for name in STUDY_NAMES for c in study_module(name).CLAIMS]

#: Claims that FAIL because the reconstruction in docs/science/claims.md and the simulation genuinely differ
#: (claim id -> reason). Empty: every claim of the quick run passes.
KNOWN_FAILS: dict[str, str] = {}


# ---------------------------------------------------------------------------------------------
# rate fitter


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rate_fitter_recovers_noisy_exponential_within_ci(seed):
    rng = np.random.default_rng(seed)
    t = np.arange(0, 800, 2.0)
    rate = 0.013
    y = 2.0 * np.exp(-rate * t) * np.exp(0.05 * rng.standard_normal(t.size))
    fit = fit_exponential_rate(t, y)
    assert fit.ok, fit.reason
    assert fit.rate_low <= rate <= fit.rate_high, fit
    assert fit.contains(rate)
    assert abs(fit.contraction - math.exp(-rate)) < 1e-3
    assert fit.n >= 20
    assert fit.rate_high - fit.rate_low < 0.1 * rate  # informative interval


def test_rate_fitter_fast_decay_with_few_points():
    """A fast decay (rate 0.31 per step, logged every 2 steps) still has a usable tail window."""
    rng = np.random.default_rng(2)
    t = np.arange(0, 300, 2.0)
    y = 3.0 * np.exp(-0.31 * t) * np.exp(0.05 * rng.standard_normal(t.size))
    fit = fit_exponential_rate(t, y, floor=0.0, min_points=8)
    assert fit.ok and fit.rate_low <= 0.31 <= fit.rate_high
    assert abs(fit.rate / 0.31 - 1) < 0.1


def test_rate_fitter_stops_above_a_noisy_floor():
    rng = np.random.default_rng(3)
    t = np.arange(0, 3000, 2.0)
    rate = 0.02
    floor = 1e-6 * (1 + np.abs(rng.standard_normal(t.size)))  # float32-like noise floor
    y = np.exp(-rate * t) + floor
    assert estimate_floor(t, np.log(y)) > 1e-6
    fit = fit_exponential_rate(t, y)
    assert fit.ok and abs(fit.rate / rate - 1) < 0.01, fit
    assert fit.t_end < 600  # the window ends well before the floor (~690 steps)
    naive = linear_fit(t, np.log(y))  # fitting the whole series is badly biased by the floor
    assert abs(-naive.slope / rate - 1) > 0.3


def test_rate_fitter_reports_unusable_series():
    t = np.arange(10.0)
    assert not fit_exponential_rate(t, np.full(10, np.nan)).ok
    # a decay that reaches its floor within the transient has no tail window
    assert not fit_exponential_rate(t, np.maximum(np.exp(-3.0 * t), 1e-6), min_points=8).ok
    assert steps_to_threshold(t, np.exp(-t), 1e-2) == 5.0
    assert math.isnan(steps_to_threshold(t, np.ones(10), 1e-2))
    t = np.arange(0, 200.0)
    assert steps_to_threshold(t, np.exp(-0.1 * t), 1e-3) == math.ceil(math.log(1e3) / 0.1)


def test_linear_fit_exact_line_and_ci():
    x = np.linspace(0, 1, 20)
    fit = linear_fit(x, 3 - 2 * x)
    assert fit.slope == pytest.approx(-2) and fit.intercept == pytest.approx(3) and fit.r2 == pytest.approx(1)
    noisy = linear_fit(x, 3 - 2 * x + 0.1 * np.random.default_rng(0).standard_normal(20))
    assert noisy.slope_low < -2 < noisy.slope_high


# ---------------------------------------------------------------------------------------------
# configurations


@pytest.mark.parametrize("name", STUDY_NAMES)
@pytest.mark.parametrize("quick", [False, True])
def test_study_configs_are_valid_sweeps(name, quick):
    configs = study_configs(name, quick)
    assert configs
    for store, config in configs.items():
        assert store.startswith(name)
        assert "quick" not in config and "stores" not in config
        spec = load_config(config)  # raises ConfigError on any unknown key or bad value
        assert spec.size >= 1


def test_quick_grids_are_smaller_than_full():
    for name in STUDY_NAMES:
        full = sum(load_config(c).size for c in study_configs(name, False).values())
        quick = sum(load_config(c).size for c in study_configs(name, True).values())
        assert quick <= full, name
    assert "quick" in read_study_yaml("rates")


def test_merge_replaces_grid_axes_one_by_one():
    base = {"steps": 10, "grid": {"a": [1, 2], "b": [3]}}
    merged = _merge(base, {"steps": 5, "grid": {"a": [9], "b": None}})
    assert merged == {"steps": 5, "grid": {"a": [9]}}
    assert base["grid"]["a"] == [1, 2]  # not mutated


def test_unknown_study_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="unknown study"):
        run_studies("pd5", tmp_path, quick=True)


# ---------------------------------------------------------------------------------------------
# the quick run of every study (once per module)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    report = run_studies("all", out, quick=True, verbose=False)
    return out, report


@pytest.mark.parametrize("claim_id", ALL_CLAIMS)
def test_claim_passes(quick_run, claim_id):
    _, report = quick_run
    claims = {c["id"]: c for c in report["claims"]}
    assert claim_id in claims, f"claim {claim_id} was not reported"
    claim = claims[claim_id]
    if claim_id in KNOWN_FAILS:
        pytest.xfail(KNOWN_FAILS[claim_id])
    assert claim["verdict"] == "PASS", (
        f"{claim_id}: predicted {claim['predicted']}; measured {claim['measured']}; tolerance {claim['tolerance']}. "
        f"{claim['note']}"
    )


def test_report_files(quick_run):
    out, report = quick_run
    assert report["total"] == len(ALL_CLAIMS)
    assert report["passed"] + len(report["failed"]) == report["total"]
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["total"] == report["total"] and on_disk["passed"] == report["passed"]
    assert set(on_disk["studies"]) == set(STUDY_NAMES)
    md = (out / "report.md").read_text()
    for claim_id in ALL_CLAIMS:
        assert f"`{claim_id}`" in md
    for c in on_disk["claims"]:
        for key in ("predicted", "measured", "tolerance", "verdict", "note"):
            assert key in c


def test_figures_exist_and_are_not_trivial(quick_run):
    out, report = quick_run
    figures = [f for study in report["studies"].values() for f in study["figures"]]
    assert len(figures) >= 2 * len(STUDY_NAMES)
    for name in STUDY_NAMES:
        assert report["studies"][name]["figures"], f"{name} drew no figure"
    for f in figures:
        path = out / f
        assert path.exists(), f
        assert path.stat().st_size > 8_000, f"{f} is only {path.stat().st_size} bytes"
        if path.suffix == ".png":
            assert path.with_suffix(".pdf").exists(), f
            image = mpimg.imread(path)
            colours = np.unique(image[::3, ::3].reshape(-1, image.shape[-1]), axis=0)
            assert len(colours) > 50, f"{f} looks blank"
    assert {p.suffix for p in (out / "figures").iterdir()} == {".png", ".pdf"}


def test_stores_written_and_complete(quick_run):
    from forget_jax.store import open_store

    _out, report = quick_run
    for study in report["studies"].values():
        for store in study["stores"]:
            ds = open_store(store["path"])
            assert bool(ds["completed"].values.all()), store["path"]


def test_complete_store_is_reused(quick_run, tmp_path):
    out, _ = quick_run
    shutil.copytree(out / "pd2.zarr", tmp_path / "pd2.zarr")
    report = run_studies("pd2", tmp_path, quick=True, verbose=False)
    (store,) = report["studies"]["pd2"]["stores"]
    assert store["reused"]
    assert report["passed"] == report["total"]
