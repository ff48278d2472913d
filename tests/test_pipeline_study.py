"""`forget-jax reproduce pipelines --quick` (docs/science/pipelines.md P1-P3): every claim PASSes
and the figures are written.

The quick study runs once for the module (about 40 s on 2 cores, almost all of it the compilation
of its four programs). Each claim compares the engine with an independent prediction (theory.py's
pipeline formulas, a float64 NumPy iteration of the separated-limit update rule, binomial
counts); the tolerances and their reasons are in the claims (forget_jax/reproduce/pipelines.py,
from docs/science/pipelines.md "The claims the study checks"). Deliberate breaks, by monkeypatching
the engine, that make claims FAIL: replay shares reversed in modes.training_modes (p1_replay_optimum
0.08 off, p3_starvation |z| = 72), a factor 2 on the RKL weight gradient (p2_separated_steps,
p2_finite_separation, p2_logit_law), the K logits stepped at eta instead of eta / 2
(p1_no_replay_collapse 0.52 off the map), the starved-mode flags shifted by one mode
(p3_starvation).
"""

from __future__ import annotations

import pytest

from forget_jax.reproduce import pipelines, run_studies


@pytest.fixture(scope="module")
def quick_pipelines(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipelines")
    report = run_studies("pipelines", out, quick=True, verbose=False)
    return out, report


@pytest.mark.parametrize("claim_id", pipelines.CLAIMS)
def test_pipeline_claim_passes(quick_pipelines, claim_id):
    _, report = quick_pipelines
    claims = {c["id"]: c for c in report["claims"]}
    claim = claims[claim_id]
    assert claim["verdict"] == "PASS", (
        f"{claim_id}: predicted {claim['predicted']}; measured {claim['measured']}; tolerance {claim['tolerance']}. "
        f"{claim['note']}"
    )


def test_pipeline_study_numbers_and_figures(quick_pipelines):
    """The numbers behind the claims against this file's limits, and the three figures."""
    out, report = quick_pipelines
    values = {c["id"]: c["values"] for c in report["claims"]}
    # P1: the optimum is exact (the family holds p_train); 1e-3 is the docs' float32 / finite-horizon allowance
    assert values["pipelines.p1_replay_optimum"]["max_abs_error"] <= 1e-3
    # the separated map of the update rule: float32 logits over <= 1e4 steps, <= 5e-3 systematic
    assert values["pipelines.p1_no_replay_collapse"]["max_map_rel_error"] <= 1e-2
    # P2 at Delta = 5: the separated law misses (docs: T_Delta / T_sep = 1.03-1.29 at Delta = 4-5) ...
    assert values["pipelines.p2_finite_separation"]["separated_ratio"][1] >= 1.03
    # ... and 3 binomial standard errors for P3 (as PD3)
    assert values["pipelines.p3_starvation"]["max_abs_z"] <= 3.0
    for stem in ("pipelines_mode_weights", "pipelines_recovery_time", "pipelines_starvation"):
        assert (out / "figures" / f"{stem}.png").stat().st_size > 10_000
