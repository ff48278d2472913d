"""A run cut into segments over log points equals the run straight through, bit for bit
(forget_jax.train.make_segments / compiled_segments; issue 11 part 1).

For several objectives (population FKL with sample-wise items, Monte Carlo score RKL with
ancestral sampling and replay, OAPL with its lagged companion and batch reuse, TTT-Discover,
SDFT with its EMA teacher, float64 RKL with Adam) the batch runs as one segment over
[0, num_logs) and again under several splits, the carry travelling to the host (NumPy copies)
and back between segments, as the sweep runner's checkpoints do. The final trajectories must be
bitwise equal (NaN where NaN): the same compiled program runs the same log points in the same
order from the same carry, and the PRNG key of step t is rebuilt from the seed in every segment.
The sample-wise metrics (whose theta(0) reference travels in the carry) are on in the first case
only: they cost compile time, not coverage, elsewhere.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from forget_jax import TRACE_COUNTS, Setup, make_hyper
from forget_jax.metrics import METRIC_NAMES
from forget_jax.train import PER_CONFIG_OUTPUTS, compiled_segments, precision

STEPS, LOG_EVERY = 12, 3  # num_logs = 5
SPLITS = ([0, 1, 3, 5], [0, 2, 2, 5], [0, 1, 2, 3, 4, 5])  # [0, 2, 2, 5]: an empty segment in between

CASES = {
    "fkl-population-items": (
        dict(objective="fkl", estimator="population", samplewise_items=8),
        dict(separation=[2.0, 4.0, 6.0], replay_ratio=[0.0, 0.2, 0.5], learning_rate=[0.05, 0.1, 0.02]),
    ),
    "rkl-score-ancestral": (
        dict(objective="rkl", estimator="score", sampling="ancestral", batch_size=16, samplewise_items=0),
        dict(separation=[2.0, 4.0, 3.0, 5.0], replay_ratio=[0.0, 0.3, 0.6, 0.1], seed=[0, 1, 2, 3]),
    ),
    "oapl-score-reuse": (
        dict(
            objective="oapl",
            estimator="score",
            reward="linear",
            batch_size=16,
            oapl_reuse_batch=True,
            samplewise_items=0,
        ),
        dict(separation=[2.0, 4.0, 3.0], oapl_lag=[2.0, 4.0, 5.0], seed=[4, 5, 6]),
    ),
    "ttt_discover-score": (
        dict(objective="ttt_discover", estimator="score", batch_size=16, group_size=8, samplewise_items=0),
        dict(separation=[2.0, 4.0, 3.0], seed=[7, 8, 9]),
    ),
    "sdft-population-x64-adam": (
        dict(objective="sdft", estimator="population", optimizer="adam", x64=True, samplewise_items=0),
        dict(separation=[2.0, 4.0, 6.0], teacher_ema=[0.05, 0.2, 0.5], learning_rate=[0.01, 0.05, 0.02]),
    ),
}


def _round_trip(carry):
    """The carry to the host (NumPy copies, as a checkpoint) and back onto the device."""
    leaves, treedef = jax.tree.flatten(carry)
    saved = [np.array(leaf) for leaf in leaves]
    return jax.tree.unflatten(treedef, [jax.device_put(leaf) for leaf in saved])


def _run(setup, hyper, segment, bounds):
    """Init, the segments [bounds[i], bounds[i + 1]) with a host round trip after each, finish;
    checks after each segment that exactly the log points run so far are filled in."""
    init_b, _, finish_b = compiled_segments(setup)
    carry = init_b(hyper)
    for start, stop in itertools.pairwise(bounds):
        carry = _round_trip(segment(carry, hyper, jnp.int32(start), jnp.int32(stop)))
        partial = np.asarray(finish_b(carry)["old_weight"])
        assert np.isfinite(partial[:, :stop]).all() and np.isnan(partial[:, stop:]).all()
    return {k: np.asarray(v) for k, v in finish_b(carry).items()}


@pytest.mark.parametrize("case", list(CASES))
def test_any_split_into_segments_is_bitwise_equal_to_one_segment(case):
    static, traced = CASES[case]
    setup = Setup(steps=STEPS, log_every=LOG_EVERY, **static)
    assert setup.num_logs == 5
    with precision(setup):
        hyper = jax.device_put(make_hyper(setup.dtype, **traced))
        traces = TRACE_COUNTS[setup]
        init_b, segment_b, _ = compiled_segments(setup)
        # ahead-of-time, as the sweep runner compiles it: one program for every (start, stop)
        segment = segment_b.lower(init_b(hyper), hyper, jnp.int32(0), jnp.int32(1)).compile()
        whole = _run(setup, hyper, segment, [0, setup.num_logs])
        assert set(whole) == {*METRIC_NAMES, *PER_CONFIG_OUTPUTS}
        assert np.isfinite(whole["old_weight"]).all() and not whole["diverged"].any()
        assert whole["old_weight"].dtype == setup.dtype
        for bounds in SPLITS:
            split = _run(setup, hyper, segment, bounds)
            for name in whole:
                np.testing.assert_array_equal(split[name], whole[name], err_msg=f"{case} {bounds} {name}")
        # one compiled segment program served every segment length
        assert TRACE_COUNTS[setup] == traces + 1
