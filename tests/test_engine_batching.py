"""Engine properties behind every fact of docs/science/claims.md section 6: a vmapped batch equals the same
configurations run one at a time, one compiled program serves any batch of traced values of the
same shape, float32 agrees with float64, and a diverging configuration is isolated from the rest
of its batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from forget_jax import TRACE_COUNTS, Setup, make_hyper, simulate, simulate_one
from forget_jax.metrics import METRIC_NAMES


def _row(hyper, i):
    return jax.tree.map(lambda leaf: leaf[i], hyper)


def _assert_same(a, b, rtol=1e-5, atol=1e-6):
    for name in METRIC_NAMES:
        np.testing.assert_allclose(a[name], b[name], rtol=rtol, atol=atol, equal_nan=True, err_msg=name)


def test_vmapped_batch_equals_single_runs():
    """A batch run with `simulate` (jit(vmap(train))) equals `simulate_one` (jit(train)) on each
    configuration to float rounding, for the Monte Carlo score estimator with replay (each row has
    its own key from its own seed, so its sample path does not depend on the batch). Reverse-KL
    replay and starvation (facts 9-10) and every Monte Carlo check rely on this."""
    setup = Setup(objective="rkl", estimator="score", sampling="ancestral", batch_size=16, steps=120, log_every=20)
    hyper = make_hyper(
        separation=[2.0, 4.0, 6.0, 3.0],
        learning_rate=[0.05, 0.1, 0.02, 0.05],
        seed=[0, 1, 2, 3],
        replay_ratio=[0.0, 0.3, 0.0, 0.6],
        init_old_weight=[0.5, 0.3, 0.7, 0.5],
    )
    batch = simulate(setup, hyper)
    for i in range(4):
        single = simulate_one(setup, _row(hyper, i))
        _assert_same({k: batch[k][i] for k in METRIC_NAMES}, single)
        assert bool(single["diverged"]) == bool(batch["diverged"][i])
    # the same configuration in a different batch (other companions, other order) gives the same row
    permuted = simulate(setup, jax.tree.map(lambda leaf: leaf[jnp.array([3, 2, 1, 0])], hyper))
    _assert_same({k: permuted[k][3] for k in METRIC_NAMES}, {k: batch[k][0] for k in METRIC_NAMES})


def test_one_trace_serves_every_batch_of_the_same_shape():
    """Separation, learning rate, replay ratio and seed are traced: two batches of the same shape
    with different values reuse one compiled program: forget_jax.TRACE_COUNTS counts the first trace
    and does not grow on the second batch."""
    setup = Setup(
        objective="fkl",
        estimator="pathwise",
        sampling="stratified",
        batch_size=8,
        steps=30,
        log_every=10,
        weight_param="replicator",
    )
    before = TRACE_COUNTS[setup]
    first = simulate(setup, make_hyper(separation=[2.0, 4.0, 6.0], learning_rate=[0.01, 0.02, 0.03], seed=[0, 1, 2]))
    assert TRACE_COUNTS[setup] == before + 1
    second = simulate(
        setup,
        make_hyper(
            separation=[3.0, 5.0, 7.5], learning_rate=[0.2, 0.1, 0.05], replay_ratio=[0.1, 0.2, 0.3], seed=[5, 6, 7]
        ),
    )
    assert TRACE_COUNTS[setup] == before + 1
    assert not np.allclose(first["old_weight"], second["old_weight"])


POP_HYPER = dict(
    separation=[2.0, 4.0, 6.0, 4.0],
    init_new_offset=[-1.0, 1.0, -1.0, -0.5],
    init_old_weight=[0.5, 0.3, 0.5, 0.7],
    replay_ratio=[0.0, 0.3, 0.1, 0.5],
    learning_rate=[0.05, 0.05, 0.1, 0.02],
)


def test_float32_agrees_with_float64():
    """Setup(x64=True) runs the same population program in float64 (inside a jax.enable_x64
    context, so the session's global dtype setting is not flipped); the float32 reverse-KL
    trajectories (with replay in p_train, so `kl_from_train` is non-trivial) agree with it to 1e-4
    on the parameters, 2% on the T4 drift sup and 1e-5 on KL values. (Forward KL is evaluated in
    float64 by the gradient checks of test_facts_fkl.py.)"""
    was_x64 = jax.config.jax_enable_x64
    results = {}
    for objective in ("rkl",):
        for x64 in (False, True):
            setup = Setup(objective=objective, estimator="population", steps=1000, log_every=100, x64=x64)
            with jax.enable_x64(x64):
                results[objective, x64] = simulate(setup, make_hyper(setup.dtype, **POP_HYPER))
        lo, hi = results[objective, False], results[objective, True]
        assert hi["old_weight"].dtype == np.float64 and lo["old_weight"].dtype == np.float32
        for name in ("old_weight", "old_mean_position", "new_mean_position"):
            np.testing.assert_allclose(lo[name], hi[name], atol=1e-4, err_msg=f"{objective} {name}")
        for name in ("kl_to_target", "kl_from_train"):
            np.testing.assert_allclose(lo[name], hi[name], atol=1e-5, rtol=1e-4, err_msg=f"{objective} {name}")
        np.testing.assert_allclose(lo["old_drift_max"], hi["old_drift_max"], rtol=0.02, atol=1e-6)
    assert jax.config.jax_enable_x64 == was_x64


def test_divergent_configuration_is_isolated():
    """An absurd learning rate (1e6) makes one configuration of a population reverse-KL batch blow
    up: it is flagged diverged=True while the other rows equal, to float rounding, the same batch
    with that row replaced by a sane configuration (no NaN leaks across the configuration axis)."""
    setup = Setup(objective="rkl", estimator="population", steps=1000, log_every=100)
    sane = simulate(setup, make_hyper(**POP_HYPER))
    bad_lr = list(POP_HYPER["learning_rate"])
    bad_lr[2] = 1e6
    bad = simulate(setup, make_hyper(**{**POP_HYPER, "learning_rate": bad_lr}))
    assert bad["diverged"].tolist() == [False, False, True, False]
    assert not sane["diverged"].any()
    assert not np.isfinite(bad["old_weight"][2, -1])
    keep = [0, 1, 3]
    for name in METRIC_NAMES:
        np.testing.assert_allclose(
            bad[name][keep], sane[name][keep], rtol=1e-6, atol=1e-7, equal_nan=True, err_msg=name
        )
