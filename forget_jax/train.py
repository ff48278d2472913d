"""The training loop: one jitted function per `Setup`, vmapped over a batch of `Hyper`s.

Structure (purejaxrl / gymnax): an outer `lax.scan` over logged points, an inner `lax.scan` over
the `log_every` steps between them, so memory is O(steps / log_every) and no Python runs inside
the loop. The PRNG key of step t of a configuration is the objective's `batch_key(key(seed), t,
hyper, setup)` (default `fold_in(key(seed), t)`; OAPL's batch reuse: one key per sync window): it
depends on that configuration's own seed and values only, never on the batch it runs in.

Divergence (NaN / inf in the parameters or the loss) is recorded per configuration in the
`diverged` flag; the batch keeps running and other configurations are unaffected (every
operation is elementwise across the configuration axis).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from functools import lru_cache

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import items
from ._types import Array, Bool, Int, Scalar
from .metrics import METRIC_NAMES, measure, old_drift
from .model import LearnerParams, init_params, target_mixture
from .objectives import get_objective
from .spec import Hyper, Setup
from .update import apply_update, make_optimizer

#: How many times the training function of each Setup has been traced (compiled). A batch of any
#: traced values reuses one trace per (Setup, batch shape); tests use this to prove it.
TRACE_COUNTS: Counter = Counter()

Trajectory = dict[str, Array]


class TrainState(eqx.Module):
    """Loop carry. `companion` is a second copy of theta that some objectives track alongside
    the learner (an EMA teacher, a lagged behaviour policy, the reference model theta(0)); it
    starts at theta(0) and objectives without one leave it untouched."""

    params: LearnerParams
    companion: LearnerParams
    opt_state: optax.OptState
    starved_steps: Int[Array, ""]
    old_drift_max: Scalar
    max_importance_weight: Scalar
    diverged: Bool[Array, ""]


def _all_finite(tree) -> Bool[Array, ""]:
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def make_train(setup: Setup) -> Callable[[Hyper], Trajectory]:
    """Return `train(hyper) -> trajectory` for one configuration (unbatched `hyper`).

    The trajectory maps each name of `metrics.METRIC_NAMES` to an array of shape
    (setup.num_logs,) (steps 0, log_every, ..., steps) and `diverged` to a boolean scalar.
    """
    objective = get_objective(setup.objective)
    optimizer = make_optimizer(setup)

    def evaluate(params, hyper, key, companion):
        return objective.loss(params, hyper, setup, key, companion)

    nan = jnp.asarray(jnp.nan, setup.dtype)

    def train(hyper: Hyper) -> Trajectory:
        TRACE_COUNTS[setup] += 1
        key = jax.random.key(hyper.seed)
        target = target_mixture(hyper, setup)
        params = init_params(hyper, setup)
        before = items.reference(params, hyper, setup)  # sample-wise metrics: before = theta(0)
        state = TrainState(
            params=params,
            companion=params,
            opt_state=optimizer.init(params),
            starved_steps=jnp.zeros((), jnp.int32),
            old_drift_max=old_drift(params, target),
            max_importance_weight=nan,
            diverged=jnp.zeros((), bool),
        )

        def step(state: TrainState, t) -> tuple[TrainState, None]:
            grad_fn = jax.grad(evaluate, has_aux=True)
            grads, estimate = grad_fn(state.params, hyper, objective.batch_key(key, t, hyper, setup), state.companion)
            params, opt_state = apply_update(state.params, grads, state.opt_state, hyper, setup, optimizer)
            finite = _all_finite(params)  # a non-finite loss makes the gradient, hence theta, non-finite
            companion = objective.companion_update(state.companion, params, t + 1, hyper, setup)
            return TrainState(
                params=params,
                companion=companion,
                opt_state=opt_state,
                starved_steps=state.starved_steps + estimate.starved.astype(jnp.int32),
                old_drift_max=jnp.fmax(state.old_drift_max, old_drift(params, target)),
                max_importance_weight=jnp.fmax(state.max_importance_weight, estimate.max_importance_weight),
                diverged=state.diverged | ~finite,
            ), None

        def record(state: TrainState, t, starved_fraction) -> dict[str, Scalar]:
            metrics = measure(state.params, hyper, setup)
            _, estimate = evaluate(state.params, hyper, objective.batch_key(key, t, hyper, setup), state.companion)
            metrics.update(
                loss=estimate.loss,
                starved_fraction=starved_fraction,
                old_drift_max=state.old_drift_max,
                max_importance_weight=state.max_importance_weight,
            )
            metrics.update(items.measure(state.params, before, hyper, setup))
            return {name: jnp.asarray(metrics[name], setup.dtype) for name in METRIC_NAMES}

        def block(state: TrainState, j) -> tuple[TrainState, dict[str, Scalar]]:
            # log point j records the state after j * log_every steps; point 0 is the initial
            # state (no steps run), so the metric code is traced once, not twice
            def advance(state: TrainState) -> TrainState:
                state = eqx.tree_at(lambda s: s.starved_steps, state, jnp.zeros((), jnp.int32))
                start = (j - 1) * setup.log_every
                return jax.lax.scan(step, state, start + jnp.arange(setup.log_every))[0]

            state = jax.lax.cond(j > 0, advance, lambda s: s, state)
            fraction = jnp.where(j > 0, state.starved_steps.astype(setup.dtype) / setup.log_every, nan)
            return state, record(state, j * setup.log_every, fraction)

        state, trajectory = jax.lax.scan(block, state, jnp.arange(setup.num_logs))
        finite_record = jnp.all(jnp.isfinite(trajectory["old_weight"])) & jnp.all(jnp.isfinite(trajectory["loss"]))
        trajectory["diverged"] = state.diverged | ~finite_record
        return trajectory

    return train


def precision(setup: Setup):
    """Context in which a Setup runs: float64 enabled for `x64` setups (without flipping the
    process-wide switch), a no-op otherwise. Every array is created with an explicit dtype."""
    return jax.enable_x64(True) if setup.x64 else contextlib.nullcontext()


@lru_cache(maxsize=64)
def compiled_batch(setup: Setup) -> Callable[[Hyper], Trajectory]:
    """`jit(vmap(train))` for a Setup: one compiled program per (Setup, batch size). Call it
    inside `precision(setup)`."""
    return jax.jit(jax.vmap(make_train(setup)))


@lru_cache(maxsize=64)
def _compiled_single(setup: Setup) -> Callable[[Hyper], Trajectory]:
    return jax.jit(make_train(setup))


def _run(fn, setup: Setup, hyper: Hyper) -> dict[str, np.ndarray]:
    with precision(setup):
        hyper = jax.tree.map(lambda x: jnp.asarray(x, jnp.int32 if x.dtype.kind in "iu" else setup.dtype), hyper)
        out = jax.block_until_ready(fn(setup)(hyper))
        return {k: np.asarray(v) for k, v in out.items()}


def simulate(setup: Setup, hyper: Hyper) -> dict[str, np.ndarray]:
    """Run a batch of configurations (every leaf of `hyper` has a leading axis of length n).

    Returns host arrays: metrics of shape (n, setup.num_logs) and `diverged` of shape (n,).
    """
    return _run(compiled_batch, setup, hyper)


def simulate_one(setup: Setup, hyper: Hyper) -> dict[str, np.ndarray]:
    """Run a single (unbatched) configuration: `jit(train)`."""
    return _run(_compiled_single, setup, hyper)
