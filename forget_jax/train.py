"""The training loop: three pure functions per `Setup` (init, segment, finish), vmapped over a
batch of `Hyper`s.

Structure (purejaxrl / gymnax): a loop over logged points j = 0 .. num_logs - 1, an inner
`lax.scan` over the `log_every` steps between them, so memory is O(steps / log_every) and no
Python runs inside the loop. Log point j records the state after j * log_every steps (j = 0 is
theta(0)). A run is cut into *segments* over log points (`make_segments`): the carry (`Carry`:
training state, the theta(0) reference of the sample-wise metrics, one preallocated buffer of
shape (num_logs,) per metric) holds plain numeric arrays only, so it can be moved to the host,
saved and put back between segments; `segment(carry, hyper, start, stop)` takes the log-point
bounds as traced int32 scalars, so one compiled program serves every segment length, and any
split of [0, num_logs) gives bitwise the same trajectory as one segment over everything.

The PRNG key of step t of a configuration is the objective's `batch_key(key(seed), t, hyper,
setup)` (default `fold_in(key(seed), t)`; OAPL's batch reuse: one key per sync window): it
depends on that configuration's own seed and values only, never on the batch it runs in, nor on
where the run was cut into segments (the key is rebuilt from `hyper.seed` in every segment).
A step's randomness is the objective's `draw(key)` (standard draws, `objectives._common.Noise`),
its arithmetic the objective's gradient given them. Where the draws are a function of (seed, t)
alone, the batched loop makes them once per distinct seed of the batch (`seed_layout`: a table of
U seeds for up to 64 steps at a time, `noise_chunks`) and every configuration reads the row of its
own seed: the same numbers as its own draws, so the result is unchanged up to float rounding
(docs/science/objectives.md, "Noise").

Divergence, per configuration (`DIVERGENCE_REASONS`, first cause wins): after every update the
state theta(t) (parameters, companion, optimiser state) is checked for NaN, then inf, then
*blow-up*: a learner mean farther than `BLOWUP_FACTOR` target lengths from mu_o*,
||m_k - mu_o*|| > 1e3 L with L = ||mu_n* - mu_o*|| + max(s_o*, s_n*) = |Delta| s_o* + max(s_o*, s_n*),
or a scale s_k > 1e3 max(s_o*, s_n*) or s_k <= 0. (L is the extent of the target: the distance
between its modes plus its widest component; a run that heads for a target sits within a few L
of mu_o*. Learnable scales are clipped to >= scale_min after every update, so the lower end is
only reachable by a non-positive scale; the mixture weight parameter is not bounded: a logit may
legitimately drift to large |a| under starvation.) A logged state whose loss or old weight is not
finite also counts (reason from the value, step = that log point's step). From the first bad
state on, the configuration is frozen at its last good state (nothing overflows further), every
metric logged at a step >= `diverged_step` is NaN, and `diverged`, `diverged_reason` (index into
`DIVERGENCE_REASONS`) and `diverged_step` (the t of the first bad state theta(t), i.e. the number
of steps after which it went bad; -1 if never) are returned per configuration. The rest of the
batch is unaffected (every operation is elementwise across the configuration axis).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import items
from ._types import Array, Bool, Int, PRNGKeyArray, Scalar
from .metrics import METRIC_NAMES, measure, old_drift
from .model import LearnerParams, init_params, target_mixture
from .objectives import get_objective, keep_companion
from .spec import SEED, Hyper, Setup
from .update import apply_update, make_optimizer

#: How many times the training loop of each Setup has been traced (compiled). A batch of any
#: traced values reuses one trace per (Setup, batch shape); tests use this to prove it. Counted in
#: the segment function (the loop), once per trace of `make_train` or of a compiled segment.
TRACE_COUNTS: Counter = Counter()

#: Divergence reason codes: `diverged_reason` is an index into this tuple (first cause wins).
DIVERGENCE_REASONS: tuple[str, ...] = ("none", "nan", "inf", "blow-up")

#: Per-configuration outputs of `finish` (besides the per-log-point metrics of METRIC_NAMES).
PER_CONFIG_OUTPUTS: tuple[str, ...] = ("diverged", "diverged_reason", "diverged_step")

#: Blow-up bound in units of the target's extent (module doc): means beyond 1e3 L of mu_o*, scales
#: beyond 1e3 max(s_o*, s_n*).
BLOWUP_FACTOR = 1e3

Trajectory = dict[str, Array]


class TrainState(eqx.Module):
    """Loop carry. `companion` is a second copy of theta that some objectives track alongside
    the learner (an EMA teacher, a lagged behaviour policy, the reference model theta(0)); it
    starts at theta(0) and objectives without one leave it untouched. `diverged_reason` indexes
    `DIVERGENCE_REASONS`; `diverged_step` is the t of the first bad state theta(t), -1 if none."""

    params: LearnerParams
    companion: LearnerParams
    opt_state: optax.OptState
    starved_steps: Int[Array, ""]
    old_drift_max: Scalar
    max_importance_weight: Scalar
    diverged: Bool[Array, ""]
    diverged_reason: Int[Array, ""]
    diverged_step: Int[Array, ""]


class Carry(eqx.Module):
    """Everything a run carries between segments, as plain numeric / bool arrays (no PRNG keys:
    they are rebuilt from `hyper.seed`), so `jax.tree.map(np.asarray, carry)` saves it and
    `jax.tree.unflatten(treedef, leaves)` restores it.

    Attributes:
        state: the training state after the last log point run so far.
        before: what the sample-wise metrics keep of theta(0) (None when they are off).
        trajectory: metric name -> buffer of shape (num_logs,); entries not yet logged are NaN.
    """

    state: TrainState
    before: items.Reference | None
    trajectory: dict[str, Array]


def _float_leaves(tree) -> list[Array]:
    return [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]


def _reason(values: list[Array], blown_up: Bool[Array, ""]) -> Int[Array, ""]:
    """Divergence code of a state (index into DIVERGENCE_REASONS): NaN anywhere, else inf
    anywhere, else `blown_up`, else 0."""
    has_nan = jnp.any(jnp.stack([jnp.any(jnp.isnan(x)) for x in values]))
    has_inf = jnp.any(jnp.stack([jnp.any(jnp.isinf(x)) for x in values]))
    code = jnp.where(blown_up, 3, 0)
    code = jnp.where(has_inf, 2, code)
    return jnp.where(has_nan, 1, code).astype(jnp.int32)


def blown_up(params: LearnerParams, hyper: Hyper, setup: Setup) -> Bool[Array, ""]:
    """True when theta has left the region of the target (module doc): a mean farther than
    BLOWUP_FACTOR * L from mu_o* with L = |Delta| s_o* + max(s_o*, s_n*), or a scale outside
    (0, BLOWUP_FACTOR * max(s_o*, s_n*)].

    Args:
        params: theta; hyper: one configuration (unbatched); setup: its static structure.
    Returns:
        a boolean scalar.
    """
    target = target_mixture(hyper, setup)
    widest = jnp.maximum(target.old_scale, target.new_scale)
    length = jnp.linalg.norm(target.new_mean - target.old_mean) + widest
    far = lambda mean: jnp.linalg.norm(mean - target.old_mean) > BLOWUP_FACTOR * length
    bad_scale = lambda s: (s <= 0) | (s > BLOWUP_FACTOR * widest)
    return far(params.old_mean) | far(params.new_mean) | bad_scale(params.old_scale) | bad_scale(params.new_scale)


def _state_reason(state_parts, params: LearnerParams, hyper: Hyper, setup: Setup) -> Int[Array, ""]:
    return _reason(_float_leaves(state_parts), blown_up(params, hyper, setup))


def keep_good(state, stepped, reason: Int[Array, ""], step):
    """The state after an update: `stepped`, unless the configuration has diverged (before, or
    now: `reason` > 0), which keeps it frozen at its last good `state` and records the first
    cause and `step` (the t of the first bad state). `state` is any module with the fields
    `diverged`, `diverged_reason`, `diverged_step` (TrainState, pipeline.loop.PipelineState)."""
    frozen = state.diverged | (reason > 0)
    kept = jax.tree.map(lambda old, new: jnp.where(frozen, old, new), state, stepped)
    newly = ~state.diverged & (reason > 0)
    return eqx.tree_at(
        lambda s: (s.diverged, s.diverged_reason, s.diverged_step),
        kept,
        (
            frozen,
            jnp.where(newly, reason, state.diverged_reason),
            jnp.where(newly, jnp.asarray(step).astype(jnp.int32), state.diverged_step),
        ),
    )


def mark_logged(state, values: dict[str, Array], step):
    """A logged state whose loss or old weight is not finite diverges at that log point's step
    (module doc): the divergence record of `state` updated from `values`."""
    reason = _reason([values["loss"], values["old_weight"]], jnp.zeros((), bool))
    newly = ~state.diverged & (reason > 0)
    return eqx.tree_at(
        lambda s: (s.diverged, s.diverged_reason, s.diverged_step),
        state,
        (
            state.diverged | newly,
            jnp.where(newly, reason, state.diverged_reason),
            jnp.where(newly, jnp.asarray(step).astype(jnp.int32), state.diverged_step),
        ),
    )


#: Seed-shared noise: a table of U seeds pays when U <= SHARE_FRACTION * (configurations).
SHARE_FRACTION = 0.25

#: Seed-shared noise: at most this many steps of draws per table, and at most NOISE_TABLE_ELEMENTS
#: numbers (U seeds x steps x B x d) in one table (16 MiB of float32).
NOISE_CHUNK_STEPS = 64
NOISE_TABLE_ELEMENTS = 2**22


def run_key(hyper: Hyper, setup: Setup) -> PRNGKeyArray:
    """The configuration's run key: key(seed), the stream of every grid point with that seed
    (common random numbers). With `independent_noise`, key(seed) folded with the bits of each
    traced value (as float32, in name order), so grid points draw independent streams that still
    depend on the configuration's own seed and values only."""
    key = jax.random.key(hyper.seed)
    if not setup.independent_noise:
        return key
    for name in sorted(hyper.values):
        if name != SEED:
            bits = jax.lax.bitcast_convert_type(jnp.asarray(hyper.values[name]).astype(jnp.float32), jnp.uint32)
            key = jax.random.fold_in(key, bits)
    return key


def noise_chunks(setup: Setup, seeds: int) -> tuple[int, int, int]:
    """(chunk, full, rest): the log_every steps of one log interval drawn as `full` tables of
    `chunk` steps and one of `rest` (0: none); chunk <= NOISE_CHUNK_STEPS and a table of `seeds`
    seeds holds at most NOISE_TABLE_ELEMENTS numbers. A divisor of log_every is preferred (one
    table shape, traced once) when one is at least half the largest allowed chunk."""
    per_step = max(1, seeds * setup.batch_size * setup.dim)
    cap = max(1, min(NOISE_CHUNK_STEPS, NOISE_TABLE_ELEMENTS // per_step, setup.log_every))
    divisor = max(c for c in range(1, cap + 1) if setup.log_every % c == 0)
    chunk = divisor if 2 * divisor >= cap else cap
    return chunk, setup.log_every // chunk, setup.log_every % chunk


def seed_layout(setup: Setup, seeds: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Whether and how a batch draws its noise once per seed: (noise_seeds, seed_slot) with
    noise_seeds the distinct seeds (padded to a power of two U by repeating the first, so blocks
    of one compile group share one program) and seed_slot[i] the row of configuration i's seed; or
    (None, None) to draw per configuration: the objective's draws are not a function of (seed,
    step) alone (`Objective.seed_shared`), `independent_noise` is on, or U > SHARE_FRACTION * n
    (sharing would save little). Both layouts give every configuration the same draws."""
    seeds = np.asarray(seeds).reshape(-1)
    if setup.stages is not None:  # pipelines draw per configuration (pipeline/loop.py)
        return None, None
    if setup.independent_noise or not get_objective(setup.objective).seed_shared(setup):
        return None, None
    unique, slot = np.unique(seeds, return_inverse=True)
    size = 1 << max(0, len(unique) - 1).bit_length()
    if size > SHARE_FRACTION * len(seeds):
        return None, None
    table = np.concatenate([unique, np.full(size - len(unique), unique[0])])
    return table.astype(np.int32), slot.astype(np.int32)


def make_segments(
    setup: Setup,
) -> tuple[
    Callable[[Hyper], Carry],
    Callable[..., Carry],
    Callable[[Carry], Trajectory],
]:
    """Return `(init, segment, finish)` for one configuration (unbatched `hyper`).

    * `init(hyper) -> carry`: theta(0) and empty (NaN) trajectory buffers, before any log point;
    * `segment(carry, hyper, start, stop) -> carry`: runs log points j in [start, stop) (0 <= start
      <= stop <= setup.num_logs; traced int32 scalars, so one program serves every segment), each
      advancing log_every steps (none for j = 0) and writing its record at index j;
    * `finish(carry) -> trajectory`: each name of METRIC_NAMES -> array (num_logs,) (steps 0,
      log_every, ..., steps) and each name of PER_CONFIG_OUTPUTS -> a scalar (module doc).

    Running the log points in order, under any split into segments, gives the same trajectory.
    A Setup with `stages` is a pipeline: the K-mode loop of pipeline/loop.py, same contract.
    """
    if setup.stages is not None:
        from .pipeline.loop import make_segments as pipeline_segments

        return pipeline_segments(setup)
    objective = get_objective(setup.objective)
    optimizer = make_optimizer(setup)
    gradient = objective.noise_gradient(setup)
    value = objective.noise_value(setup)
    moving_companion = objective.companion_update is not keep_companion

    def init(hyper: Hyper) -> Carry:
        nan = jnp.asarray(jnp.nan, setup.dtype)
        target = target_mixture(hyper, setup)
        params = init_params(hyper, setup)
        before = items.reference(params, hyper, setup)  # sample-wise metrics: before = theta(0)
        opt_state = optimizer.init(params)
        reason = _state_reason((params, opt_state), params, hyper, setup)
        state = TrainState(
            params=params,
            companion=params,
            opt_state=opt_state,
            starved_steps=jnp.zeros((), jnp.int32),
            old_drift_max=old_drift(params, target),
            max_importance_weight=nan,
            diverged=reason > 0,
            diverged_reason=reason,
            diverged_step=jnp.where(reason > 0, 0, -1).astype(jnp.int32),
        )
        trajectory = {name: jnp.full((setup.num_logs,), jnp.nan, setup.dtype) for name in METRIC_NAMES}
        return Carry(state=state, before=before, trajectory=trajectory)

    def segment(carry: Carry, hyper: Hyper, start, stop, noise_seeds=None, seed_slot=None) -> Carry:
        TRACE_COUNTS[setup] += 1
        start = jnp.asarray(start, jnp.int32)
        stop = jnp.asarray(stop, jnp.int32)
        step_dtype = jnp.arange(1).dtype  # int64 under x64, as the step counters always were
        key = run_key(hyper, setup)
        target = target_mixture(hyper, setup)
        nan = jnp.asarray(jnp.nan, setup.dtype)
        before = carry.before

        def step(state: TrainState, t, noise) -> tuple[TrainState, None]:
            grads, estimate = gradient(state.params, hyper, noise, state.companion)
            params, opt_state = apply_update(state.params, grads, state.opt_state, hyper, setup, optimizer)
            if moving_companion:
                companion = objective.companion_update(state.companion, params, t + 1, hyper, setup)
                reason = _state_reason((params, companion, opt_state), params, hyper, setup)
            else:  # theta(0) stays as it is: nothing to update or check
                companion = state.companion
                reason = _state_reason((params, opt_state), params, hyper, setup)
            stepped = TrainState(
                params=params,
                companion=companion,
                opt_state=opt_state,
                starved_steps=state.starved_steps + estimate.starved.astype(jnp.int32),
                old_drift_max=jnp.fmax(state.old_drift_max, old_drift(params, target)),
                max_importance_weight=jnp.fmax(state.max_importance_weight, estimate.max_importance_weight),
                diverged=state.diverged,
                diverged_reason=state.diverged_reason,
                diverged_step=state.diverged_step,
            )
            return keep_good(state, stepped, reason, t + 1), None

        def record(state: TrainState, t, starved_fraction) -> tuple[TrainState, dict[str, Scalar]]:
            metrics = measure(state.params, hyper, setup)
            _, estimate = value(state.params, hyper, objective.step_noise(key, t, hyper, setup), state.companion)
            metrics.update(
                loss=estimate.loss,
                starved_fraction=starved_fraction,
                old_drift_max=state.old_drift_max,
                max_importance_weight=state.max_importance_weight,
            )
            metrics.update(items.measure(state.params, before, hyper, setup))
            metrics = {name: jnp.asarray(metrics[name], setup.dtype) for name in METRIC_NAMES}
            # a logged state whose loss or old weight is not finite diverges here (step t)
            state = mark_logged(state, metrics, t)
            metrics = {name: jnp.where(state.diverged, nan, value) for name, value in metrics.items()}
            return state, metrics

        def own_step(state: TrainState, t) -> tuple[TrainState, None]:
            return step(state, t, objective.step_noise(key, t, hyper, setup))

        def shared_chunk(state: TrainState, first, length: int) -> TrainState:
            # the draws of steps first .. first + length - 1 for every seed of the table, made
            # once (no configuration axis: noise_seeds is shared by the batch), then each
            # configuration reads the row of its own seed
            steps = first + jnp.arange(length, dtype=step_dtype)
            draw = objective.draw
            assert draw is not None  # seed_layout shares noise only for objectives with a draw
            draws = lambda seed: jax.vmap(lambda t: draw(jax.random.fold_in(jax.random.key(seed), t), setup))(steps)
            table = jax.vmap(draws)(noise_seeds)

            def inner(state: TrainState, c) -> tuple[TrainState, None]:
                return step(state, steps[c], jax.tree.map(lambda a: a[seed_slot, c], table))

            return jax.lax.scan(inner, state, jnp.arange(length))[0]

        def advance(state: TrainState, j) -> TrainState:
            state = eqx.tree_at(lambda s: s.starved_steps, state, jnp.zeros((), jnp.int32))
            first = (j - 1).astype(step_dtype) * setup.log_every
            if noise_seeds is None:
                return jax.lax.scan(own_step, state, first + jnp.arange(setup.log_every, dtype=step_dtype))[0]
            chunk, full, rest = noise_chunks(setup, noise_seeds.shape[0])
            state = jax.lax.scan(
                lambda s, i: (shared_chunk(s, first + i.astype(step_dtype) * chunk, chunk), None),
                state,
                jnp.arange(full),
            )[0]
            return shared_chunk(state, first + full * chunk, rest) if rest else state

        def body(loop: tuple[Int[Array, ""], Carry]) -> tuple[Int[Array, ""], Carry]:
            # log point j records the state after j * log_every steps; point 0 is the initial
            # state (no steps run), so the metric code is traced once, not twice
            j, carry = loop
            state = jax.lax.cond(j > 0, advance, lambda s, _: s, carry.state, j)
            fraction = jnp.where(j > 0, state.starved_steps.astype(setup.dtype) / setup.log_every, nan)
            state, metrics = record(state, j.astype(step_dtype) * setup.log_every, fraction)
            trajectory = {name: carry.trajectory[name].at[j].set(metrics[name]) for name in METRIC_NAMES}
            return j + 1, Carry(state=state, before=carry.before, trajectory=trajectory)

        _, carry = jax.lax.while_loop(lambda loop: loop[0] < stop, body, (start, carry))
        return carry

    def finish(carry: Carry) -> Trajectory:
        state = carry.state
        trajectory = dict(carry.trajectory)
        trajectory.update(
            diverged=state.diverged, diverged_reason=state.diverged_reason, diverged_step=state.diverged_step
        )
        return trajectory

    return init, segment, finish


def make_train(setup: Setup) -> Callable[..., Trajectory]:
    """Return `train(hyper) -> trajectory` for one configuration (unbatched `hyper`): init, one
    segment over every log point, finish (`make_segments`).

    The trajectory maps each name of `metrics.METRIC_NAMES` to an array of shape
    (setup.num_logs,) (steps 0, log_every, ..., steps) and each name of PER_CONFIG_OUTPUTS to a
    scalar (`diverged` bool, `diverged_reason` and `diverged_step` int32; module doc).
    """
    init, segment, finish = make_segments(setup)

    def train(hyper: Hyper, noise_seeds=None, seed_slot=None) -> Trajectory:
        start, stop = jnp.asarray(0, jnp.int32), jnp.asarray(setup.num_logs, jnp.int32)
        return finish(segment(init(hyper), hyper, start, stop, noise_seeds, seed_slot))

    return train


def precision(setup: Setup):
    """Context in which a Setup runs: float64 enabled for `x64` setups (without flipping the
    process-wide switch), a no-op otherwise. Every array is created with an explicit dtype."""
    return jax.enable_x64(True) if setup.x64 else contextlib.nullcontext()


#: XLA options for the training programs on CPU: no YNNPACK fusions. XLA CPU otherwise hands the
#: per-step reductions over the batch (B numbers per configuration) to YNNPACK one small row at a
#: time; XLA's own loops run the FKL step 2.2x faster, RKL with seed-shared noise 0.8x
#: (benchmarks/README.md, "Compiler options").
CPU_COMPILER_OPTIONS: dict[str, str] = {"xla_cpu_experimental_ynn_fusion_type": ""}


def compiler_options(platform: str | None = None) -> dict[str, str] | None:
    """The XLA options of the training programs for a platform (default: JAX's default backend):
    CPU_COMPILER_OPTIONS on CPU, none elsewhere. Pass to `jax.jit(..., compiler_options=...)`."""
    platform = platform or jax.default_backend()
    return dict(CPU_COMPILER_OPTIONS) if platform == "cpu" else None


def _with_noise_layout(batched: Callable, positional: int) -> Callable:
    """`batched` with its last two arguments (noise_seeds, seed_slot of `seed_layout`) optional
    (None: every configuration draws its own noise)."""

    def call(*args):
        if len(args) not in (positional, positional + 2):
            raise TypeError(f"expected {positional} arguments (+ noise_seeds, seed_slot), got {len(args)}")
        return batched(*args, *([None, None] if len(args) == positional else []))

    return call


@lru_cache(maxsize=64)
def compiled_batch(setup: Setup) -> Any:
    """`jit(vmap(train))` for a Setup, called as `(hyper)` or `(hyper, noise_seeds, seed_slot)`
    (`seed_layout`): one compiled program per (Setup, batch size, noise layout). Call it
    inside `precision(setup)`."""
    return jax.jit(
        _with_noise_layout(jax.vmap(make_train(setup), in_axes=(0, None, 0)), 1), compiler_options=compiler_options()
    )


@lru_cache(maxsize=64)
def compiled_segments(setup: Setup) -> tuple[Any, Any, Any]:
    """`(init_b, segment_b, finish_b)` = `make_segments(setup)` vmapped over configurations and
    jitted: `init_b(hyper)`, `segment_b(carry, hyper, start, stop[, noise_seeds, seed_slot])`
    (`seed_layout`; start / stop shared by the
    batch, passed as `jnp.int32` scalars; the carry is donated) and `finish_b(carry)`. One
    compiled segment program per (Setup, batch size) serves every segment. Call them inside
    `precision(setup)`."""
    init, segment, finish = make_segments(setup)
    return (
        jax.jit(jax.vmap(init), compiler_options=compiler_options()),
        jax.jit(
            _with_noise_layout(jax.vmap(segment, in_axes=(0, 0, None, None, None, 0)), 4),
            donate_argnums=0,
            compiler_options=compiler_options(),
        ),
        jax.jit(jax.vmap(finish)),
    )


@lru_cache(maxsize=64)
def _compiled_single(setup: Setup) -> Callable[[Hyper], Trajectory]:
    return jax.jit(make_train(setup), compiler_options=compiler_options())


def _device_hyper(setup: Setup, hyper: Hyper) -> Hyper:
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.int32 if x.dtype.kind in "iu" else setup.dtype), hyper)


def _batch_args(setup: Setup, hyper: Hyper) -> tuple:
    noise_seeds, seed_slot = seed_layout(setup, np.asarray(hyper.seed))
    return (_device_hyper(setup, hyper), noise_seeds, seed_slot)


def simulate(setup: Setup, hyper: Hyper) -> dict[str, np.ndarray]:
    """Run a batch of configurations (every leaf of `hyper` has a leading axis of length n), with
    the noise drawn once per seed where that pays (`seed_layout`).

    Returns host arrays: metrics of shape (n, setup.num_logs) and each name of PER_CONFIG_OUTPUTS
    (`diverged`, `diverged_reason`, `diverged_step`) of shape (n,).
    """
    with precision(setup):
        out = jax.block_until_ready(compiled_batch(setup)(*_batch_args(setup, hyper)))
        return {k: np.asarray(v) for k, v in out.items()}


def simulate_one(setup: Setup, hyper: Hyper) -> dict[str, np.ndarray]:
    """Run a single (unbatched) configuration: `jit(train)`."""
    with precision(setup):
        out = jax.block_until_ready(_compiled_single(setup)(_device_hyper(setup, hyper)))
        return {k: np.asarray(v) for k, v in out.items()}


def compiled_call(setup: Setup, hyper: Hyper) -> tuple[jax.stages.Compiled, tuple]:
    """The ahead-of-time compiled batch program of `simulate` for this batch and its arguments:
    `compiled(*args)` returns the trajectory (device arrays). For benchmarks and
    `cost_analysis()` / `memory_analysis()`; call it (and the program) inside `precision(setup)`."""
    args = _batch_args(setup, hyper)
    return compiled_batch(setup).lower(*args).compile(), args


def program_memory(setup: Setup, n: int) -> dict[str, int]:
    """Bytes the compiled segment program of the sweep runner needs for a batch of n
    configurations, from XLA's `memory_analysis()`: `argument`, `output`, `temp`, `generated_code`
    and `total` (argument + output + temp - alias: what must fit in device memory at once).
    Compiles (once per (setup, n) in this process); call inside `precision(setup)`."""
    from .spec import make_hyper

    hyper = jax.tree.map(
        lambda x: jnp.asarray(x, jnp.int32 if x.dtype.kind in "iu" else setup.dtype),
        make_hyper(setup.dtype, seed=np.arange(n)),
    )
    init_b, segment_b, _ = compiled_segments(setup)
    carry = jax.eval_shape(init_b, hyper)
    bound = jax.ShapeDtypeStruct((), jnp.int32)
    stats = segment_b.lower(carry, hyper, bound, bound).compile().memory_analysis()
    out = dict(
        argument=int(stats.argument_size_in_bytes),
        output=int(stats.output_size_in_bytes),
        temp=int(stats.temp_size_in_bytes),
        generated_code=int(stats.generated_code_size_in_bytes),
        alias=int(stats.alias_size_in_bytes),
    )
    out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


program_memory.memoisable = True  # type: ignore[attr-defined]  # a pure function of (setup, n, platform): runner/plan.py keeps its results on disk
