"""The pipeline theory (docs/science/pipelines.md P1-P3) against independent computations: a direct
numerical minimisation of the forward KL over K weights, the exact two-mode reverse KL on a grid,
scipy's ODE solver, the discrete update rules iterated by hand, and Monte Carlo counts.

Every computation here is written in NumPy / SciPy from the definitions (the mixtures, the KL, the
update rules of docs/science/model.md section 1), not from the formulas under test; tolerances are
derived in each test. The jax.numpy functions run in float64 (jax.enable_x64).
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from scipy import integrate, optimize, stats

from forget_jax import theory

PARAMS = ("logit", "direct", "replicator")


def _log_normal(x: np.ndarray, mean: float) -> np.ndarray:
    return -0.5 * (x - mean) ** 2 - 0.5 * math.log(2 * math.pi)


# --- P1: FKL stage optimum over K weights ---------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "replay_ratio", "earlier", "shares"),
    [(2, 0.3, (0, 1), (0.25, 0.75)), (3, 0.2, (0, 1, 2), None), (1, 0.0, (0,), None), (0, 0.4, (2, 3), (0.5, 0.5))],
)
def test_fkl_stage_weights_minimise_the_forward_kl(task, replay_ratio, earlier, shares):
    """argmin over the K weights (K - 1 free softmax logits, the last pinned at 0) of
    KL(p_train || q) = const - E_{p_train}[log q], modes N(12 k, 1), means at the targets, by
    L-BFGS on a grid integral; p_train is built from the stage's definition (the task with
    1 - lambda, each earlier task with lambda share_j). Tolerance 1e-6: the cross-entropy's logit
    gradient is w_j - E_p[resp_j], driven below gtol = 1e-10 (or f stalls at ~1e-9 from it); the overlap terms are O(BC) = e^{-18}."""
    k_modes, sep = 4, 12.0
    means = sep * np.arange(k_modes)
    x = np.linspace(-10.0, means[-1] + 10.0, 2001)  # h = .028: the trapezoid rule is exact to ~1e-15 on Gaussians
    log_n = np.stack([_log_normal(x, m) for m in means])  # (K, grid)
    share = np.full(len(earlier), 1 / len(earlier)) if shares is None else np.asarray(shares)
    train_w = np.zeros(k_modes)
    train_w[task] += 1 - replay_ratio
    for j, s in zip(earlier, share, strict=True):
        train_w[j] += replay_ratio * s
    p_train = np.exp(log_n).T @ train_w

    def loss_and_grad(free_logits):
        logits = np.append(free_logits, 0.0)
        log_w = logits - np.logaddexp.reduce(logits)
        log_q = np.logaddexp.reduce(log_w[:, None] + log_n, axis=0)
        resp = np.exp(log_w[:, None] + log_n - log_q)
        loss = -np.trapezoid(p_train * log_q, x)
        grad = np.exp(log_w) - np.trapezoid(p_train * resp, x, axis=1)
        return loss, grad[:-1]

    res = optimize.minimize(
        loss_and_grad,
        np.zeros(k_modes - 1),
        jac=True,
        method="L-BFGS-B",
        options={"gtol": 1e-10, "ftol": 0, "maxiter": 5000},
    )
    logits = np.append(res.x, 0.0)
    weights = np.exp(logits - np.logaddexp.reduce(logits))
    predicted = theory.fkl_stage_weights(k_modes, task, replay_ratio, earlier, shares)
    np.testing.assert_allclose(predicted, weights, atol=1e-6)
    assert predicted.sum() == pytest.approx(1.0)


def test_fkl_stage_weights_two_modes_is_t2_and_bad_stages_raise():
    """K = 2, task 1, replay of task 0 is T2's beta = lambda (`fkl_replay_optimum`); a stage
    naming a missing task, replaying with nothing earlier or with shares not summing to 1 raises."""
    for lam in (0.0, 0.1, 0.5):
        w = theory.fkl_stage_weights(2, 1, lam, (0,))
        assert w[0] == pytest.approx(float(theory.fkl_replay_optimum(lam))) and w[1] == pytest.approx(1 - lam)
    for bad in [
        (3, 3, 0.1, (0,), None),
        (3, 1, 0.1, (), None),
        (3, 2, 0.1, (0, 1), (0.5, 0.4)),
        (3, 1, 0.1, (1,), None),
    ]:
        with pytest.raises(ValueError):
            theory.fkl_stage_weights(*bad)


# --- P2: RKL velocity, step map, recovery time ----------------------------------------------------


def _rkl_grid(weight: float, target: float, sep: float, x: np.ndarray) -> float:
    """KL(q || p*) of the two-mode mixtures (modes N(0, 1), N(sep, 1)) by the trapezoid rule."""
    lo, ln = _log_normal(x, 0.0), _log_normal(x, sep)
    log_q = np.logaddexp(math.log(weight) + lo, math.log1p(-weight) + ln)
    log_p = np.logaddexp(math.log(target) + lo, math.log1p(-target) + ln)
    return float(np.trapezoid(np.exp(log_q) * (log_q - log_p), x))


BETAS = (1e-3, 0.05, 0.3, 0.8)


@pytest.mark.parametrize("weight_param", PARAMS)
def test_rkl_weight_velocity_is_the_step_map_limit(weight_param):
    """(step(beta; h) - beta) / h -> v(beta; eta = 1) as h -> 0. Direct and replicator steps are linear
    in h (rounding only); the logit step's sigmoid adds (1/2)(1 - 2 beta) delta, delta = h beta (1 - beta) L',
    relative: < 3e-5 at h = 1e-5 (|L'| < 4 here) and ~10x below its value at h = 1e-4 (a real
    limit; smaller h meets the rounding of the logit round trip, ~1e-16 |a| / delta)."""
    with jax.enable_x64(True):
        for target in (0.5, 0.2):
            beta = np.asarray(BETAS)
            v = np.asarray(theory.rkl_weight_velocity(beta, target, 1.0, weight_param))
            errs = []
            for h in (1e-4, 1e-5):
                fd = (np.asarray(theory.rkl_weight_step(beta, target, h, weight_param, 1e-9)) - beta) / h
                errs.append(np.max(np.abs(fd / v - 1)))
            assert errs[1] < 3e-5 and (errs[1] < 0.2 * errs[0] or errs[0] < 1e-9), errs


@pytest.mark.parametrize("weight_param", PARAMS)
def test_rkl_weight_velocity_is_gradient_flow_of_the_mixture_kl(weight_param):
    """v(beta) = d beta/dt of gradient flow on the exact two-mode KL(q || p*) at Delta = 12 (grid
    integral, central differences h = 1e-5 in the updated parameter: a for logit, beta otherwise,
    the replicator's beta (1 - beta) metric applied to d/d beta). Tolerance 1e-6 relative: the
    misassignment gap is <= BC (sqrt((1 - beta)/beta) + ...) ~ 5e-7 absolute on |L'| >= 0.5;
    the finite difference errs by ~h^2 |L'''| + 1e-16 L / h ~ 1e-9."""
    sep, eta, h = 12.0, 0.3, 1e-5
    x = np.linspace(-12.0, sep + 12.0, 24001)
    with jax.enable_x64(True):
        for target in (0.5, 0.2):
            for beta in BETAS:
                if weight_param == "logit":
                    a = math.log(beta / (1 - beta))
                    sig = lambda z: 1 / (1 + math.exp(-z))
                    dl_da = (_rkl_grid(sig(a + h), target, sep, x) - _rkl_grid(sig(a - h), target, sep, x)) / (2 * h)
                    flow = beta * (1 - beta) * (-eta * dl_da)  # d beta/dt = sigma'(a) da/dt
                else:
                    dl_db = (
                        _rkl_grid(beta + h * beta, target, sep, x) - _rkl_grid(beta - h * beta, target, sep, x)
                    ) / (2 * h * beta)
                    flow = -eta * dl_db * (1.0 if weight_param == "direct" else beta * (1 - beta))
                v = float(theory.rkl_weight_velocity(beta, target, eta, weight_param))
                assert v == pytest.approx(flow, rel=1e-6), (target, beta)


def _bernoulli_kl_grad(beta):
    """d/dbeta of beta log(beta/beta*) + (1 - beta) log((1 - beta)/(1 - beta*)) by complex step."""

    def grad(b, target):
        z = b + 1e-30j
        kl = z * np.log(z / target) + (1 - z) * np.log((1 - z) / (1 - target))
        return kl.imag / 1e-30

    return grad


def _ode_recovery_time(b0, b1, target, eta, weight_param):
    """Time for the gradient flow of the separated-limit KL, solved by scipy (DOP853, rtol 1e-12),
    with an event at beta = beta_end; logit integrated in a = logit beta."""
    grad = _bernoulli_kl_grad(None)
    if weight_param == "logit":

        def rhs(_, y):
            b = 1 / (1 + math.exp(-y[0]))
            return [-eta * b * (1 - b) * grad(b, target)]  # da/dt = -eta dL/da

        y0, event_at = math.log(b0 / (1 - b0)), math.log(b1 / (1 - b1))
    else:

        def rhs(_, y):
            metric = 1.0 if weight_param == "direct" else y[0] * (1 - y[0])
            return [-eta * metric * grad(y[0], target)]

        y0, event_at = b0, b1

    def reached(_, y):
        return y[0] - event_at

    reached.terminal = True
    sol = integrate.solve_ivp(rhs, (0.0, 1e12), [y0], method="DOP853", rtol=1e-12, atol=1e-14, events=reached)
    return float(sol.t_events[0][0])


@pytest.mark.parametrize("weight_param", PARAMS)
def test_rkl_recovery_time_matches_the_ode(weight_param):
    """The quadrature T against scipy's ODE solution of the flow with an event at beta_end
    (tolerance 1e-7 relative: quad at 1e-11, the ODE at 1e-12 per step over ~1e3 steps). Edge
    cases: T = 0 when beta_0 >= beta_end, inf when beta_end >= beta* (the flow stops at beta*)."""
    for b0, b1, target, eta in [(1e-4, 0.25, 0.5, 0.1), (0.02, 0.15, 0.2, 1.0), (0.3, 0.45, 0.5, 0.01)]:
        predicted = float(theory.rkl_recovery_time(b0, b1, target, eta, weight_param))
        assert predicted == pytest.approx(_ode_recovery_time(b0, b1, target, eta, weight_param), rel=1e-7)
    assert float(theory.rkl_recovery_time(0.3, 0.2, 0.5, 0.1, weight_param)) == 0.0
    assert math.isinf(float(theory.rkl_recovery_time(0.01, 0.5, 0.5, 0.1, weight_param)))


def _update_increment(weight_param, beta, target, eta):
    """One step's increment in the updated coordinate (docs/science/model.md section 1 with
    L' = logit beta - logit beta*): a for logit, beta for direct / replicator."""
    gap = math.log(target / (1 - target)) - math.log(beta / (1 - beta))
    return eta * gap * (1.0 if weight_param == "direct" else beta * (1 - beta))


@pytest.mark.parametrize(
    ("weight_param", "b0", "eta"),
    [("logit", 1e-3, 0.01), ("logit", 1e-2, 0.03), ("replicator", 1e-3, 0.01), ("direct", 1e-2, 1e-4)],
)
def test_rkl_recovery_steps_follow_the_continuous_time(weight_param, b0, eta):
    """Discrete steps N vs the continuous time T (beta_end = 0.25, beta* = 0.5). Euler on dx/dt = f(x)
    (x the updated coordinate, f the per-step increment) covers in one step the flow time
    1 - f'/2 + O(f'^2), so N - T = (1/2) ln(f(x_end) / f(x_0)) + theta, theta in [0, 1) the overshoot
    of the first crossing, up to the O(eta) second-order sum: tolerance theta in [-0.5, 1.5].
    Needs |f'| << 1 along the path: eta << beta_0 for direct (f' = -eta / (beta (1 - beta)))."""
    b1, target = 0.25, 0.5
    n_steps = float(theory.rkl_recovery_steps(b0, b1, target, eta, weight_param))
    t_cont = float(theory.rkl_recovery_time(b0, b1, target, eta, weight_param))
    euler = 0.5 * math.log(
        _update_increment(weight_param, b1, target, eta) / _update_increment(weight_param, b0, target, eta)
    )
    assert -0.5 <= n_steps - t_cont - euler <= 1.5, (n_steps, t_cont, euler)


def test_rkl_recovery_steps_count_the_update_rule():
    """The count equals iterating the update rules by hand (first n with beta_n >= beta_end), in a
    batch with an already-recovered entry (0) and an unreachable end (beta_end >= beta*: inf). In
    float32 a logit step below half an ulp of a never moves a: beta_0 = 1e-7, eta = 0.1 stalls (inf)."""
    cases = [("logit", 0.01, 0.5), ("direct", 1e-3, 0.02), ("replicator", 0.01, 0.5)]
    for weight_param, b0, eta in cases:
        beta, a, n = b0, math.log(b0 / (1 - b0)), 0
        while beta < 0.3:
            n += 1
            inc = _update_increment(weight_param, beta, 0.5, eta)
            if weight_param == "logit":
                a += inc
                beta = 1 / (1 + math.exp(-a))
            else:
                beta = min(max(beta + inc, 1e-6), 1 - 1e-6)
        got = theory.rkl_recovery_steps(np.array([b0, 0.4, b0]), np.array([0.3, 0.3, 0.6]), 0.5, eta, weight_param)
        np.testing.assert_array_equal(got, [n, 0.0, np.inf])
    assert math.isinf(float(theory.rkl_recovery_steps(1e-7, 0.25, 0.5, 0.1, "logit", dtype=np.float32)))


def test_rkl_recovery_time_asymptotics():
    """The small-weight laws against the exact T (beta* = 0.5 or 0.3, beta_end = 0.25, eta = 0.1).

    logit, beta_0 -> 0 with u_0 = log(c / beta_0): T / leading - 1 = 1/u_0 + 2/u_0^2 + 6/u_0^3 + ...
    (the asymptotic series of Ei), so |T / leading - 1 - 1/u_0| <= 3/u_0^2 and the three-term form
    errs by <= 10/u_0^3 (for u_0 >= 18, where the series' tail after k terms is below 1.5 x its
    first term). Closed forms (Ei, E1, ln): v_exact / v_small = (1 - beta)^p' (1 + ln(1 - beta)/u)
    lies in [(1 - beta_end)^p' (1 - eps), 1], eps = -ln(1 - beta_end) / u_end, so
    0 <= T / T_small - 1 <= 1 / ((1 - beta_end)^p' (1 - eps)) - 1. Direct's T depends on beta_0 by at
    most beta_0 / (eta (a* - logit beta_0)) (the flow time over [0, beta_0])."""
    b1, target, eta = 0.25, 0.5, 0.1
    for b0, tgt in [(1e-8, 0.5), (1e-16, 0.5), (1e-32, 0.5), (1e-64, 0.5), (1e-9, 0.3), (1e-20, 0.3)]:
        u0 = math.log(tgt / (1 - tgt) / b0)
        exact = float(theory.rkl_recovery_time(b0, b1, tgt, eta, "logit"))
        lead = float(theory.rkl_recovery_time_asymptotic(b0, b1, tgt, eta, "logit", terms=1))
        three = float(theory.rkl_recovery_time_asymptotic(b0, b1, tgt, eta, "logit", terms=3))
        assert lead == pytest.approx(1 / (eta * b0 * u0), rel=1e-12)
        assert abs(exact / lead - 1 - 1 / u0) <= 3 / u0**2
        assert abs(exact / three - 1) <= 10 / u0**3
    small_end = 0.05  # the closed forms' bound is tight for beta_end << c
    for tgt in (0.5, 0.3):  # c = 1 and c = 3/7
        eps = -math.log(1 - small_end) / math.log(tgt / (1 - tgt) / small_end)
        for weight_param, power in (("logit", 2), ("direct", 0), ("replicator", 1)):
            for b0 in (1e-6, 1e-3, 0.02):
                ratio = float(theory.rkl_recovery_time(b0, small_end, tgt, eta, weight_param)) / float(
                    theory.rkl_recovery_time_asymptotic(b0, small_end, tgt, eta, weight_param)
                )
                assert 1 - 1e-9 <= ratio <= 1 / ((1 - small_end) ** power * (1 - eps)), (tgt, weight_param, b0, ratio)
    base = float(theory.rkl_recovery_time(1e-12, b1, target, eta, "direct"))
    for b0 in (1e-6, 1e-3, 0.05):
        gap = base - float(theory.rkl_recovery_time(b0, b1, target, eta, "direct"))
        assert 0 <= gap <= b0 / (eta * math.log((1 - b0) / b0)) * (1 + 1e-9)
        series = float(theory.rkl_recovery_time_asymptotic(b0, b1, target, eta, "direct", terms=2))
        closed = float(theory.rkl_recovery_time_asymptotic(b0, b1, target, eta, "direct"))
        assert abs(series - closed) <= 2 * b0 / (eta * math.log(1 / b0) ** 3)  # next term 2! / u_0^2


def test_rkl_weight_gradient_finite_separation():
    """The finite-Delta dL_R/dbeta (identity I4 on a grid) against a central difference of the grid
    KL (an independent route; 1e-6 relative), and its gap to the separated logit beta - logit beta*
    below BC (sqrt((1-b)/b) + sqrt(b/(1-b))) summed over b in {beta, beta*} (log(1 + y) <= sqrt(y)
    on each mode), with the gap's sign: the finite-Delta pull is weaker (recovery slower)."""
    x = np.linspace(-12.0, 3.0 + 12.0, 30001)
    for beta in (1e-3, 0.1, 0.6):
        for tgt in (0.5, 0.3):
            fd = (_rkl_grid(beta + 1e-6, tgt, 3.0, x) - _rkl_grid(beta - 1e-6, tgt, 3.0, x)) / 2e-6
            assert theory.rkl_weight_gradient(beta, tgt, 3.0) == pytest.approx(fd, rel=1e-6)
    for sep in (4.0, 6.0, 8.0):
        bc = math.exp(-(sep**2) / 8)
        for beta, tgt in [(1e-4, 0.5), (1e-2, 0.5), (0.2, 0.5), (1e-3, 0.3), (0.1, 0.3)]:
            separated = math.log(beta / (1 - beta)) - math.log(tgt / (1 - tgt))
            gap = theory.rkl_weight_gradient(beta, tgt, sep) - separated
            odds = [math.sqrt((1 - b) / b) + math.sqrt(b / (1 - b)) for b in (beta, tgt)]
            assert 0 < gap <= bc * sum(odds), (sep, beta, gap)


@pytest.mark.parametrize("weight_param", PARAMS)
def test_rkl_recovery_time_at_finite_separation(weight_param):
    """T_Delta against scipy's ODE of gradient flow on the grid KL (central differences in beta,
    h = 1e-6 beta; beta 1e-3 -> 0.2, beta* = 0.4) at Delta = 5: 1e-5 relative (Simpson on 161 log-beta
    nodes ~1e-8, the ODE at rtol 1e-9, the difference quotient ~1e-9). At Delta = 12 it is the
    separated T within 1e-6 (the misassignment gap is ~1e-7 of |L'|), and at Delta = 5 slower (the
    finite-Delta pull is weaker: `test_rkl_weight_gradient_finite_separation`)."""
    b0, b1, tgt, eta, sep = 1e-3, 0.2, 0.4, 0.5, 5.0
    x = np.linspace(-12.0, sep + 12.0, 4001)

    def rhs(_, y):
        b = y[0]
        dl = (_rkl_grid(b * (1 + 1e-6), tgt, sep, x) - _rkl_grid(b * (1 - 1e-6), tgt, sep, x)) / (2e-6 * b)
        metric = {"logit": (b * (1 - b)) ** 2, "direct": 1.0, "replicator": b * (1 - b)}[weight_param]
        return [-eta * metric * dl]

    def reached(_, y):
        return y[0] - b1

    reached.terminal = True
    sol = integrate.solve_ivp(rhs, (0.0, 1e9), [b0], method="DOP853", rtol=1e-9, atol=1e-13, events=reached)
    t_delta = theory.rkl_recovery_time_finite_separation(b0, b1, tgt, eta, weight_param, sep)
    assert t_delta == pytest.approx(float(sol.t_events[0][0]), rel=1e-5)
    t_sep = float(theory.rkl_recovery_time(b0, b1, tgt, eta, weight_param))
    assert theory.rkl_recovery_time_finite_separation(b0, b1, tgt, eta, weight_param, 12.0) == pytest.approx(
        t_sep, rel=1e-6
    )
    assert t_delta > t_sep


# --- P3: starvation over K modes ------------------------------------------------------------------


def test_mode_and_replay_starvation_by_monte_carlo():
    """Monte Carlo over 1e5 batches of B = 16 labels (tolerance 5 binomial standard errors):
    ancestral labels of w miss mode k with (1 - w_k)^B; an FKL stage's p_train (task 3 with
    1 - lambda, tasks 0..2 with lambda share_j) misses task j with exactly (1 - lambda share_j)^B;
    reverse KL's replay proposal (a replay flag with probability lambda, then a label from the
    shares, else from q) misses j less often: the bound holds."""
    rng = np.random.default_rng(0)
    n, batch = 100_000, 16
    with jax.enable_x64(True):
        w = np.array([0.05, 0.15, 0.3, 0.5])
        missed = (rng.multinomial(batch, w, size=n) == 0).mean(axis=0)
        p = np.asarray(theory.mode_starvation_probability(w, batch))
        assert np.all(np.abs(missed - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-12)

        lam, shares = 0.3, np.array([0.2, 0.3, 0.5])
        bound = np.asarray(theory.replay_starvation_bound(lam, shares, batch))
        p_train = np.append(lam * shares, 1 - lam)
        missed = (rng.multinomial(batch, p_train, size=n) == 0).mean(axis=0)[:3]
        assert np.all(np.abs(missed - bound) <= 5 * np.sqrt(bound * (1 - bound) / n))

        q = np.array([0.01, 0.04, 0.15, 0.8])
        replay = rng.random((n, batch)) < lam
        labels = np.where(replay, rng.choice(3, size=(n, batch), p=shares), rng.choice(4, size=(n, batch), p=q))
        missed = np.stack([(labels != j).all(axis=1).mean() for j in range(3)])
        assert np.all(missed <= bound + 5 * np.sqrt(bound * (1 - bound) / n))
        assert np.all(missed < bound)  # strictly: q puts mass on every earlier task
        # binomial sanity of the counting itself: the per-batch hit count of task 0 under p_train
        assert stats.binom(batch, p_train[0]).pmf(0) == pytest.approx(float(bound[0]), rel=1e-12)


@pytest.mark.parametrize("target", [(0.5, 0.5), (0.3, 0.35, 0.35), (0.2, 0.8 / 3, 0.8 / 3, 0.8 / 3)])
def test_k_mode_recovery_is_the_two_mode_law_slowed_by_the_factor(target):
    """The old weight's recovery time under the K-logit flow da_k/dt = -(eta/2) w_k (g_k - sum_j w_j g_j),
    g = log(w / w*) + 1 (separated-limit RKL, integrated by solve_ivp from w_0 = 1e-3 with the other
    modes in their target ratio) is the two-mode time times rkl_k_mode_time_factor, to 1e-6. Exact
    when the new tasks' target weights are equal (the engine's target: their ratio is then kept);
    pipelines.md gives the deviation for unequal ones."""
    w_star = np.asarray(target)
    eta, b0, b1 = 0.05, 1e-3, 0.15
    w_init = np.concatenate([[b0], (1 - b0) * w_star[1:] / (1 - w_star[0])])

    def flow(_, a):
        w = np.exp(a - np.logaddexp.reduce(a))
        g = np.log(w / w_star) + 1
        return -0.5 * eta * w * (g - w @ g)

    def reached(_, a):
        return np.exp(a[0] - np.logaddexp.reduce(a)) - b1

    reached.terminal = True
    sol = integrate.solve_ivp(flow, (0, 1e7), np.log(w_init), events=reached, rtol=1e-11, atol=1e-12)
    k_mode = sol.t_events[0][0]
    two_mode = theory.rkl_recovery_time(b0, b1, w_star[0], eta, "logit")
    assert k_mode == pytest.approx(two_mode * theory.rkl_k_mode_time_factor(w_star), rel=1e-6)
