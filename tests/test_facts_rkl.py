"""Reverse KL (on-policy RL) facts of docs/science/claims.md section 6: 6 (convergence to the true target),
7 (overlap-gated drift of the old mean, the T4 table), 8 (local exponential convergence at the
rate 1 - eta lambda_min(I(theta*))) and the population half of 12 (target = initial q gives a
zero update).

References are independent: a NumPy gradient-descent loop on KL(q_theta || p*) with trapezoid
expectations on a fine grid (`rkl_reference`), a scipy-quad Fisher matrix, and the closed forms of
T3-T5. All engine configurations share one compiled population program (logit GD, eta = .05).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special

from forget_jax import Setup, make_hyper, simulate, theory
from forget_jax.model import init_params
from forget_jax.objectives import reverse_kl

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
ETA = 0.05


def log_normal(x, mean):
    return -0.5 * (x - mean) ** 2 - LOG_SQRT_2PI


def rkl_reference(separation, init_weight, init_old, init_new, target_weight, learning_rate, steps, h=0.02):
    """NumPy logit GD on L_R = KL(q_theta || p*) (docs/science/model.md section 1, 1-D, sigma = 1), vectorised
    over configurations, with grad L_R = int grad q(x) log(q(x)/p*(x)) dx as trapezoid sums:
    d/dbeta q = N_o - N_n, d/dm_o q = beta N_o (x - m_o), d/dm_n q = (1-beta) N_n (x - m_n), and
    d/da = beta(1-beta) d/dbeta. Returns (beta, m_o, m_n, sup_t |m_o(t) - 0|) at the end."""
    sep = np.atleast_1d(np.asarray(separation, float))[:, None]
    n = sep.shape[0]
    full = lambda v: np.broadcast_to(np.asarray(v, float), (n,)).copy()[:, None]
    beta, m_o, m_n, b_star = map(full, (init_weight, init_old, init_new, target_weight))
    x = np.arange(-12.0, sep.max() + 14.0, h)[None, :]
    log_p = np.logaddexp(np.log(b_star) + log_normal(x, 0.0), np.log1p(-b_star) + log_normal(x, sep))
    a = np.log(beta) - np.log1p(-beta)
    drift_max = np.abs(m_o)
    for _ in range(steps):
        beta = special.expit(a)
        n_o, n_n = np.exp(log_normal(x, m_o)), np.exp(log_normal(x, m_n))
        f = np.log(beta * n_o + (1 - beta) * n_n) - log_p
        g_a = beta * (1 - beta) * np.trapezoid((n_o - n_n) * f, dx=h, axis=1)[:, None]
        g_o = np.trapezoid(beta * n_o * (x - m_o) * f, dx=h, axis=1)[:, None]
        g_n = np.trapezoid((1 - beta) * n_n * (x - m_n) * f, dx=h, axis=1)[:, None]
        a, m_o, m_n = a - learning_rate * g_a, m_o - learning_rate * g_o, m_n - learning_rate * g_n
        drift_max = np.maximum(drift_max, np.abs(m_o))
    return special.expit(a[:, 0]), m_o[:, 0], m_n[:, 0], drift_max[:, 0]


def reference_fisher(delta, beta):
    """I(theta*) for theta = (logit beta, m_o, m_n) by scipy quad (docs/science/claims.md T5)."""

    def integrand(x, i, j):
        n_o, n_n = math.exp(log_normal(x, 0.0)), math.exp(log_normal(x, delta))
        q = beta * n_o + (1 - beta) * n_n
        w_o = beta * n_o / q
        s = (beta * (1 - beta) * (n_o - n_n) / q, w_o * x, (1 - w_o) * (x - delta))
        return q * s[i] * s[j]

    out = np.empty((3, 3))
    for i in range(3):
        for j in range(i, 3):
            out[i, j] = out[j, i] = integrate.quad(
                lambda x: integrand(x, i, j),
                -30,
                delta + 30,
                points=[0.0, delta / 2, delta],
                limit=500,
                epsabs=1e-14,
                epsrel=1e-12,
            )[0]
    return out


# ---------------------------------------------------------------------------------------------
# One batch, one compiled program. Each row: (label, Delta, beta*, beta0, m_o(0) offset,
# logit offset added to logit beta0, m_n(0) offset).

DRIFT_D = (3, 4, 5, 6, 7, 8)
CONFIGS = (
    [(f"drift-{d}", float(d), 0.5, 0.5, 0.0, 0.0, -1.0) for d in DRIFT_D]
    + [(f"drift+{d}", float(d), 0.5, 0.5, 0.0, 0.0, 1.0) for d in DRIFT_D]
    + [("conv-2", 2.0, 0.5, 0.5, 0.0, 0.0, -1.0), ("conv+2", 2.0, 0.5, 0.5, 0.0, 0.0, 1.0)]
    + [(f"beta0-{d}", float(d), 0.5, 0.2, 0.0, 0.0, 0.0) for d in (2, 4, 8)]
    + [("asym", 4.0, 0.3, 0.5, 0.0, 0.0, -1.0)]
    + [("reduction", 4.0, 0.5, 0.5, 0.0, 0.0, 0.0)]
    + [("rate", 4.0, 0.5, 0.5, 0.05, 0.05, -0.05)]
)
INDEX = {c[0]: i for i, c in enumerate(CONFIGS)}


@pytest.fixture(scope="module")
def rkl_run():
    """Population reverse KL, logit GD, eta = .05, 6000 steps, metrics every 50 steps."""
    setup = Setup(objective="rkl", estimator="population", weight_param="logit", steps=6000, log_every=50)
    _, sep, b_star, b0, old_off, logit_off, new_off = map(np.array, zip(*CONFIGS))
    init_weight = special.expit(special.logit(b0) + logit_off)
    hyper = make_hyper(
        separation=sep,
        target_old_weight=b_star,
        init_old_weight=init_weight,
        init_old_offset=old_off,
        init_new_offset=new_off,
        learning_rate=ETA,
    )
    return setup, simulate(setup, hyper)


@pytest.fixture(scope="module")
def drift_reference():
    """NumPy reference of the T4 drift experiment: m_o(0) = 0, beta0 = beta* = .5, m_n(0) = D -+ 1,
    3000 logit GD steps with eta = .05 (the sup of the drift is reached well before)."""
    seps = np.array(DRIFT_D * 2, float)
    offsets = np.repeat([-1.0, 1.0], len(DRIFT_D))
    return rkl_reference(seps, 0.5, 0.0, seps + offsets, 0.5, ETA, 3000)


def test_rkl_converges_to_true_target(rkl_run):
    """docs/science/claims.md fact 6 / T3: population reverse KL (logit GD, eta = .05) converges to
    theta* = (beta*, mu_o*, mu_n*) within 1e-4 from m_n(0) = mu_n* -+ 1 for Delta = 2..8, from
    beta0 = .2 (Delta = 2, 4, 8) and for an asymmetric target beta* = .3: no mass forgetting,
    KL(q || p*) -> 0."""
    _, out = rkl_run
    for label, sep, b_star, *_ in CONFIGS:
        if label in ("rate",):
            continue
        i = INDEX[label]
        assert abs(out["old_weight"][i, -1] - b_star) < 1e-4, label
        assert abs(out["old_mean_position"][i, -1]) < 1e-4, label
        assert abs(out["new_mean_position"][i, -1] - sep) < 1e-4, label
        assert out["kl_to_target"][i, -1] < 1e-6, label
        assert np.min(out["old_weight"][i]) > 0.1, label  # the old mass never collapses
        assert not out["diverged"][i]


def test_rkl_drift_table(rkl_run, drift_reference):
    """docs/science/claims.md fact 7 / T4 table: sup-drift delta_max = sup_t |m_o(t) - mu_o*| of
    population RKL (metric `old_drift_max`, a running sup over every step) equals the NumPy
    reference within 3%, and delta_max / theory.rkl_drift_envelope(Delta_min) (= exp(-Delta_min^2/8),
    the Bhattacharyya coefficient of test_theory_closed_forms.py) lies in fact 7's [0.15, 0.6] for D = 3..8 with
    Delta_min = D - 1 (m_n(0) = D - 1) or D (m_n(0) = D + 1). The quoted table values are
    reproduced within 3%. The running sup dominates every logged drift and never decreases."""
    _, out = rkl_run
    quoted = {
        -1: (1.10e-1, 7.17e-2, 3.20e-2, 1.08e-2, 2.82e-3, 5.67e-4),
        +1: (9.97e-2, 4.88e-2, 1.78e-2, 5.02e-3, 1.09e-3, 1.83e-4),
    }
    ref_drift = drift_reference[3]
    for k, (sign, d) in enumerate([(s, d) for s in (-1, 1) for d in DRIFT_D]):
        i = INDEX[f"drift{'-' if sign < 0 else '+'}{d}"]
        running = out["old_drift_max"][i]
        assert np.all(np.diff(running) >= 0) and np.all(running >= out["old_drift"][i] - 1e-7)
        delta_max = float(running[-1])
        assert abs(delta_max / ref_drift[k] - 1) < 0.03, (sign, d, delta_max, ref_drift[k])
        assert abs(delta_max / quoted[sign][DRIFT_D.index(d)] - 1) < 0.03, (sign, d)
        delta_min = d - 1 if sign < 0 else d
        ratio = delta_max / float(theory.rkl_drift_envelope(float(delta_min)))
        assert 0.15 <= ratio <= 0.6, (sign, d, ratio)


def test_rkl_drift_decays_exponentially_with_separation(rkl_run, drift_reference):
    """Fact 7 / T4: ln delta_max against (D - 1)^2 has slope -> -1/8 (m_n(0) = D - 1): the slope
    between D = 7 and 8 lies in [-0.16, -0.09], for the engine and for the NumPy reference, and the
    least-squares slope over D = 5..8 too; delta_max decreases strictly with D."""
    _, out = rkl_run
    engine = np.array([out["old_drift_max"][INDEX[f"drift-{d}"], -1] for d in DRIFT_D], float)
    for values in (engine, drift_reference[3][: len(DRIFT_D)]):
        assert np.all(np.diff(values) < 0)
        sq = (np.array(DRIFT_D) - 1.0) ** 2
        slope_78 = (math.log(values[-1]) - math.log(values[-2])) / (sq[-1] - sq[-2])
        assert -0.16 <= slope_78 <= -0.09, slope_78
        fit = np.polyfit(sq[2:], np.log(values[2:]), 1)[0]
        assert -0.16 <= fit <= -0.09, fit


def test_rkl_old_mean_returns_to_truth(rkl_run):
    """T4: the final drift delta(infinity) is small for D >= 2 (theory: < 1e-3, ~1e-15 for D >= 4).
    The engine reaches < 1e-5 only: its 64-node Gauss-Hermite population gradient is not exactly 0
    at theta*, which shifts the fixed point by ~1e-6 (see the report and the reduction test)."""
    _, out = rkl_run
    for d in DRIFT_D:
        for sign in "-+":
            assert out["old_drift"][INDEX[f"drift{sign}{d}"], -1] < 1e-5


def test_rkl_local_exponential_rate(rkl_run):
    """docs/science/claims.md fact 8 / T5: near theta*, GD contracts ||theta(t) - theta*|| by
    1 - eta lambda_min(I(theta*)) per step. From theta* + 0.05 (1, 1, -1) in (logit beta, m_o, m_n)
    at Delta = 4, the log-linear fit of ||theta(t) - theta(T)|| (logged old_weight,
    old_mean_position, new_mean_position; theta(T) the end point, see the fixed-point note) once the
    faster modes have died out matches the rate -ln(1 - eta lambda_min) from the scipy Fisher
    matrix within 5%, as does ||theta(t) - theta*|| over the window where it is still far above
    its ~1e-5 floor (float32 rounding plus the ~1e-6 quadrature shift of the fixed point)."""
    setup, out = rkl_run
    i = INDEX["rate"]
    t = setup.logged_steps()
    beta = out["old_weight"][i].astype(float)
    theta = np.stack([np.log(beta / (1 - beta)), out["old_mean_position"][i], out["new_mean_position"][i] - 4.0], -1)
    lam_min = np.linalg.eigvalsh(reference_fisher(4.0, 0.5))[0]
    predicted = -math.log(1 - ETA * lam_min)
    to_end = np.linalg.norm(theta - theta[-1], axis=1)
    window = (t >= 200) & (to_end > 1e-5)
    assert window.sum() >= 8
    rate = -np.polyfit(t[window], np.log(to_end[window]), 1)[0]
    assert abs(rate / predicted - 1) < 0.05, (rate, predicted)
    to_star = np.linalg.norm(theta, axis=1)
    window = (t >= 200) & (to_star > 1e-4)
    assert window.sum() >= 6
    rate_star = -np.polyfit(t[window], np.log(to_star[window]), 1)[0]
    assert abs(rate_star / predicted - 1) < 0.05, (rate_star, predicted)
    with jax.enable_x64(True):
        contraction = float(theory.predicted_contraction(jnp.asarray(reference_fisher(4.0, 0.5)), ETA))
    assert abs(contraction - (1 - ETA * lam_min)) < 1e-12


def test_rkl_target_equal_to_initial_q_gives_zero_update(rkl_run):
    """docs/science/claims.md fact 12 (reverse half, population): if p* = q_theta(0) the reverse-KL
    gradient vanishes. The engine run stays at theta(0) to 1e-5 over 6000 steps and its gradient
    at theta(0) is < 2e-5 in float32; the residual is the 64-node quadrature error of
    E_q[grad log q] = 0 (it falls below 1e-7 at 192 nodes in float64, checked here), not a
    formula error."""
    _, out = rkl_run
    i = INDEX["reduction"]
    np.testing.assert_allclose(out["old_weight"][i], 0.5, atol=1e-6)
    np.testing.assert_allclose(out["old_mean_position"][i], 0.0, atol=1e-5)
    np.testing.assert_allclose(out["new_mean_position"][i], 4.0, atol=1e-5)
    assert np.max(np.abs(out["kl_to_target"][i])) < 1e-7
    for x64, order, tol in ((False, 64, 2e-5), (True, 192, 1e-7)):
        with jax.enable_x64(x64):
            setup = Setup(objective="rkl", estimator="population", x64=x64, quadrature_order=order)
            grad_fn = jax.jit(jax.grad(lambda p, h, setup=setup: reverse_kl(p, h, setup, jax.random.key(0))[0]))
            for delta in (2.0, 4.0, 6.0, 8.0):
                hyper = make_hyper(
                    setup.dtype, separation=delta, target_old_weight=0.3, init_old_weight=0.3, init_new_offset=0.0
                )
                grad = grad_fn(init_params(hyper, setup), hyper)
                flat = np.concatenate([np.ravel(grad.weight), grad.old_mean, grad.new_mean])
                assert np.max(np.abs(flat)) < tol, (x64, order, delta, flat)
