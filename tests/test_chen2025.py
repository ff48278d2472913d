"""The CRNC25 toy (Chen, Razin, Narasimhan, Chen 2025; docs/science/studies.md sections 4-5, docs/science/claims.md fact 11).

An independent plain-NumPy reference of their `fit_forward_kl` / `fit_reinforce` update equations
(docs/science/studies.md section 5, with every +1e-12 of their code) is run for several seeds and compared with
the forget-jax `chen2025` preset run for 32 seeds in one vmapped `simulate` call.

Also checked: the initial overlaps, and the statement in docs/science/studies.md on the expected update direction of
the surrogate REINFORCE estimator. That statement holds for the new group (mu_2, s_2) and in exact
expectation without the +1e-12 terms, but not for the old group (pi_1, mu_1, s_1) as the code
runs: see the `test_rkl_*` tests below.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from forget_jax import init_params, simulate
from forget_jax.objectives import OBJECTIVES
from forget_jax.presets import CHEN2025, chen2025_setup_and_hyper

# --- CRNC25 TwoModeSetting, transcribed from docs/science/studies.md section 5 (independently of the preset) ---
X_GRID = np.linspace(-8.0, 8.0, 500)
TARGET = ((0.75, -3.0, 1.0), (0.25, 3.5, 0.7))  # (weight, mean, std) of p's old / new component
THETA0 = (0.75, -3.5, 1.0, 0.5, 0.7)  # (pi1, mu1, s1, mu2, s2) of the initial learner q
ITERS, SAMPLES, SLOW, TEMPERATURE, TINY = 200, 1000, 0.005, 0.1, 1e-12
RUNS = (("chen2025_fkl", 0.15), ("chen2025_fkl", 0.01), ("chen2025_rkl", 0.01))
ENGINE_SEEDS, REFERENCE_SEEDS = 32, 32
LOG_2PI = math.log(2.0 * math.pi)


def normal_pdf(x, mean, std):
    return np.exp(-0.5 * ((x - mean) / std) ** 2) / (std * math.sqrt(2.0 * math.pi))


def log_normal_pdf(x, mean, std):
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * LOG_2PI


def overlaps(theta, target=TARGET, grid=X_GRID):
    """CRNC25 accuracies: int min(p_k^w, q_k^w) / int p_k^w of the weighted components, trapezoid."""
    pi1, mu1, s1, mu2, s2 = theta
    (w1, m1, t1), (w2, m2, t2) = target
    p1, p2 = w1 * normal_pdf(grid, m1, t1), w2 * normal_pdf(grid, m2, t2)
    q1, q2 = pi1 * normal_pdf(grid, mu1, s1), (1 - pi1) * normal_pdf(grid, mu2, s2)
    return (
        np.trapezoid(np.minimum(p1, q1), grid) / np.trapezoid(p1, grid),
        np.trapezoid(np.minimum(p2, q2), grid) / np.trapezoid(p2, grid),
    )


def mixture_scores(x, theta):
    """Per-sample d log q / d(pi1, mu1, s1, mu2, s2) with their floored q + 1e-12, and q2."""
    pi1, mu1, s1, mu2, s2 = theta
    n1, n2 = normal_pdf(x, mu1, s1), normal_pdf(x, mu2, s2)
    q1, q2 = pi1 * n1, (1 - pi1) * n2
    qx = q1 + q2 + TINY
    r1, r2 = q1 / qx, q2 / qx
    score = np.stack(
        [
            (n1 - n2) / qx,
            r1 * (x - mu1) / s1**2,
            r1 * (-1 / s1 + (x - mu1) ** 2 / s1**3),
            r2 * (x - mu2) / s2**2,
            r2 * (-1 / s2 + (x - mu2) ** 2 / s2**3),
        ]
    )
    return score, qx, q2


def reinforce_direction(x, theta, reward_shift=0.0):
    """Per-sample ascent direction R iw grad log q of `fit_reinforce` (section 5, steps 2-4);
    `reward_shift` is added to R (e.g. log tau + log(1 - pi1) to remove its constants)."""
    score, qx, q2 = mixture_scores(x, theta)
    reward = np.log(normal_pdf(x, TARGET[1][1], TARGET[1][2]) / q2 / TEMPERATURE + TINY) + reward_shift
    return reward * (qx / (q2 + TINY)) * score


def reference_run(objective, learning_rate, rng, drop_constants=False):
    """NumPy CRNC25: 200 SGD iterations of 1000 samples; returns (201, 5) parameter history."""
    theta = np.array(THETA0, dtype=np.float64)
    rates = learning_rate * np.array([SLOW, SLOW, SLOW, 1.0, 1.0])
    history = [theta.copy()]
    for _ in range(ITERS):
        if objective == "chen2025_fkl":  # x ~ target new component; ascent on mean log(q + 1e-12)
            x = rng.normal(TARGET[1][1], TARGET[1][2], SAMPLES)
            direction = mixture_scores(x, theta)[0].mean(axis=1)
        else:  # x ~ learner new component; ascent on mean(R iw score)
            x = rng.normal(theta[3], theta[4], SAMPLES)
            shift = math.log(TEMPERATURE) + math.log(1 - theta[0]) if drop_constants else 0.0
            direction = reinforce_direction(x, theta, shift).mean(axis=1)
        theta = theta + rates * direction
        theta[0] = np.clip(theta[0], 1e-3, 1 - 1e-3)
        theta[2], theta[4] = max(theta[2], 1e-3), max(theta[4], 1e-3)
        history.append(theta.copy())
    return np.array(history)


@pytest.fixture(scope="module")
def engine_runs():
    """The preset, 32 seeds per run; the two FKL learning rates share one compiled program."""
    out = {}
    fkl = [chen2025_setup_and_hyper("chen2025_fkl", lr, seeds=range(ENGINE_SEEDS)) for lr in (0.15, 0.01)]
    hyper = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), fkl[0][1], fkl[1][1])
    both = simulate(fkl[0][0], hyper)
    for i, lr in enumerate((0.15, 0.01)):
        out[("chen2025_fkl", lr)] = {k: v[i * ENGINE_SEEDS : (i + 1) * ENGINE_SEEDS] for k, v in both.items()}
    out[("chen2025_rkl", 0.01)] = simulate(*chen2025_setup_and_hyper("chen2025_rkl", 0.01, seeds=range(ENGINE_SEEDS)))
    return out


@pytest.fixture(scope="module")
def reference_runs():
    out = {}
    for j, (objective, lr) in enumerate(RUNS):
        hist = np.array([reference_run(objective, lr, np.random.default_rng([j, s])) for s in range(REFERENCE_SEEDS)])
        ov = np.array([[overlaps(theta) for theta in h] for h in hist])
        out[(objective, lr)] = dict(old_weight=hist[..., 0], old_overlap=ov[..., 0], new_overlap=ov[..., 1])
    return out


def test_preset_is_the_crnc25_setting():
    setup, hyper = chen2025_setup_and_hyper("chen2025_fkl", seeds=(3, 4))
    assert (setup.batch_size, setup.steps, setup.log_every, setup.dim) == (SAMPLES, ITERS, 1, 1)
    assert (setup.weight_param, setup.optimizer, setup.sampling) == ("direct", "sgd", "ancestral")
    assert setup.train_scales and setup.train_weight and setup.train_old_mean and setup.train_new_mean
    assert setup.overlap_grid == (-8.0, 8.0, 500) and setup.weight_clip == 1e-3 and setup.scale_min == 1e-3
    one = jax.tree.map(lambda a: a[0], hyper)
    params = init_params(one, setup)
    theta = (params.weight, params.old_mean[0], params.old_scale, params.new_mean[0], params.new_scale)
    np.testing.assert_allclose(np.array(theta, dtype=float), THETA0, atol=1e-6)
    assert float(one.learning_rate) == pytest.approx(0.15) and float(one.old_lr_scale) == pytest.approx(SLOW)
    assert float(one.reward_temperature) == pytest.approx(TEMPERATURE) and float(one.replay_ratio) == 0.0
    assert float(one.target_old_mean) == -3.0 and float(one.target_old_mean + one.separation) == pytest.approx(3.5)
    assert list(np.asarray(hyper.seed)) == [3, 4]
    assert CHEN2025["learning_rates"] == {"chen2025_fkl": 0.15, "chen2025_rkl": 0.01}
    _, rkl = chen2025_setup_and_hyper("chen2025_rkl")
    assert float(rkl.learning_rate[0]) == pytest.approx(0.01)
    # sweep.py positions: the target new mode moves, the learner's new mode stays at 0.5
    for position in (4.5, 5.5, 6.5):
        s, h = chen2025_setup_and_hyper("chen2025_rkl", new_mode_position=position)
        h1 = jax.tree.map(lambda a: a[0], h)
        p = init_params(h1, s)
        assert float(h1.target_old_mean + h1.separation * h1.target_old_scale) == pytest.approx(position)
        assert float(p.new_mean[0]) == pytest.approx(0.5, abs=1e-6)
        assert float(p.old_mean[0]) == pytest.approx(-3.5, abs=1e-6)
    with pytest.raises(ValueError):
        chen2025_setup_and_hyper("fkl")


def test_initial_overlaps(engine_runs):
    """Step 0: equal weights and scales give the closed form 2 Phi(-|m - m*| / (2 s)); the trapezoid
    on CRNC25's 500-point grid is within its discretisation error of it; the engine equals it."""
    closed = [2 * 0.5 * math.erfc(0.25 / math.sqrt(2)), 2 * 0.5 * math.erfc((3.0 / 1.4) / math.sqrt(2))]
    trapezoid = overlaps(THETA0)
    np.testing.assert_allclose(closed, [0.8025873, 0.0321250], atol=1e-6)
    np.testing.assert_allclose(trapezoid, closed, atol=5e-4)
    np.testing.assert_allclose(trapezoid, [0.80259185, 0.03213492], atol=1e-7)
    for run in engine_runs.values():
        np.testing.assert_allclose(run["old_overlap"][:, 0], trapezoid[0], atol=2e-6)
        np.testing.assert_allclose(run["new_overlap"][:, 0], trapezoid[1], atol=2e-6)
        np.testing.assert_allclose(run["old_weight"][:, 0], 0.75, atol=1e-7)


@pytest.mark.parametrize("objective, lr", RUNS, ids=[f"{o}-lr{lr}" for o, lr in RUNS])
def test_engine_follows_crnc25_reference(engine_runs, reference_runs, objective, lr):
    """Fact 11: per-step mean curves agree within 4 Monte Carlo standard errors + 2e-4 (float32)."""
    engine, reference = engine_runs[(objective, lr)], reference_runs[(objective, lr)]
    assert not engine["diverged"].any()
    report = []
    for name in ("old_overlap", "new_overlap", "old_weight"):
        a, b = np.asarray(engine[name], np.float64), reference[name]
        assert a.shape == b.shape == (ENGINE_SEEDS, ITERS + 1)
        diff = a.mean(0) - b.mean(0)
        se = np.sqrt(a.var(0, ddof=1) / len(a) + b.var(0, ddof=1) / len(b))
        ratio = np.abs(diff) / (4 * se + 2e-4)
        report.append(
            f"{name}: final {a[:, -1].mean():.4f} vs {b[:, -1].mean():.4f}, worst |d|/(4se+2e-4) "
            f"{ratio.max():.2f} at step {ratio.argmax()}"
        )
        assert ratio.max() < 1.0, report[-1]
    print(f"\n{objective} lr={lr}: " + "; ".join(report))


# --- single-step expectations -----------------------------------------------------------------


def engine_gradients(objective, theta, keys, batch_size=SAMPLES):
    """Descent gradients (pi1, mu1, s1, mu2, s2) of the engine's estimator at theta, one per key."""
    setup, hyper = chen2025_setup_and_hyper(objective)
    setup = setup.replace(batch_size=batch_size)
    one = jax.tree.map(lambda a: a[0], hyper)
    base = init_params(one, setup)
    params = type(base)(
        weight=jnp.asarray(theta[0], base.weight.dtype),
        old_mean=jnp.full_like(base.old_mean, theta[1]),
        old_scale=jnp.asarray(theta[2], base.old_scale.dtype),
        new_mean=jnp.full_like(base.new_mean, theta[3]),
        new_scale=jnp.asarray(theta[4], base.new_scale.dtype),
    )
    grad = jax.grad(OBJECTIVES[objective].loss, has_aux=True)

    def one_key(key):
        g, _ = grad(params, one, setup, key)
        return jnp.stack([g.weight, g.old_mean[0], g.old_scale, g.new_mean[0], g.new_scale])

    return np.asarray(jax.jit(jax.vmap(one_key))(keys), np.float64)


def grad_q(x, theta):
    """grad_theta q(x) in (pi1, mu1, s1, mu2, s2) order (never divided by a density)."""
    pi1, mu1, s1, mu2, s2 = theta
    n1, n2 = normal_pdf(x, mu1, s1), normal_pdf(x, mu2, s2)
    return np.stack(
        [
            n1 - n2,
            pi1 * n1 * (x - mu1) / s1**2,
            pi1 * n1 * (-1 / s1 + (x - mu1) ** 2 / s1**3),
            (1 - pi1) * n2 * (x - mu2) / s2**2,
            (1 - pi1) * n2 * (-1 / s2 + (x - mu2) ** 2 / s2**3),
        ]
    )


def rkl_expectations(theta, lo=-40.0, hi=40.0, n=400_001):
    """Quadrature of the surrogate-REINFORCE ascent direction at theta (docs/science/studies.md section 5):
    claim = (1/(1-pi1)) E_q[(log N(x;3.5,.7) - log N(x;mu2,s2)) grad log q];
    floored = the same with R = log(p2/q2/tau + 1e-12) (the engine's expectation);
    theirs = E_{N(mu2,s2)}[R (q + 1e-12)/(q2 + 1e-12) grad q/(q + 1e-12)] (their code's);
    zero = E_q[grad log q] (what the constants -log tau - log(1-pi1) multiply)."""
    pi1, _, _, mu2, s2 = theta
    x = np.linspace(lo, hi, n)
    gq = grad_q(x, theta)
    log_p2, log_n2 = log_normal_pdf(x, TARGET[1][1], TARGET[1][2]), log_normal_pdf(x, mu2, s2)
    log_q2 = math.log(1 - pi1) + log_n2
    reward = np.logaddexp(log_p2 - log_q2 - math.log(TEMPERATURE), math.log(TINY))
    capped = np.exp(log_q2 - np.logaddexp(log_q2, math.log(TINY)))  # q2 / (q2 + 1e-12)
    return dict(
        claim=np.trapezoid((log_p2 - log_n2) * gq, x, axis=1) / (1 - pi1),
        floored=np.trapezoid(reward * gq, x, axis=1) / (1 - pi1),
        theirs=np.trapezoid(reward * gq * capped, x, axis=1) / (1 - pi1),
        zero=np.trapezoid(gq, x, axis=1),
    )


def test_fkl_single_step_keeps_their_density_floor():
    """chen2025_fkl's expected gradient is E_{p2}[grad q / (q + 1e-12)] (their fit_forward_kl), not
    E_{p2}[grad log q]: at theta0, q < 1e-12 on the upper tail of the target samples, and the floor
    shrinks the mu2 step by ~0.5% (about 20 standard errors of 1e6 samples)."""
    x = np.linspace(3.5 - 12 * 0.7, 3.5 + 12 * 0.7, 200_001)
    weight = normal_pdf(x, 3.5, 0.7)
    log_q = np.logaddexp(math.log(0.75) + log_normal_pdf(x, -3.5, 1.0), math.log(0.25) + log_normal_pdf(x, 0.5, 0.7))
    gq = grad_q(x, THETA0)
    floored = np.trapezoid(weight * gq / np.exp(np.logaddexp(log_q, math.log(TINY))), x, axis=1)
    plain = np.trapezoid(weight * gq / np.exp(log_q), x, axis=1)
    assert plain[3] == pytest.approx(3.0 / 0.49, rel=1e-6)  # all samples belong to the new component
    g = -engine_gradients("chen2025_fkl", THETA0, jax.random.split(jax.random.key(7), 1000))
    mean, se = g.mean(0), g.std(0, ddof=1) / math.sqrt(len(g))
    assert np.all(np.abs(mean - floored) < 5 * se + 1e-4), (mean, floored, se)
    assert abs(mean[3] - plain[3]) > 10 * se[3], (mean[3], plain[3], se[3])


def test_rkl_constants_vanish_only_in_exact_expectation():
    """E_q[grad log q] = 0, so the constants drop out of the exact expectation, and the claimed
    direction at theta0 has the closed form of a linear log-ratio (log p2 - log N2 = (6x - 12)/.98)."""
    e = rkl_expectations(THETA0)
    np.testing.assert_allclose(e["zero"], 0.0, atol=1e-10)
    a = 6 / 0.98  # (log p2 - log N2)(x) = a x - 12/.98 at mu2 = .5, s2 = .7
    closed = (
        np.array(
            [
                a * (-3.5 - 0.5),  # int (a x + b)(N1 - N2) = a (mu1 - mu2)
                0.75 * a,  # int (a x + b) pi1 N1 (x - mu1) / s1^2 = pi1 a
                0.0,
                0.25 * a,
                0.0,  # odd/even moments vanish for the scales
            ]
        )
        / 0.25
    )
    np.testing.assert_allclose(e["claim"], closed, atol=1e-8)


def test_rkl_new_group_expectation_reproduced():
    """For (mu2, s2) iw * (1 - r1) = 1, so the estimator is R * d log N2 (finite variance) and
    the direction in docs/science/studies.md holds: quadrature (claim, engine's, theirs) agree, and 1e6-sample NumPy
    and engine estimates match within 5 standard errors."""
    e = rkl_expectations(THETA0)
    for key in ("floored", "theirs"):
        np.testing.assert_allclose(e[key][3:], e["claim"][3:], rtol=1e-5, atol=1e-4)
    rng = np.random.default_rng(11)
    x = rng.normal(0.5, 0.7, 1_000_000)
    per_sample = reinforce_direction(x, THETA0)[3:]
    mean, se = per_sample.mean(1), per_sample.std(1) / 1000.0
    assert np.all(np.abs(mean - e["claim"][3:]) < 5 * se), (mean, e["claim"][3:], se)
    g = -engine_gradients("chen2025_rkl", THETA0, jax.random.split(jax.random.key(3), 1000))[:, 3:]
    mean, se = g.mean(0), g.std(0, ddof=1) / math.sqrt(len(g))
    assert np.all(np.abs(mean - e["claim"][3:]) < 5 * se), (mean, e["claim"][3:], se)


def test_rkl_old_group_expectation_not_reproduced():
    """docs/science/studies.md section 5's expected direction does NOT describe the old group (pi1, mu1, s1):
    * the +1e-12 reward floor (their code and the engine) changes the exact expectation, because it
      lives in the old mode (x < -3.1 where p2/q2/tau < 1e-12), and their +1e-12 in the iw
      denominator changes it again: at theta0 pi1: claim -97.96, floored -82.38, theirs -64.80;
    * s2^2 = .49 < s1^2/2 = .5, so E_{N2}[iw^2] = infinity (N1^2/N2 grows like exp(+.0204 x^2)):
      the old-group estimator has infinite variance and its typical value is not its mean: the
      median 1000-sample pi1 direction is about +17 (pi1 up) for both NumPy and the engine."""
    e = rkl_expectations(THETA0)
    np.testing.assert_allclose(e["claim"][:3], [-97.959, 18.367, 0.0], atol=1e-3)
    np.testing.assert_allclose(e["floored"][:3], [-82.380, 6.541, 6.569], atol=1e-3)
    np.testing.assert_allclose(e["theirs"][:3], [-64.796, -13.238, 26.013], atol=1e-3)
    # infinite second moment of iw: log int_{-L}^{L} N1^2 / N2 keeps growing with L
    log_second = []
    for half_width in (20.0, 40.0, 80.0):
        x = np.linspace(-half_width, half_width, 200_001)
        log_integrand = 2 * log_normal_pdf(x, -3.5, 1.0) - log_normal_pdf(x, 0.5, 0.7)
        log_second.append(np.log(np.trapezoid(np.exp(log_integrand - log_integrand.max()), x)) + log_integrand.max())
    assert log_second[0] < log_second[1] - 5 < log_second[2] - 20
    # typical vs expected: medians of 1000-sample batches
    rng = np.random.default_rng(5)
    numpy_batches = np.array(
        [reinforce_direction(rng.normal(0.5, 0.7, SAMPLES), THETA0)[0].mean() for _ in range(2000)]
    )
    engine_batches = -engine_gradients("chen2025_rkl", THETA0, jax.random.split(jax.random.key(5), 2000))[:, 0]
    numpy_median, engine_median = np.median(numpy_batches), np.median(engine_batches)
    assert 12.0 < numpy_median < 23.0 and 12.0 < engine_median < 23.0, (numpy_median, engine_median)
    assert abs(numpy_median - engine_median) < 2.0


def test_rkl_constants_drive_the_old_weight_down():
    """Once mu2 = 3.5, s2 = .7 (new mode learned, p2 = N2), the claimed direction and the engine's
    exact expectation are 0, yet every batch moves pi1 by -c / (1 - pi1), c = -log .1 - log .25:
    the 'constants that only add variance' are what forgets (their exact expectation, with the
    iw floor, is -14.38). Removing them from the NumPy reference flips the drift of pi1."""
    theta = (0.75, -3.5, 1.0, 3.5, 0.7)
    e = rkl_expectations(theta)
    np.testing.assert_allclose(e["claim"], 0.0, atol=1e-9)
    np.testing.assert_allclose(e["floored"], 0.0, atol=1e-9)
    assert e["theirs"][0] == pytest.approx(-14.383, abs=1e-3)
    c = -math.log(TEMPERATURE) - math.log(0.25)
    engine_batches = -engine_gradients("chen2025_rkl", theta, jax.random.split(jax.random.key(9), 64))[:, 0]
    np.testing.assert_allclose(engine_batches, -c / 0.25, rtol=0.02)
    rng = np.random.default_rng(9)
    numpy_batches = [reinforce_direction(rng.normal(3.5, 0.7, SAMPLES), theta)[0].mean() for _ in range(64)]
    np.testing.assert_allclose(numpy_batches, -c / 0.25, rtol=0.02)
    finals = {
        drop: np.median(
            [reference_run("chen2025_rkl", 0.01, np.random.default_rng([4, s]), drop)[-1, 0] for s in range(12)]
        )
        for drop in (False, True)
    }
    assert finals[False] < 0.70 < 0.74 < finals[True], finals
