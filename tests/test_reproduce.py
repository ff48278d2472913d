"""`forget-jax reproduce`: the rate fitter, and every study's quick run with its report.

The quick run is the command a user types (`forget-jax reproduce all --quick`): it must produce
a report whose claims all PASS (theory.md sections 3-5, each claim's predicted value computed by
forget_jax.theory or quoted from theory.md, its measured value from the simulation), and the
figures, each a non-trivial image.
"""

from __future__ import annotations

import json
import math

import matplotlib.image as mpimg
import numpy as np
import pytest

from forget_jax.reproduce import STUDY_NAMES, run_studies
from forget_jax.reproduce.fitting import fit_exponential_rate, steps_to_threshold


@pytest.mark.parametrize("rate, noise, seed", [(0.05, 0.02, 0), (0.05, 0.02, 1), (0.31, 0.05, 2)])
def test_rate_fitter_recovers_a_known_rate(rate, noise, seed):
    """y(t) = 3 exp(-rate t) exp(noise z_t): the fitted rate's 95% CI holds the true rate and
    the estimate is within 10% of it."""
    rng = np.random.default_rng(seed)
    t = np.arange(0, 300, 2.0)
    y = 3.0 * np.exp(-rate * t) * np.exp(noise * rng.standard_normal(t.size))
    fit = fit_exponential_rate(t, y, floor=0.0, min_points=8)
    assert fit.ok
    assert fit.rate_low <= rate <= fit.rate_high
    assert abs(fit.rate / rate - 1) < 0.1
    assert math.isclose(fit.contraction, math.exp(-fit.rate))


def test_rate_fitter_stops_before_a_numerical_floor():
    """A clean decay onto a 1e-7 floor: the window ends two decades above the floor, so the fit
    still finds the rate to 1%."""
    t = np.arange(0, 600, 2.0)
    fit = fit_exponential_rate(t, 3.0 * np.exp(-0.05 * t) + 1e-7, min_points=8)
    assert fit.ok and abs(fit.rate / 0.05 - 1) < 0.01


def test_rate_fitter_refuses_a_series_without_tail():
    """A decay that reaches its floor within the transient has no tail window: no rate."""
    t = np.arange(10.0)
    y = np.maximum(np.exp(-3.0 * t), 1e-6)
    assert not fit_exponential_rate(t, y, min_points=8).ok


def test_steps_to_threshold_matches_closed_form():
    """First time y <= eps for y = exp(-0.1 t) sampled every step: ceil(ln(1/eps) / 0.1)."""
    t = np.arange(0, 200.0)
    assert steps_to_threshold(t, np.exp(-0.1 * t), 1e-3) == math.ceil(math.log(1e3) / 0.1)


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    report = run_studies("all", out, quick=True)
    return out, report


def test_quick_reproduction_passes_every_claim(quick_report):
    out, report = quick_report
    assert report["total"] >= 25
    failed = [c for c in report["claims"] if not c["passed"]]
    assert not failed, "\n".join(f"{c['id']}: predicted {c['predicted']}, measured {c['measured']}" for c in failed)
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["passed"] == on_disk["total"] == report["total"]
    text = (out / "report.md").read_text()
    assert f"{report['total']}/{report['total']} claims PASS" in text
    assert {c["id"].split(".")[0] for c in report["claims"]} == set(STUDY_NAMES)


def test_quick_reproduction_writes_figures(quick_report):
    out, _ = quick_report
    pngs = sorted((out / "figures").glob("*.png"))
    assert {p.stem.split("_")[0] for p in pngs} == set(STUDY_NAMES)
    for png in pngs:
        assert png.stat().st_size > 20_000, png
        assert png.with_suffix(".pdf").stat().st_size > 5_000, png
        image = mpimg.imread(png)
        assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 50, f"{png} looks blank"


def test_second_run_reuses_complete_stores(quick_report):
    """Rerunning reuses every complete store instead of recomputing (the report says so)."""
    out, first = quick_report
    again = run_studies("pd4", out, quick=True)
    assert again["passed"] == again["total"]
    stores = [s for study in again["studies"].values() for s in study["stores"]]
    assert stores and all(s["reused"] for s in stores)
