"""Pipelines (issue 10; docs/science/pipelines.md): the K-mode engine and the stage loop.

* K = 2, one stage: the same numbers as the two-mode engine (every metric, over a grid);
* a stage boundary inside one SGD objective changes nothing (the state is carried across);
* the K-mode objectives against NumPy quadrature on a fine grid (values and finite-difference
  gradients) and the Monte Carlo estimators unbiased against that gradient;
* placements, ancestral labels, the replicator over K modes against their definitions;
* a sweep over a stage's replay ratio is one compiled program (trace counter), and the FKL
  multi-task optimum with given replay shares (P1) against the theory module.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import forget_jax as fj
from forget_jax import Setup, make_hyper, simulate, theory
from forget_jax.objectives import get_objective
from forget_jax.objectives._common import Noise
from forget_jax.pipeline import modes as mm
from forget_jax.pipeline import objectives as po
from forget_jax.pipeline.loop import precondition
from forget_jax.train import DIVERGENCE_REASONS

# --- K = 2: the two-mode engine ---------------------------------------------------------------

#: (objective, estimator, weight_param, optimizer, dim): every weight rule, both objectives, the
#: population and each Monte Carlo estimator, Adam, and d > 1 (Monte Carlo leaves the axis).
#: One case runs in CI: Monte Carlo FKL with replay (the draws, the labels, p_train), the K logits
#: at eta / 2 under Adam (whose normalisation would undo a factor on the gradient). The others (RKL
#: Monte Carlo, each weight rule, population, d = 2) are `slow`: each case compiles two programs
#: (~15 s), and their parts are checked one by one below (objectives against NumPy quadrature,
#: unbiased estimators, the replicator rule).
K2_CASES = [
    ("fkl", "pathwise", "logit", "adam", 1),
    pytest.param("fkl", "pathwise", "direct", "sgd", 1, marks=pytest.mark.slow),
    pytest.param("rkl", "pathwise", "logit", "adam", 1, marks=pytest.mark.slow),
    pytest.param("fkl", "population", "logit", "sgd", 1, marks=pytest.mark.slow),
    pytest.param("rkl", "population", "replicator", "sgd", 1, marks=pytest.mark.slow),
    pytest.param("rkl", "score", "logit", "sgd", 2, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("objective,estimator,weight_param,optimizer,dim", K2_CASES)
def test_two_modes_one_stage_is_the_two_mode_engine(objective, estimator, weight_param, optimizer, dim):
    """A one-stage K = 2 pipeline on task 1 gives every metric of the two-mode engine, at every
    logged step, over a grid of separations x replay ratios (FKL) x seeds; float64 so that
    'the same' means to rounding (1e-9 relative), not to a tolerance that could hide a wrong term."""
    base = dict(
        objective=objective,
        estimator=estimator,
        weight_param=weight_param,
        optimizer=optimizer,
        dim=dim,
        steps=60,
        log_every=20,
        batch_size=16,
        x64=True,
        samplewise_items=16,
    )
    seps, lams = [1.0, 3.0, 6.0], ([0.0, 0.2] if objective == "fkl" else [0.0])
    grid = np.array(list(itertools.product(seps, lams, [0, 1])))
    hyper = make_hyper(
        np.float64, separation=grid[:, 0], replay_ratio=grid[:, 1], seed=grid[:, 2].astype(int), learning_rate=0.1
    )
    two = simulate(Setup(**base), hyper)
    pipe = simulate(Setup(**base, stages=[dict(steps=60, task=1)]), hyper)
    compared = 0
    for name, values in two.items():
        if name == "kl_from_train" and objective == "rkl":
            continue  # a pipeline's RKL stage measures it from its own target (loop.measure)
        np.testing.assert_allclose(pipe[name], values, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=name)
        compared += np.isfinite(np.asarray(values, float)).sum()
    assert compared > 500
    w = pipe["mode_weight"]
    np.testing.assert_allclose(w[..., 0], two["old_weight"], rtol=1e-12)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-12)


def test_a_stage_boundary_inside_one_objective_changes_nothing():
    """FKL 40 + 40 steps (SGD: no optimiser state to restart) is FKL for 80 steps: the state, the
    step keys (global t) and the log grid run on across the boundary."""
    base = dict(
        objective="fkl", estimator="pathwise", steps=80, log_every=20, batch_size=8, x64=True, samplewise_items=0
    )
    hyper = make_hyper(np.float64, separation=[2.0, 5.0], replay_ratio=[0.1, 0.3], seed=[3, 4], learning_rate=0.2)
    one = simulate(Setup(**base, stages=[dict(steps=80, task=1)]), hyper)
    two = simulate(Setup(**base, stages=[dict(steps=40, task=1), dict(steps=40, task=1)]), hyper)
    for name in ("old_weight", "old_mean_position", "new_mean_position", "loss", "mode_weight"):
        np.testing.assert_allclose(two[name], one[name], rtol=1e-12, err_msg=name)


# --- the K-mode objectives against NumPy quadrature -----------------------------------------

_X = np.linspace(-25.0, 45.0, 140001)


def _np_density(w, m, s):
    comps = np.exp(-0.5 * ((_X[:, None] - m[None]) / s[None]) ** 2) / (np.sqrt(2 * np.pi) * s[None])
    return comps @ w


def _np_weights(a):
    e = np.exp(a - a.max())
    return e / e.sum()


def _np_kl(p, q):
    return np.trapezoid(np.where(p > 0, p * (np.log(np.maximum(p, 1e-300)) - np.log(q)), 0.0), _X)


def _np_objective(theta, kind, p_w, p_m, p_s):
    """KL(p || q) (fkl) or KL(q || p) (rkl) on the fine grid, theta = (logits a (K), m (K), s (K))."""
    k = len(p_w)
    a, m, s = theta[:k], theta[k : 2 * k], theta[2 * k :]
    q = _np_density(_np_weights(a), m, s)
    p = _np_density(p_w, p_m, p_s)
    return _np_kl(p, q) if kind == "fkl" else _np_kl(q, p)


def _np_gradient(theta, kind, p):
    h = 1e-5
    out = np.zeros_like(theta)
    for i in range(len(theta)):
        e = np.zeros_like(theta)
        e[i] = h
        out[i] = (_np_objective(theta + e, kind, *p) - _np_objective(theta - e, kind, *p)) / (2 * h)
    return out


THETA = np.array([0.4, -0.7, 0.2, -0.3, 4.2, 8.9, 1.1, 0.8, 1.3])  # a_0 .. a_2, m_0 .. m_2, s_0 .. s_2
TARGET = (np.array([0.2, 0.5, 0.3]), np.array([0.0, 5.0, 10.0]), np.array([1.0, 1.2, 0.9]))


def _setup(estimator: str, batch: int = 8) -> Setup:
    # order 200: Gauss-Hermite of log q (a log-sum-exp of quadratics) converges slowly; at 96 nodes
    # these KLs are 5e-6 off the grid value, at 200 within 2e-8
    return Setup(modes=3, estimator=estimator, batch_size=batch, x64=True, quadrature_order=200, train_scales=True)


def _jax_parts(setup):
    a, m, s = THETA[:3], THETA[3:6], THETA[6:]
    params = mm.ModeParams(jnp.asarray(a), jnp.asarray(m)[:, None], jnp.asarray(s))
    target = mm.Modes(*(jnp.asarray(x) for x in (TARGET[0], TARGET[1][:, None], TARGET[2])))
    frame = (jnp.ones((1, 1), jnp.float64), jnp.zeros((1,), jnp.float64))
    return params, target, frame


def _jax_gradient(grads: mm.ModeParams) -> np.ndarray:
    """Gradient in theta = (a, m, s)."""
    return np.concatenate([grads.weight, grads.means[:, 0], grads.scales])


@pytest.mark.parametrize("kind", ["fkl", "rkl"])
def test_population_objectives_match_numpy_quadrature(kind):
    """The population surrogates' values are the KLs and their gradients the KLs' gradients
    (K = 3, unequal scales, in every parameter), against a 1-D trapezoid grid in NumPy."""
    with jax.enable_x64(True):
        setup = _setup("population")
        params, target, frame = _jax_parts(setup)
        fn = po.fkl if kind == "fkl" else po.rkl

        def surrogate(p):
            return fn(mm.learner_modes(p, setup), target, setup, Noise(), frame)

        (value, (loss, _)), grads = jax.jit(jax.value_and_grad(surrogate, has_aux=True))(params)
    expected = _np_objective(THETA, kind, *TARGET)
    assert float(loss) == pytest.approx(expected, rel=1e-7, abs=1e-9)
    if kind == "fkl":
        assert float(value) == pytest.approx(expected, rel=1e-7, abs=1e-9)
    np.testing.assert_allclose(_jax_gradient(grads), _np_gradient(THETA, kind, TARGET), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind,estimator", [("fkl", "pathwise"), ("rkl", "pathwise"), ("rkl", "score")])
def test_monte_carlo_estimators_are_unbiased(kind, estimator):
    """Averaged over 400 batches of B = 256 ancestral samples (K = 3), each Monte Carlo gradient
    is the exact gradient (NumPy finite differences of the grid KL) within 5 standard errors of the
    mean estimate, component by component (the standard error from the batches themselves)."""
    with jax.enable_x64(True):
        setup = _setup(estimator, batch=256)
        params, target, frame = _jax_parts(setup)
        fn = po.fkl if kind == "fkl" else po.rkl
        draw = get_objective(kind).draw

        def one(key):
            noise = draw(key, setup)
            grads, _ = jax.grad(lambda p: fn(mm.learner_modes(p, setup), target, setup, noise, frame), has_aux=True)(
                params
            )
            return jnp.concatenate([grads.weight, grads.means[:, 0], grads.scales])

        samples = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(7), 400)))
    exact = _np_gradient(THETA, kind, TARGET)
    mean, se = samples.mean(0), samples.std(0, ddof=1) / np.sqrt(len(samples))
    assert np.all(np.abs(mean - exact) <= 5 * se + 1e-6), (mean, exact, se)


# --- placements, labels, the replicator --------------------------------------------------------


@pytest.mark.parametrize("k,d", [(3, 2), (4, 3), (5, 6)])
def test_simplex_placement_is_a_regular_simplex_of_unit_edge(k, d):
    u = mm.unit_positions(Setup(modes=k, dim=d, mode_placement="simplex"))
    distances = np.linalg.norm(u[:, None] - u[None], axis=-1)
    np.testing.assert_allclose(distances[~np.eye(k, dtype=bool)], 1.0, atol=1e-12)
    np.testing.assert_allclose(u[0], 0.0)
    np.testing.assert_allclose(u[1], np.eye(d)[0], atol=1e-12)  # mode 1 along e_1, as on the axis
    assert mm.frame(Setup(modes=k, dim=d, mode_placement="simplex")).shape == (d, k - 1)


def test_axis_and_explicit_placements():
    np.testing.assert_allclose(mm.unit_positions(Setup(modes=4))[:, 0], [0, 1, 2, 3])
    explicit = Setup(modes=3, dim=2, mode_placement="explicit", mode_positions=[[0, 0], [3, 0], [0, 4]])
    np.testing.assert_allclose(mm.unit_positions(explicit), [[0, 0], [3, 0], [0, 4]])
    assert mm.frame(explicit).shape == (2, 2)


def test_ancestral_labels_follow_the_weights():
    """z = labels_at(w, u) with u ~ U(0, 1) is Cat(w): frequencies within 5 binomial standard errors."""
    w = jnp.asarray([0.1, 0.6, 0.05, 0.25])
    n = 200_000
    z = np.asarray(po.labels_at(w, jax.random.uniform(jax.random.key(0), (n,))))
    freq = np.bincount(z, minlength=4) / n
    se = np.sqrt(np.asarray(w) * (1 - np.asarray(w)) / n)
    assert np.all(np.abs(freq - np.asarray(w)) <= 5 * se), freq


def test_replicator_over_k_modes_is_the_full_weight_replicator():
    """precondition's free-weight direction equals the replicator in the full weights,
    dw_k = w_k (g_k - sum_j w_j g_j) with g = dL/dw, mapped to the free coordinates (the last weight
    is 1 - sum): compare for a random L and w."""
    rng = np.random.default_rng(1)
    w = rng.dirichlet(np.ones(4))
    g_full = rng.normal(size=4)
    free_grad = g_full[:-1] - g_full[-1]  # chain rule through w_{K-1} = 1 - sum
    expected = (w * (g_full - w @ g_full))[:-1]
    setup = Setup(modes=4, weight_param="replicator")
    params = mm.ModeParams(jnp.asarray(w[:-1]), jnp.zeros((4, 1)), jnp.ones(4))
    grads = mm.ModeParams(jnp.asarray(free_grad), jnp.zeros((4, 1)), jnp.zeros(4))
    with jax.enable_x64(True):
        got = np.asarray(precondition(grads, params, setup).weight)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


# --- sweeps ---------------------------------------------------------------------------------------

THREE_TASKS = {
    "name": "three_tasks_test",
    "modes": 3,
    "separation": 10.0,
    "estimator": "population",
    "learning_rate": 0.5,
    "log_every": 100,
    "init_new_offset": 0.0,
    "stages": [
        {"objective": "fkl", "task": 1, "steps": 300},
        {"objective": "fkl", "task": 2, "steps": 1500, "replay_shares": [0.75, 0.25]},
    ],
    "grid": {"stages.1.replay_ratio": [0.0, 0.2, 0.4]},
}


def test_stage_replay_sweep_is_one_program_and_reaches_the_multi_task_optimum():
    """Three values of stage 1's replay ratio x 2 seeds run as one compiled program (the trace
    counter of the pipeline's Setup moves by one), and the final weights are P1's separated-limit
    optimum (1 - lambda on task 2, lambda x shares on tasks 0 and 1; theory.fkl_stage_weights)
    within 1e-3 for lambda > 0 (Delta = 10: overlap terms ~ exp(-Delta^2/8) are negligible). At
    lambda = 0 the earlier weights decay like T1's ~1/(eta t) under logit GD, 1.3e-3 after
    t = 1500 steps at eta = 0.5: each must be below 2 / (eta t), the task weight above 1 - 4 / (eta t)."""
    from forget_jax.config import load_config
    from forget_jax.train import TRACE_COUNTS

    config = {**THREE_TASKS, "seeds": 2}
    setup = load_config(config).base.setup()
    before = TRACE_COUNTS[setup]
    ds = fj.sweep(config, progress=False)
    assert TRACE_COUNTS[setup] - before == 1
    final = ds["mode_weight"].isel(step=-1, seed=0).values  # (lambda, mode)
    for lam, weights in zip([0.2, 0.4], final[1:], strict=True):
        expected = theory.fkl_stage_weights(3, 2, lam, (0, 1), (0.75, 0.25))
        np.testing.assert_allclose(weights, expected, atol=1e-3, err_msg=f"lambda={lam}")
    bound = 2 / (0.5 * 1500)
    assert np.all(final[0, :2] < bound) and final[0, 2] > 1 - 2 * bound, final[0]
    np.testing.assert_array_equal(ds["mode_weight"].isel(seed=0).values, ds["mode_weight"].isel(seed=1).values)


def test_a_diverging_stage_freezes_its_configuration_only():
    """A huge learning rate in stage 1 of one configuration (Adam off, SGD on the means: the
    means leave the target's region) diverges that configuration at a step inside stage 1
    (train.DIVERGENCE_REASONS, from then on NaN), and leaves the other, run in the same batch,
    exactly as when it runs alone."""
    setup = Setup(
        modes=3,
        estimator="population",
        steps=60,
        log_every=10,
        stages=[dict(steps=30, task=1), dict(steps=30, task=2)],
        samplewise_items=0,
    )
    values = dict(separation=6.0, learning_rate=0.1)
    both = make_hyper(np.float32, **values, **{"stages.1.learning_rate": np.array([0.1, 1e5])}, seed=[0, 0])
    alone = make_hyper(np.float32, **values, **{"stages.1.learning_rate": np.array([0.1])}, seed=[0])
    out, ref = simulate(setup, both), simulate(setup, alone)
    assert not out["diverged"][0] and out["diverged"][1]
    # its first stage-1 update (step 31) throws the means ~1e5 x O(1) gradient away, past the
    # blow-up bound 1e3 L (L = 2 Delta + 1 = 13): caught at that step, not at the next log point
    assert out["diverged_step"][1] == 31 and DIVERGENCE_REASONS[out["diverged_reason"][1]] == "blow-up"
    logged = setup.logged_steps()
    assert np.all(np.isnan(out["old_weight"][1, logged >= out["diverged_step"][1]]))
    assert np.all(np.isfinite(out["old_weight"][1, logged <= 30]))
    for name in ("old_weight", "mode_weight", "mode_mean_position", "loss"):
        np.testing.assert_array_equal(out[name][0], ref[name][0], err_msg=name)
