"""Replay and finite batches under reverse KL: docs/science/claims.md facts 9 (bounded importance
weights, unbiased reweighting, a lambda-independent fixed point), 10 (old-mode starvation
frequency) and the score-estimator half of 12 (target = initial q gives a zero update).

References: the closed forms of D5, D6 and T6, scipy quad expectations and NumPy Monte Carlo
written here. Monte Carlo engine runs use the score-function estimator with ancestral sampling.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from forget_jax import Setup, make_hyper, simulate, theory
from forget_jax.model import Mixture
from forget_jax.objectives import replay_log_weight

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def log_normal(x, mean):
    return -0.5 * (x - mean) ** 2 - LOG_SQRT_2PI


def log_mixture(x, beta, m_o, m_n):
    return np.logaddexp(np.log(beta) + log_normal(x, m_o), np.log1p(-beta) + log_normal(x, m_n))


# ---------------------------------------------------------------------------------------------
# Fact 9: replay importance weights (D5, T6)

SCORE_LAMBDAS = (0.0, 0.3, 0.6)
SCORE_SEEDS = (0, 1)


@pytest.fixture(scope="module")
def score_run():
    """RKL, score-function estimator, ancestral sampling through the replay proposal
    m_lambda = (1-lambda) q + lambda p_old, B = 64, logit GD eta = .05, 2000 steps, Delta = 4,
    beta* = .5, m_n(0) = mu_n* - 1. Rows: lambda x seed, then two `reduction` rows whose initial q
    equals the target (lambda = 0 and .3)."""
    setup = Setup(objective="rkl", estimator="score", sampling="ancestral", batch_size=64, steps=2000, log_every=100)
    lam = [l for l in SCORE_LAMBDAS for _ in SCORE_SEEDS] + [0.0, 0.3]
    seed = [s for _ in SCORE_LAMBDAS for s in SCORE_SEEDS] + [7, 8]
    offset = [-1.0] * (len(SCORE_LAMBDAS) * len(SCORE_SEEDS)) + [0.0, 0.0]
    hyper = make_hyper(separation=4.0, replay_ratio=lam, seed=seed, init_new_offset=offset, learning_rate=0.05)
    return setup, simulate(setup, hyper), np.array(lam)


def test_importance_weights_are_bounded(score_run):
    """docs/science/claims.md fact 9 / docs/science/model.md D5: omega = q / ((1-lambda) q + lambda p_old) <= 1/(1-lambda).
    The running max of omega over every step of the run (metric `max_importance_weight`) stays
    below the bound theory.replay_weight_bound (itself checked as the supremum of omega over a NumPy
    grid) (up to float32 rounding of exp(log q - log m), 1e-6 relative) and reaches it
    to within 1% (on new-mode samples p_old is negligible, so omega -> 1/(1-lambda)); without
    replay omega = 1."""
    _, out, lam = score_run
    final = out["max_importance_weight"][:, -1].astype(float)
    bound = np.asarray(theory.replay_weight_bound(lam), float)
    # the bound as the supremum of omega, independently: omega = 1 / ((1 - lambda) + lambda p_old / q)
    # grows as p_old / q -> 0, i.e. on the far side of the new mode; a NumPy grid at theta(0)
    x = np.linspace(-10.0, 30.0, 4001)
    log_q = log_mixture(x, 0.5, 0.0, 3.0)  # beta(0) = .5, m_o(0) = 0, m_n(0) = mu_n* - 1 = 3
    with np.errstate(divide="ignore"):  # log(lambda = 0) = -inf: omega = 1
        omega = np.exp(log_q - np.logaddexp(np.log1p(-lam[:, None]) + log_q, np.log(lam[:, None]) + log_normal(x, 0.0)))
    np.testing.assert_allclose(bound, omega.max(axis=1), rtol=1e-6)
    assert np.all(final <= bound * (1 + 1e-6))
    assert np.all(final >= 0.99 * bound)
    assert np.all(final[lam == 0] == 1.0)
    assert np.all(np.diff(out["max_importance_weight"][:, 1:], axis=1) >= 0)


@pytest.mark.parametrize("lam", [0.3, 0.6])
def test_importance_weighting_is_unbiased(lam):
    """Fact 9 / T6: E_{m_lambda}[omega f] = E_q[f] for f in {1, x, x^2, log q - log p*}, with
    omega from the engine's `replay_log_weight` on NumPy samples of the proposal
    m_lambda = (1-lambda) q + lambda p_old (4e5 draws) against scipy quad under q (1% or 5
    standard errors); omega also equals q/m_lambda computed in NumPy and never exceeds
    1/(1-lambda)."""
    rng = np.random.default_rng(3)
    beta, m_o, m_n, delta = 0.3, 0.5, 3.5, 4.0
    n = 400_000
    replayed = rng.random(n) < lam
    is_old = rng.random(n) < beta
    x = np.where(replayed, 0.0, np.where(is_old, m_o, m_n)) + rng.standard_normal(n)
    with jax.enable_x64(True):
        q = Mixture(jnp.float64(beta), jnp.array([m_o]), jnp.array([m_n]), jnp.float64(1), jnp.float64(1))
        p_old = Mixture(jnp.float64(1.0), jnp.array([0.0]), jnp.array([delta]), jnp.float64(1), jnp.float64(1))
        omega = np.exp(np.asarray(replay_log_weight(q, p_old, jnp.asarray(x[:, None]), jnp.float64(lam))))
    log_q = log_mixture(x, beta, m_o, m_n)
    log_m = np.logaddexp(math.log1p(-lam) + log_q, math.log(lam) + log_normal(x, 0.0))
    np.testing.assert_allclose(omega, np.exp(log_q - log_m), rtol=1e-12)
    assert omega.max() <= 1 / (1 - lam) + 1e-12

    def f_values(y):
        return {
            "one": np.ones_like(y),
            "x": y,
            "x2": y**2,
            "log_ratio": log_mixture(y, beta, m_o, m_n) - log_mixture(y, 0.5, 0.0, delta),
        }

    mc = {k: (np.mean(omega * v), np.std(omega * v) / math.sqrt(n)) for k, v in f_values(x).items()}
    for k, (mean, se) in mc.items():
        exact = integrate.quad(
            lambda y: math.exp(log_mixture(np.array(y), beta, m_o, m_n)) * f_values(np.array(y))[k],
            -30,
            35,
            points=[0.0, m_o, m_n, delta],
            limit=500,
        )[0]
        assert abs(mean - exact) < max(0.01 * abs(exact), 5 * se), (k, mean, exact, se)


def test_rkl_fixed_point_is_independent_of_replay(score_run):
    """Fact 9 / T6: replay leaves the population objective, hence the fixed point, unchanged: with the
    score estimator and lambda in {0, .3, .6} the final beta is beta* = .5 within Monte Carlo
    tolerance (0.01; the estimator's variance vanishes at the optimum, where log q - log p* = 0)
    and the means reach mu_o* = 0, mu_n* = 4 within 0.01."""
    _, out, lam = score_run
    rows = np.arange(len(SCORE_LAMBDAS) * len(SCORE_SEEDS))
    final_beta = out["old_weight"][rows, -5:].mean(axis=1)
    assert np.all(np.abs(final_beta - 0.5) < 0.01)
    assert np.all(np.abs(out["old_mean_position"][rows, -1]) < 0.01)
    assert np.all(np.abs(out["new_mean_position"][rows, -1] - 4.0) < 0.01)
    by_lambda = [final_beta[lam[rows] == l].mean() for l in SCORE_LAMBDAS]
    assert max(by_lambda) - min(by_lambda) < 0.01
    assert not out["diverged"].any()


def test_score_estimator_zero_update_when_target_equals_q(score_run):
    """docs/science/claims.md fact 12 (reverse half, Monte Carlo): with p* = q_theta(0) every sample has
    log q - log p* = 0, so the score-estimator update is exactly zero, with and without replay:
    the logged parameters never change."""
    _, out, _ = score_run
    for i in (-2, -1):
        assert np.all(out["old_weight"][i] == 0.5)
        assert np.all(out["old_mean_position"][i] == 0.0)
        assert np.all(out["new_mean_position"][i] == 4.0)
        assert np.all(out["kl_to_target"][i] == 0.0)


# ---------------------------------------------------------------------------------------------
# Fact 10: starvation frequency (D6, T6)

STARVE_CASES = [(0.05, 0.0), (0.05, 0.1), (0.2, 0.1), (0.1, 0.3), (0.5, 0.0)]  # (beta, lambda)
STARVE_SEEDS = 8
STARVE_STEPS = 4000


def _starvation_run(estimator, cases):
    setup = Setup(
        objective="rkl",
        estimator=estimator,
        sampling="ancestral",
        batch_size=8,
        steps=STARVE_STEPS,
        log_every=1000,
        train_weight=False,
        train_old_mean=False,
        train_new_mean=False,
    )
    beta = np.repeat([c[0] for c in cases], STARVE_SEEDS)
    lam = np.repeat([c[1] for c in cases], STARVE_SEEDS)
    hyper = make_hyper(
        separation=4.0, init_old_weight=beta, target_old_weight=beta, replay_ratio=lam, seed=np.arange(len(beta))
    )
    return setup, simulate(setup, hyper)


@pytest.mark.parametrize("estimator", ["score", "pathwise"])
def test_starved_fraction_matches_formula(estimator):
    """docs/science/claims.md fact 10 / docs/science/model.md D6: with beta held constant (weight and means frozen) the
    fraction of steps whose batch of B = 8 ancestral samples holds no old-mode sample (replayed
    samples count as old) is ((1-lambda)(1-beta))^B, e.g. beta = .05, lambda = .1 -> .2856.
    Pooled over 8 seeds x 4000 steps per case, within 4.5 binomial standard errors of the closed
    form (and of theory.starvation_probability). The pathwise estimator has no replay proposal, so
    it is checked at lambda = 0."""
    cases = STARVE_CASES if estimator == "score" else [(b, 0.0) for b in (0.05, 0.2, 0.5)]
    setup, out = _starvation_run(estimator, cases)
    fractions = out["starved_fraction"][:, 1:].astype(float)  # each log: fraction over 1000 steps
    n = STARVE_SEEDS * STARVE_STEPS
    for k, (beta, lam) in enumerate(cases):
        rows = slice(k * STARVE_SEEDS, (k + 1) * STARVE_SEEDS)
        freq = fractions[rows].mean()
        exact = float(theory.starvation_probability(beta, lam, setup.batch_size))  # = NumPy MC, closed forms test
        assert abs(freq - exact) < 4.5 * math.sqrt(exact * (1 - exact) / n), (beta, lam, freq, exact)
        np.testing.assert_array_equal(out["old_weight"][rows], np.float32(beta))
