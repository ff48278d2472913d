"""Divergence you can trust (forget_jax.train module doc; issue 11 part 5): a blow-up, a NaN and
an inf configuration are flagged with their reason (`DIVERGENCE_REASONS`) and the step t of the
first bad state theta(t); every metric logged at a step >= that step is NaN, every metric before
it is finite; the other configurations of the batch are bitwise those of a batch without them.

The blow-up steps come from an independent NumPy recursion. Population forward KL with the
uni-modal learner q = N(m, s^2) (fixed s): L(m) = -E_{p_train}[log q] + const has the exact
gradient (m - mu_bar) / s^2 with mu_bar = E_{p_train}[x] = lambda mu_o* + (1 - lambda) mu_n*
(Gauss-Hermite is exact on a quadratic), so plain SGD is the linear recursion
m(t+1) - mu_bar = (1 - eta / s^2) (m(t) - mu_bar): for eta / s^2 > 2 it grows geometrically.
The bound it crosses is the documented one, ||m - mu_o*|| > BLOWUP_FACTOR (|Delta| s_o* +
max(s_o*, s_n*)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from forget_jax import Setup, make_hyper
from forget_jax.metrics import METRIC_NAMES
from forget_jax.train import BLOWUP_FACTOR, DIVERGENCE_REASONS, compiled_segments

SETUP = Setup(objective="fkl", estimator="population", learner_modes=1, steps=14, log_every=1)
SEPARATION = 4.0
# rows: sane, blow-up x2 (eta / s^2 = 3 and 4: factors -2, -3), NaN learning rate, NaN start,
# inf start, NaN target weight (unused by this FKL loss, so theta stays finite, but the logged old
# weight E_q[w*_o] is NaN: flagged at step 0 by the record check)
LR = [0.1, 3.0, 4.0, np.nan, 0.1, 0.1, 0.1]
OFFSET = [0.0, 0.0, 0.0, 0.0, np.nan, np.inf, 0.0]
TARGET_WEIGHT = [0.5] * 6 + [np.nan]
BAD = [1, 2, 3, 4, 5, 6]
# metrics that are finite on a healthy run (starved_fraction is NaN at step 0 by definition,
# max_importance_weight is NaN without replay weights)
FINITE_WHEN_HEALTHY = [n for n in METRIC_NAMES if n not in {"starved_fraction", "max_importance_weight"}]


def numpy_mean_path(lr: float, offset: float, steps: int) -> np.ndarray:
    """m(t) - mu_o*, t = 0..steps, by the recursion of the module doc (float64; target at mu_o* = 0,
    s_o* = s_n* = 1, lambda = 0, so mu_bar = Delta)."""
    m = [offset]
    for _ in range(steps):
        m.append(m[-1] - lr * (m[-1] - SEPARATION))
    return np.asarray(m)


def numpy_blowup_step(lr: float) -> int:
    path = numpy_mean_path(lr, 0.0, SETUP.steps)
    bound = BLOWUP_FACTOR * (SEPARATION * 1.0 + 1.0)
    (over,) = np.nonzero(np.abs(path) > bound)
    return int(over[0])


def _run(hyper):
    """The batch through the segment programs (one segment); returns (trajectory, final carry)."""
    init_b, segment_b, finish_b = compiled_segments(SETUP)
    hyper = jax.device_put(hyper)
    carry = segment_b(init_b(hyper), hyper, jnp.int32(0), jnp.int32(SETUP.num_logs))
    return {k: np.asarray(v) for k, v in finish_b(carry).items()}, carry


@pytest.fixture(scope="module")
def runs():
    batch, carry = _run(
        make_hyper(separation=SEPARATION, learning_rate=LR, init_old_offset=OFFSET, target_old_weight=TARGET_WEIGHT)
    )
    # the same batch shape with every bad row replaced by the sane configuration
    clean, _ = _run(make_hyper(separation=SEPARATION, learning_rate=[0.1] * 7, init_old_offset=[0.0] * 7))
    return batch, clean, carry


def test_reason_codes_and_steps(runs):
    batch, _, _ = runs
    reasons = [DIVERGENCE_REASONS[int(code)] for code in batch["diverged_reason"]]
    assert reasons == ["none", "blow-up", "blow-up", "nan", "nan", "inf", "nan"]
    assert batch["diverged"].tolist() == [False, True, True, True, True, True, True]
    expected_steps = [-1, numpy_blowup_step(LR[1]), numpy_blowup_step(LR[2]), 1, 0, 0, 0]
    assert expected_steps[1:3] == [11, 7]  # |4 - 4 (-2)^t| > 5000 first at t = 11, |4 - 4 (-3)^t| at t = 7
    assert batch["diverged_step"].tolist() == expected_steps
    assert batch["diverged_reason"].dtype == np.int32 and batch["diverged_step"].dtype == np.int32


def test_metrics_are_nan_from_the_divergence_on_and_finite_before(runs):
    batch, _, _ = runs
    steps = SETUP.logged_steps()
    for row in BAD:
        after = steps >= batch["diverged_step"][row]
        for name in METRIC_NAMES:
            assert np.isnan(batch[name][row, after]).all(), (row, name)
            assert np.isfinite(batch[name][row, ~after]).all() or name not in FINITE_WHEN_HEALTHY, (row, name)
    # before the blow-up the logged mean follows the NumPy recursion (float32 vs float64: the path
    # reaches ~4e3, so 1e-5 relative is a few float32 ulps per step over 10 steps)
    for row in (1, 2):
        before = steps < batch["diverged_step"][row]
        expected = numpy_mean_path(LR[row], 0.0, SETUP.steps)[before]
        np.testing.assert_allclose(batch["old_mean_position"][row, before], expected, rtol=1e-5, atol=1e-5)
        # the unguarded recursion would be finite garbage of size ~|4 (-2)^14| = 6.6e4 at the end
        assert np.isnan(batch["old_drift_max"][row, -1]) and np.isnan(batch["kl_to_target"][row, -1])


def test_other_configurations_are_bitwise_unaffected(runs):
    """ "Alone" is the same batch shape with the diverging rows replaced by the sane configuration:
    a batch of another size is not a bitwise reference even without divergence (XLA's CPU code
    for a batch of one differs from the vectorised loop by an ulp in kl_to_target at step 0)."""
    batch, clean, _ = runs
    assert not clean["diverged"].any()
    assert all(np.isfinite(clean[name]).all() for name in FINITE_WHEN_HEALTHY)
    for name in METRIC_NAMES:
        np.testing.assert_array_equal(batch[name][0], clean[name][0], err_msg=name)


def test_a_diverged_configuration_is_frozen_at_its_last_good_state(runs):
    """After the blow-up at step t the parameters stop updating: the final carry holds theta(t - 1)
    of the NumPy recursion (|m| ~ 4e3), not theta(14) (|m| ~ 6.6e4 for factor -2)."""
    batch, _, carry = runs
    final_mean = np.asarray(carry.state.params.old_mean)[:, 0]
    for row in (1, 2):
        last_good = int(batch["diverged_step"][row]) - 1
        expected = numpy_mean_path(LR[row], 0.0, SETUP.steps)[last_good]
        np.testing.assert_allclose(final_mean[row], expected, rtol=1e-5)
    assert final_mean[3] == 0.0  # NaN learning rate: bad from step 1, frozen at theta(0) (m = mu_o* = 0)
    assert final_mean[6] == 0.0  # NaN record at theta(0): frozen there
