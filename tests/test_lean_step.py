"""The lean step (issue 9): noise split from arithmetic, drawn once per seed, and hand-written
gradients (docs/science/objectives.md, "Noise").

* hand-written gradients of the FKL / RKL Monte Carlo surrogates equal the autodiff of the same
  surrogate (the oracle) to float64 rounding, at random parameters and draws;
* the seed-shared loop gives every configuration the draws of its own seed: a batch whose grid
  points share seeds equals each configuration run alone (per-configuration draws) to float
  rounding, whatever else is in the batch;
* `independent_noise`: grid points with one seed get different streams, a configuration's
  stream is a function of its own seed and values;
* `seed_layout` / `noise_chunks`: when the noise is shared and how it is cut into tables.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from forget_jax import train
from forget_jax.model import LearnerParams, init_params
from forget_jax.objectives import get_objective
from forget_jax.objectives.registry import OBJECTIVES, step_key
from forget_jax.spec import Setup, make_hyper

GRADIENT_CASES = [
    (objective, weight, sampling, dim)
    for objective, samplings in (("fkl", ("ancestral", "stratified")), ("rkl", ("ancestral",)))
    for weight in ("logit", "direct", "replicator")
    for sampling in samplings
    for dim in (1, 3)
]


def _random_point(rng: np.random.Generator, setup: Setup):
    """Random parameters (both means off the target, unequal scales in d = 1) and a random target."""
    d = setup.dim
    beta = rng.uniform(0.05, 0.95)
    weight = np.log(beta / (1 - beta)) if setup.weight_param == "logit" else beta
    scales = rng.uniform(0.5, 2.0, 2) if d == 1 else np.full(2, 1.0)
    params = LearnerParams(
        weight=jnp.asarray(weight),
        old_mean=jnp.asarray(rng.normal(0.0, 1.0, d)),
        new_mean=jnp.asarray(rng.normal(3.0, 1.0, d)),
        old_scale=jnp.asarray(scales[0]),
        new_scale=jnp.asarray(scales[1]),
    )
    hyper = jax.tree.map(
        jnp.asarray,
        make_hyper(
            np.float64,
            separation=rng.uniform(1.0, 5.0),
            replay_ratio=rng.uniform(0.0, 0.4) if setup.objective == "fkl" else 0.0,
            target_old_weight=rng.uniform(0.2, 0.8),
        ),
    )
    return params, hyper


@pytest.mark.parametrize(("objective", "weight", "sampling", "dim"), GRADIENT_CASES)
def test_hand_written_gradient_equals_autodiff(objective, weight, sampling, dim):
    setup = Setup(
        objective=objective,
        estimator="pathwise",
        sampling=sampling,
        weight_param=weight,
        dim=dim,
        train_scales=dim == 1,
        batch_size=16,
        x64=True,
    )
    obj = get_objective(objective)
    hand = obj.gradient(setup) if obj.gradient is not None else None
    assert hand is not None and obj.estimate is not None and obj.draw is not None
    rng = np.random.default_rng(abs(hash((objective, weight, sampling, dim))) % 2**32)
    with jax.enable_x64(True):
        for k in range(4):
            params, hyper = _random_point(rng, setup)
            noise = obj.draw(jax.random.key(k), setup)
            oracle, oracle_est = jax.grad(obj.estimate, has_aux=True)(params, hyper, setup, noise, params)
            grads, est = hand(params, hyper, noise, params)
            for name in ("weight", "old_mean", "new_mean", "old_scale", "new_scale"):
                want, got = np.asarray(getattr(oracle, name)), np.asarray(getattr(grads, name))
                # float64 rounding of O(1) sums over 16-32 samples
                np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=f"d/d {name}")
            np.testing.assert_allclose(float(est.loss), float(oracle_est.loss), rtol=1e-12)
            assert bool(est.starved) == bool(oracle_est.starved)


def test_no_hand_written_gradient_where_autodiff_is_kept():
    fkl, rkl = get_objective("fkl"), get_objective("rkl")
    assert fkl.gradient is not None and rkl.gradient is not None
    assert fkl.gradient(Setup(objective="fkl", estimator="population")) is None
    assert fkl.gradient(Setup(objective="fkl", learner_modes=1)) is None
    assert rkl.gradient(Setup(objective="rkl", estimator="score")) is None


STEPS, LOG_EVERY = 60, 20  # three log intervals; noise tables of 20 steps


@pytest.mark.parametrize(
    "static",
    [
        dict(objective="fkl", estimator="pathwise", sampling="ancestral"),
        pytest.param(
            dict(objective="rkl", estimator="score", sampling="ancestral", optimizer="adam"),  # autodiff, replay
            marks=pytest.mark.slow,  # the loop is objective-agnostic; rkl-score's draw = its stream: below
        ),
    ],
    ids=["fkl-hand-gradient", "rkl-score-adam"],
)
def test_seed_shared_noise_equals_each_configuration_alone(static):
    setup = Setup(steps=STEPS, log_every=LOG_EVERY, batch_size=16, **static)
    # 16 grid points x 4 seeds: the noise table has 4 rows (4 <= 0.25 * 64)
    n_grid, n_seeds = 16, 4
    replay = 0.2 if static["estimator"] == "score" else 0.0
    hyper = make_hyper(
        separation=np.repeat(np.linspace(1.0, 5.0, n_grid), n_seeds),
        learning_rate=np.repeat(np.linspace(0.02, 0.2, n_grid), n_seeds),
        replay_ratio=replay,
        seed=np.tile(np.arange(n_seeds) + 11, n_grid),
    )
    table, slots = train.seed_layout(setup, hyper.seed)
    assert table is not None and slots is not None and len(table) == n_seeds
    shared = train.simulate(setup, hyper)
    # the same batch with every configuration drawing its own noise: a configuration's result
    # there is that of the configuration alone (tests/test_engine_batching.py)
    with train.precision(setup):
        own = train.compiled_batch(setup)(train._device_hyper(setup, hyper))
    for name in ("old_weight", "old_drift", "loss"):
        # float32 rounding of the same arithmetic fused differently
        np.testing.assert_allclose(shared[name], np.asarray(own[name]), rtol=2e-5, atol=2e-6, err_msg=name)


def test_independent_noise_gives_grid_points_their_own_streams():
    setup = Setup(objective="fkl", estimator="pathwise", independent_noise=True)
    common = Setup(objective="fkl", estimator="pathwise")
    hyper = make_hyper(learning_rate=[0.1, 0.2, 0.1], seed=[3, 3, 3])
    one = lambda i: jax.tree.map(lambda x: jnp.asarray(x[i]), hyper)
    data = lambda s, i: np.asarray(jax.random.key_data(train.run_key(one(i), s)))
    assert np.array_equal(data(common, 0), data(common, 1))  # common random numbers
    assert not np.array_equal(data(setup, 0), data(setup, 1))  # own stream per grid point
    assert np.array_equal(data(setup, 0), data(setup, 2))  # a function of its own values
    assert train.seed_layout(setup, hyper.seed) == (None, None)  # never shared


def test_seed_layout_shares_only_where_it_pays():
    setup = Setup(objective="fkl", estimator="pathwise")
    seeds = np.repeat([7, 3, 5], 8)  # 3 distinct seeds -> a table of 4 (power of two)
    table, slots = train.seed_layout(setup, seeds)
    assert table is not None and slots is not None
    assert len(table) == 4 and set(table) == {3, 5, 7}
    np.testing.assert_array_equal(table[slots], seeds)
    assert train.seed_layout(setup, np.arange(16)) == (None, None)  # every configuration its own seed
    assert train.seed_layout(Setup(objective="fkl", estimator="population"), seeds) == (None, None)  # no draws
    assert train.seed_layout(Setup(objective="oapl", oapl_reuse_batch=True), seeds) == (None, None)


@pytest.mark.parametrize(
    ("log_every", "seeds", "batch", "expect"),
    [
        (20, 4, 16, (20, 1, 0)),  # a whole interval in one table
        (200, 4, 64, (50, 4, 0)),  # the largest divisor <= 64
        (67, 4, 64, (64, 1, 3)),  # prime: 64-step tables and a remainder
        (1000, 4096, 512, (2, 500, 0)),  # table capped at NOISE_TABLE_ELEMENTS numbers
    ],
)
def test_noise_chunks(log_every, seeds, batch, expect):
    setup = Setup(objective="fkl", estimator="pathwise", steps=2 * log_every, log_every=log_every, batch_size=batch)
    chunk, full, rest = train.noise_chunks(setup, seeds)
    assert (chunk, full, rest) == expect
    assert chunk * full + rest == log_every
    assert seeds * chunk * batch * setup.dim <= max(train.NOISE_TABLE_ELEMENTS, seeds * batch * setup.dim)


def _ancestral_stream(key, b, d, dtype):
    """sample_ancestral's stream: (label key, noise key) = split(key); label ~ U(0, 1), eps ~ N(0, I)."""
    label_key, noise_key = jax.random.split(key)
    return dict(eps=jax.random.normal(noise_key, (b, d), dtype), label=jax.random.uniform(label_key, (b,), dtype))


def _stratified_stream(key, b, d, dtype):
    """stratified sampling: eps at the ancestral noise key: eps ~ N(0, I) from split(key)[1]."""
    return dict(eps=jax.random.normal(jax.random.split(key)[1], (b, d), dtype))


def _rkl_stream(with_replay):
    """reverse_kl's stream: (replay, label, eps) keys = split(key, 3)."""

    def stream(key, b, d, dtype):
        k_replay, k_label, k_eps = jax.random.split(key, 3)
        out = dict(eps=jax.random.normal(k_eps, (b, d), dtype), label=jax.random.uniform(k_label, (b,), dtype))
        return {**out, "replay": jax.random.uniform(k_replay, (b,), dtype)} if with_replay else out

    return stream


def _own_key_stream(key, b, d, dtype):
    """chen2025_reinforce: eps ~ N(0, I) from the step key itself (no split)."""
    return dict(eps=jax.random.normal(key, (b, d), dtype))


#: (static setup, the stream the key-based sampler of that branch draws, documented in each
#: objective's draw; hyper values a second configuration differs in).
DRAW_CASES = {
    "fkl-ancestral": (dict(objective="fkl", estimator="pathwise"), _ancestral_stream, dict(replay_ratio=0.3)),
    "rkl-score-replay": (dict(objective="rkl", estimator="score"), _rkl_stream(True), dict(replay_ratio=0.3)),
    "sdft-reverse-score": (dict(objective="sdft", estimator="score"), _rkl_stream(False), dict(teacher_anchor=0.5)),
    "sdft-forward-stratified": (
        dict(objective="sdft", estimator="score", sdft_direction="forward", sampling="stratified"),
        _stratified_stream,
        dict(sdft_is_cap=1.5),
    ),
    "ttt_discover-score": (dict(objective="ttt_discover", estimator="score"), _ancestral_stream, dict(kl_penalty=0.5)),
    "chen2025_fkl": (dict(objective="chen2025_fkl", estimator="pathwise"), _ancestral_stream, dict(replay_ratio=0.3)),
    "chen2025_rkl": (dict(objective="chen2025_rkl", estimator="score"), _own_key_stream, dict(reward_temperature=0.5)),
    "oapl-score": (dict(objective="oapl", estimator="score"), _ancestral_stream, dict(oapl_beta2=0.5)),
}


def test_every_objective_with_a_draw_has_a_draw_case():
    with_draw = {name for name, o in OBJECTIVES.items() if o.draw is not None}
    assert with_draw <= {static["objective"] for static, _, _ in DRAW_CASES.values()}


@pytest.mark.parametrize("case", list(DRAW_CASES))
def test_loss_is_the_estimate_at_the_draw_of_the_key_alone(case):
    """draw(key) is the stream the key-based sampler of the branch drew (jax.random directly,
    bitwise), and loss(theta, h, key) == estimate(theta, h, draw(key)) bitwise (surrogate and
    Estimate) for two configurations (different theta, companion and hyper values) through one
    compiled program with theta and h as arguments: the loss's draws are draw(key), read from the
    key alone."""
    static, stream, other = DRAW_CASES[case]
    setup = Setup(batch_size=8, dim=2, group_size=4, **static)
    obj = get_objective(setup.objective)
    assert obj.draw is not None and obj.estimate is not None
    estimate, loss = obj.estimate, obj.loss

    @jax.jit
    def both(params, hyper, key, companion):
        # one program: the noise passed in as data instead fuses differently (float rounding,
        # the seed-shared loop's case, test_seed_shared_noise_equals_each_configuration_alone)
        noise = obj.draw(key, setup)  # type: ignore[misc]
        return noise, loss(params, hyper, setup, key, companion), estimate(params, hyper, setup, noise, companion)

    key = jax.random.key(3)
    want = stream(key, setup.batch_size, setup.dim, setup.dtype)
    surrogates = []
    for shift, values in ((0.0, {}), (0.4, other)):
        hyper = jax.tree.map(jnp.asarray, make_hyper(separation=2.0 + shift, **values))
        params = jax.tree.map(lambda a, s=shift: a + s, init_params(hyper, setup))
        companion = jax.tree.map(lambda a, s=shift: a - 0.5 * s, params)
        noise, by_key, by_noise = both(params, hyper, key, companion)
        got = {name: leaf for name in ("eps", "label", "replay") if (leaf := getattr(noise, name)) is not None}
        assert set(got) == set(want), case
        for name, value in want.items():
            assert np.array_equal(np.asarray(got[name]), np.asarray(value)), f"{case}: {name} is not the old stream"
        for x, y in zip(jax.tree.leaves(by_key), jax.tree.leaves(by_noise), strict=True):
            assert np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True), case
        surrogates.append(float(by_key[0]))
    assert surrogates[0] != surrogates[1]  # the two configurations differ


def test_oapl_fresh_batches_share_noise_reused_batches_do_not():
    """OAPL without batch reuse keys step t by fold_in(run_key, t) (= step_key) for every lag, so
    its draws are seed-shared; with reuse the key reads the traced lag, so they are not."""
    fresh = Setup(objective="oapl", estimator="score")
    reuse = Setup(objective="oapl", estimator="score", oapl_reuse_batch=True)
    obj = get_objective("oapl")
    assert obj.seed_shared(fresh) and not obj.seed_shared(reuse)
    run = jax.random.key(5)
    for lag in (1.0, 3.0, 10.0):
        hyper = jax.tree.map(jnp.asarray, make_hyper(oapl_lag=lag))
        for t in (0, 4, 31):
            got = jax.random.key_data(obj.batch_key(run, jnp.asarray(t), hyper, fresh))
            assert np.array_equal(np.asarray(got), np.asarray(jax.random.key_data(step_key(run, t, hyper, fresh))))
    hyper = jax.tree.map(jnp.asarray, make_hyper(oapl_lag=3.0))
    k4 = jax.random.key_data(obj.batch_key(run, jnp.asarray(4), hyper, reuse))
    assert np.array_equal(np.asarray(k4), np.asarray(jax.random.key_data(step_key(run, 1, hyper, reuse))))  # 4 // 3
