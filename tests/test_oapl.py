"""OAPL (docs/science/methods.md C; docs/science/claims.md T9): batch reuse across the lag and the
beta_1 != beta_2 case of the published code.

Batch reuse (`oapl_reuse_batch`): one batch per sync window, windows [kL, (k + 1) L) ending at the
syncs after steps L, 2L, ... The checks: the draw is shared within a window and differs across
windows, in the objective and through the training loop; fresh batches keep today's key
fold_in(key(seed), t); the population estimator is unaffected; reuse makes the steps of a window
share their gradient noise (correlation 1 instead of 0) without changing the expected gradient.

beta_1 != beta_2: the population minimiser of E_lag[(beta_2 log(q / q_lag) - (r - V))^2],
V = beta_1 log E_lag[e^{r / beta_1}], is not the tilt q_lag e^{r / beta_2} / Z (methods.md C,
"beta_1 != beta_2"). For one Gaussian of fixed scale s and the linear reward r = w x the shift
a = (m - m_lag) / s^2 solves the cubic (beta_2 s^2 / 2) a^3 + (beta_2 - s^2 w^2 / (2 beta_1)) a - w = 0;
with finite groups of G the Monte Carlo loss's minimiser solves the cubic with the group
statistics E[D], E[z_1 D] of D = beta_1 log mean_j e^{w s z_j / beta_1}, computed here by NumPy.
For the two-mode learner the minimiser is found by independent optimisation (quadrature + BFGS).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.polynomial.hermite_e import hermegauss
from scipy.optimize import minimize
from scipy.special import logsumexp

from forget_jax import Setup, make_hyper, simulate
from forget_jax.model import init_params
from forget_jax.objectives import get_objective

OAPL = get_objective("oapl")
LAG = 4


def _hyper(setup, **values):
    return jax.tree.map(jnp.asarray, make_hyper(setup.dtype, **values))


def _key_data(key):
    return np.asarray(jax.random.key_data(key))


def _moved(params, setup):
    """theta != theta_lag: the regression has a non-zero gradient."""
    return params.__class__(
        weight=params.weight + 0.4,
        old_mean=params.old_mean + 0.3,
        new_mean=params.new_mean - 0.2,
        old_scale=params.old_scale,
        new_scale=params.new_scale,
    )


def test_reuse_draws_one_batch_per_sync_window():
    """With reuse the key (hence the batch and the loss at given theta) is the same for the L steps
    of a window and differs between windows; without reuse it is fold_in(key(seed), t) as before.
    Through the training loop: the logged trajectory (loss, beta, m_n) is that of plain SGD with step
    t's batch drawn from fold_in(key(seed), t // L) and the sync after steps L, 2L, ..."""
    reuse = Setup(objective="oapl", estimator="score", reward="linear", batch_size=64, oapl_reuse_batch=True)
    fresh = reuse.replace(oapl_reuse_batch=False)
    hyper = _hyper(reuse, oapl_lag=float(LAG), reward_slope=0.5)
    run_key = jax.random.key(7)
    steps = range(3 * LAG)
    for t in steps:
        np.testing.assert_array_equal(
            _key_data(OAPL.batch_key(run_key, t, hyper, fresh)), _key_data(jax.random.fold_in(run_key, t))
        )
    params = init_params(hyper, reuse)
    theta = _moved(params, reuse)
    losses = [float(OAPL.loss(theta, hyper, reuse, OAPL.batch_key(run_key, t, hyper, reuse), params)[0]) for t in steps]
    windows = [t // LAG for t in steps]
    for t in steps:
        for u in steps:
            same = windows[t] == windows[u]
            assert (losses[t] == losses[u]) == same, (t, u, losses[t], losses[u])

    # the training loop: plain SGD on the loss with step t's key fold_in(key(seed), t // L) and the
    # sync after steps L, 2L, written out here, gives the engine's logged trajectory
    setup = reuse.replace(steps=3 * LAG, log_every=1)
    lr, seed = 0.3, 3
    out = simulate(setup, make_hyper(setup.dtype, oapl_lag=float(LAG), reward_slope=0.5, learning_rate=lr, seed=[seed]))
    theta = lag = params
    key = jax.random.key(seed)
    for t in range(3 * LAG):
        batch = jax.random.fold_in(key, t // LAG)
        value, grads = jax.value_and_grad(lambda p: OAPL.loss(p, hyper, setup, batch, lag)[0])(theta)
        assert float(out["loss"][0, t]) == pytest.approx(float(value), rel=1e-5, abs=1e-6)
        assert float(out["old_weight"][0, t]) == pytest.approx(float(jax.nn.sigmoid(theta.weight)), abs=1e-5)
        assert float(out["new_mean_position"][0, t]) == pytest.approx(float(theta.new_mean[0]), abs=1e-5)
        theta = jax.tree.map(lambda p, g: p - lr * g, theta, grads)
        theta = theta.__class__(theta.weight, theta.old_mean, theta.new_mean, params.old_scale, params.new_scale)
        if (t + 1) % LAG == 0:
            lag = theta


def test_population_estimator_ignores_the_batch():
    """The population loss and gradient do not read the key, so reuse cannot change population
    results: identical values for keys of different windows."""
    setup = Setup(objective="oapl", estimator="population", reward="linear", oapl_reuse_batch=True)
    hyper = _hyper(setup, oapl_lag=float(LAG))
    params = init_params(hyper, setup)
    theta = _moved(params, setup)

    def grad(key):
        return jax.grad(lambda p: OAPL.loss(p, hyper, setup, key, params)[0])(theta)

    keys = [OAPL.batch_key(jax.random.key(0), t, hyper, setup) for t in (0, LAG, 5 * LAG + 1)]
    reference = jax.tree.leaves(grad(keys[0]))
    for key in keys[1:]:
        for a, b in zip(reference, jax.tree.leaves(grad(key))):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


#: Thresholds of the correlation / mean tests (2000 runs): |r| < 4 / sqrt(n) for independent
#: noise (P ~ 6e-5 each), two-sample |z| < 4.5 for equal means (6 comparisons, P ~ 7e-6 each).
RUNS = 2000
R_MAX = 4 / math.sqrt(RUNS)
Z_MAX = 4.5


def test_reuse_correlates_the_steps_of_a_window_but_keeps_the_mean_gradient():
    """At fixed theta != theta_lag, over 2000 runs: the gradient noise of consecutive steps in one
    window has correlation exactly 1 with reuse (the same batch) and is uncorrelated across the
    sync boundary and, without reuse, between any two steps; the mean gradient of every step is
    the same with and without reuse (each step's batch has the same distribution)."""
    setup = Setup(objective="oapl", estimator="score", reward="linear", batch_size=64, oapl_reuse_batch=True)
    hyper = _hyper(setup, oapl_lag=float(LAG), reward_slope=0.5)
    params = init_params(hyper, setup)
    theta = _moved(params, setup)

    @jax.jit
    def gradients(keys):
        def one(key):
            g = jax.grad(lambda p: OAPL.loss(p, hyper, setup, key, params)[0])(theta)
            return jnp.stack([g.weight, g.old_mean[0], g.new_mean[0]])

        return jax.vmap(one)(keys)

    run_keys = jax.random.split(jax.random.key(5), RUNS)
    steps = (0, 1, LAG - 1, LAG)  # two steps of window 0, its last step, the first of window 1
    out = {}
    for reuse in (True, False):
        s = setup.replace(oapl_reuse_batch=reuse)
        keys = [jax.vmap(lambda k, t=t, s=s: OAPL.batch_key(k, t, hyper, s))(run_keys) for t in steps]
        out[reuse] = np.stack([np.asarray(gradients(k), np.float64) for k in keys])  # (step, run, component)

    def corr(g, i, j, c):
        return float(np.corrcoef(g[i, :, c], g[j, :, c])[0, 1])

    for c in range(3):
        assert corr(out[True], 0, 1, c) == pytest.approx(1.0, abs=1e-12)
        assert abs(corr(out[True], 2, 3, c)) < R_MAX  # across the sync boundary
        for i, j in ((0, 1), (2, 3)):
            assert abs(corr(out[False], i, j, c)) < R_MAX
        for i in (0, 3):
            a, b = out[True][i, :, c], out[False][i, :, c]
            z = (a.mean() - b.mean()) / math.sqrt(a.var(ddof=1) / RUNS + b.var(ddof=1) / RUNS)
            assert abs(z) < Z_MAX, (c, i, z)


# ---------------------------------------------------------------------------------------------
# beta_1 != beta_2


W, BETA1, BETA2 = 1.0, 1.0, 0.5  # tilt shift w / beta_2 = 2; the cubic gives 1.587; G = 8 gives 1.439


def _positive_real_root(coefficients):
    roots = np.roots(coefficients)
    real = roots[np.abs(roots.imag) < 1e-9].real
    assert real.size == 1 and real[0] > 0, roots  # one real root for these values
    return float(real[0])


def population_shift(w, s, beta1, beta2):
    """a* of the fixed-scale Gaussian: J(a) = s^2 (beta_2 a - w)^2 + (w^2 s^2 / (2 beta_1) - beta_2 a^2 s^2 / 2)^2,
    dJ/da = 0 <=> (beta_2 s^2 / 2) a^3 + (beta_2 - s^2 w^2 / (2 beta_1)) a - w = 0."""
    return _positive_real_root([beta2 * s**2 / 2, 0.0, beta2 - s**2 * w**2 / (2 * beta1), -w])


def monte_carlo_shift(w, s, beta1, beta2, group, groups=1_000_000, seed=0):
    """a of the expected Monte Carlo loss with groups of G: with y = m_lag + s z and D = V_hat - w m_lag,
    E[loss] = b^2 + 2 b E[z_1 D] + E[(c + D)^2], b = (beta_2 a - w) s, c = -beta_2 a^2 s^2 / 2, so
    dE/da = 0 <=> (beta_2 s^3 / 2) a^3 + (beta_2 s - s E[D]) a + (E[z_1 D] - w s) = 0 (population:
    E[D] = w^2 s^2 / (2 beta_1), E[z_1 D] = 0). Returns (a, its Monte Carlo s.e. from E[D], E[z_1 D])."""
    z = np.random.default_rng(seed).standard_normal((groups, group))
    d = beta1 * (logsumexp(w * s * z / beta1, axis=1) - math.log(group))
    stats = np.stack([d, z[:, 0] * d])
    mean, se = stats.mean(axis=1), stats.std(axis=1, ddof=1) / math.sqrt(groups)

    def root(ed, ezd):
        return _positive_real_root([beta2 * s**3 / 2, 0.0, beta2 * s - s * ed, ezd - w * s])

    a = root(*mean)
    sensitivity = [(root(mean[0] + 1e-4, mean[1]) - a) / 1e-4, (root(mean[0], mean[1] + 1e-4) - a) / 1e-4]
    return a, float(math.hypot(sensitivity[0] * se[0], sensitivity[1] * se[1]))


def test_beta_mismatch_population_minimiser():
    """Population OAPL with the lag longer than the run (theta_lag = theta(0) throughout) converges to
    the derived minimiser, not to the tilt q_lag e^{r / beta_2} / Z.

    One Gaussian (learner_modes: 1, s = 1): m - m(0) = a* s^2 = 1.587 (the cubic), tilt 2.0, to 1e-4
    (float32 at convergence). Two modes (fixed scales, lagged 0.5 N(0, 1) + 0.5 N(3, 1), w = 0.3):
    (beta, m_o, m_n) = the BFGS minimiser of the 128-node quadrature of the same loss (NumPy) to
    2e-4, and away from the tilt (logit change w (m_o - m_n) / beta_2, shifts s^2 w / beta_2)."""
    assert population_shift(W, 1.0, BETA1, BETA1) == pytest.approx(W / BETA1, abs=1e-12)  # beta_1 = beta_2: the tilt
    a_star = population_shift(W, 1.0, BETA1, BETA2)
    assert abs(a_star - W / BETA2) > 0.3
    setup = Setup(objective="oapl", estimator="population", reward="linear", learner_modes=1, steps=300, log_every=300)
    values = dict(oapl_lag=1e6, oapl_beta1=BETA1, oapl_beta2=BETA2, learning_rate=1.0)
    out = simulate(setup, make_hyper(setup.dtype, **values, reward_slope=[W]))
    assert float(out["old_mean_position"][0, -1]) == pytest.approx(a_star, abs=1e-4)

    w = 0.3
    nodes, weights = hermegauss(128)
    weights = weights / weights.sum()
    lag = (0.5, 0.0, 3.0)  # beta_lag, m_o, m_n of the default initial learner (separation 4, offset -1)
    xs = np.concatenate([lag[1] + nodes, lag[2] + nodes])
    ws = np.concatenate([lag[0] * weights, (1 - lag[0]) * weights])

    def log_q(x, beta, m_o, m_n):
        return np.logaddexp(
            np.log(beta) - 0.5 * (x - m_o) ** 2, np.log1p(-beta) - 0.5 * (x - m_n) ** 2
        )  # common constants cancel in log(q / q_lag)

    value = BETA1 * np.log(np.sum(ws * np.exp(w * xs / BETA1)))
    residual_base = log_q(xs, *lag)

    def loss(theta):
        beta = 1 / (1 + np.exp(-theta[0]))
        return float(
            np.sum(ws * (BETA2 * (log_q(xs, beta, theta[1], theta[2]) - residual_base) - (w * xs - value)) ** 2)
        )

    res = minimize(loss, np.array([0.0, lag[1], lag[2]]), method="BFGS", options=dict(gtol=1e-12))
    beta_ref, m_o_ref, m_n_ref = 1 / (1 + math.exp(-res.x[0])), res.x[1], res.x[2]
    two = setup.replace(learner_modes=2, steps=1500, log_every=1500)
    out = simulate(two, make_hyper(two.dtype, **values, reward_slope=[w]))
    final = {k: float(out[k][0, -1]) for k in ("old_weight", "old_mean_position", "new_mean_position")}
    assert final["old_weight"] == pytest.approx(beta_ref, abs=2e-4)
    assert final["old_mean_position"] == pytest.approx(m_o_ref, abs=2e-4)
    assert final["new_mean_position"] == pytest.approx(m_n_ref, abs=2e-4)
    tilt_logit = math.log(lag[0] / (1 - lag[0])) + w * (lag[1] - lag[2]) / BETA2
    assert abs(math.log(beta_ref / (1 - beta_ref)) - tilt_logit) > 0.1
    assert abs(m_n_ref - (lag[2] + w / BETA2)) > 0.05


def test_beta_mismatch_monte_carlo_minimiser_with_and_without_reuse():
    """Monte Carlo OAPL (one Gaussian, G = 8, 32 groups a batch, no sync) converges in seed mean to
    the minimiser of its expected loss, a = 1.439 (NumPy group statistics), not to the population
    1.587 nor the tilt 2.0: within 4 s.e. (32 seeds) + 4 s.e. of the NumPy constants + 5e-3 (SGD
    bias O(eta Var / B)). With reuse (one batch for the whole run: its empirical minimiser, unbiased
    for it to O(1 / B)) the seed mean is the same within the same band."""
    a_mc, a_se = monte_carlo_shift(W, 1.0, BETA1, BETA2, group=8)
    assert a_mc == pytest.approx(1.439, abs=5e-3) and population_shift(W, 1.0, BETA1, BETA2) - a_mc > 0.1
    for reuse in (False, True):
        setup = Setup(
            objective="oapl",
            estimator="score",
            reward="linear",
            learner_modes=1,
            steps=300,
            log_every=300,
            batch_size=256,
            group_size=8,
            oapl_reuse_batch=reuse,
        )
        hyper = make_hyper(
            setup.dtype,
            oapl_lag=1e6,
            oapl_beta1=BETA1,
            oapl_beta2=BETA2,
            reward_slope=W,
            learning_rate=0.5,
            seed=np.arange(32),
        )
        m = np.asarray(simulate(setup, hyper)["old_mean_position"][:, -1], np.float64)
        se = m.std(ddof=1) / math.sqrt(m.size)
        assert abs(m.mean() - a_mc) <= 4 * se + 4 * a_se + 5e-3, (reuse, m.mean(), a_mc, se)
