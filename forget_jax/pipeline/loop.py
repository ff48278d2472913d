"""The pipeline training loop: the stages of a schedule run in order in one program, the state
carried across (docs/science/pipelines.md, "The engine").

Same contract as train.make_segments (`init`, `segment(carry, hyper, start, stop)`, `finish`),
so the sweep runner, checkpoints and resume serve pipelines unchanged. The log grid is global:
log point j records the state after j * log_every steps of the whole schedule, and every log
interval lies inside one stage (stage steps are multiples of log_every). `segment` runs, for
each stage in turn, a `lax.while_loop` over the log points of [start, stop) that belong to it
(Python unrolls the stages: each has its own objective, Setup and optimiser; no conditional on
traced values picks a stage). Each stage keeps its own optimiser state in the carry, fresh
(`optimizer.init`) when the stage starts: a new post-training stage starts a new optimiser.

Step t's noise is the stage objective's two-mode draw at `batch_key(key(seed), t)` with the
global t, so a one-stage K = 2 pipeline draws exactly what the two-mode engine draws.

Divergence is handled as in train.py (module doc there): NaN / inf / blow-up after a step
freezes the configuration at its last good state, metrics from then on are NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from .. import items, metrics
from .._types import Array, Bool, Float, Int, Scalar
from ..metrics import MODE_METRIC_NAMES, MODE_METRICS  # noqa: F401  (re-exported: the loop's outputs)
from ..model import LearnerParams
from ..objectives import get_objective
from ..spec import Hyper, Setup
from ..update import make_optimizer
from . import modes as mm
from . import objectives as po
from .schedule import Stage, build, traced_name


class PipelineState(eqx.Module):
    """Loop carry: theta, one optimiser state per stage, per-mode missed-batch counts of the
    current log interval, the running max of the old drift and the divergence record."""

    params: mm.ModeParams
    opt_states: tuple
    missed_steps: Int[Array, " K"]
    old_drift_max: Scalar
    max_importance_weight: Scalar
    diverged: Bool[Array, ""]
    diverged_reason: Int[Array, ""]
    diverged_step: Int[Array, ""]


class PipelineCarry(eqx.Module):
    """What a pipeline run carries between segments (plain arrays: checkpointable)."""

    state: PipelineState
    before: items.Reference | None
    trajectory: dict[str, Array]


def stages_of(setup: Setup) -> tuple[Stage, ...]:
    """The schedule of a pipeline Setup as `Stage`s."""
    return build(setup.stages)


@lru_cache(maxsize=256)
def stage_setup(setup: Setup, stage: Stage) -> Setup:
    """The Setup a stage's step runs under: the pipeline's, with the stage's static overrides and
    its own step count, and no schedule (the two-mode draws and metrics read it)."""
    return setup.replace(stages=None, steps=stage.steps, **dict(stage.static))


def stage_hyper(hyper: Hyper, stage: Stage) -> Hyper:
    """The traced values of a stage: each field's `stages.<i>.<field>` value where the batch has
    one, else the top-level value."""
    values = dict(hyper.values)
    for name in list(values):
        key = traced_name(stage.index, name)
        if key in hyper.values:
            values[name] = hyper.values[key]
    return Hyper(**{k: v for k, v in values.items() if not k.startswith("stages.")})


def mode_drift(params: mm.ModeParams, target: mm.Modes) -> Float[Array, " K"]:
    """delta_k = ||m_k - mu_k*|| / s_k* for every mode (D2 per mode; delta_0 is the old drift)."""
    return jnp.linalg.norm(params.means - target.means, axis=-1) / target.scales


def blown_up(params: mm.ModeParams, target: mm.Modes) -> Bool[Array, ""]:
    """train.blown_up over K modes: a mean farther than BLOWUP_FACTOR L from mu_0* with
    L = max_k ||mu_k* - mu_0*|| + max_k s_k*, or a scale outside (0, BLOWUP_FACTOR max_k s_k*]."""
    from ..train import BLOWUP_FACTOR

    widest = jnp.max(target.scales)
    length = jnp.max(jnp.linalg.norm(target.means - target.means[0], axis=-1)) + widest
    far = jnp.linalg.norm(params.means - target.means[0], axis=-1) > BLOWUP_FACTOR * length
    bad = (params.scales <= 0) | (params.scales > BLOWUP_FACTOR * widest)
    return jnp.any(far) | jnp.any(bad)


# --- updates (update.py's rules over K modes) ---------------------------------------------------


def precondition(grads: mm.ModeParams, params: mm.ModeParams, setup: Setup) -> mm.ModeParams:
    """Freeze flags and the replicator metric. Replicator over K modes: dw_k = -eta w_k (g_k - sum_j w_j g_j) in the full weights, i.e. for
    the free weights (g'_j = dL/dw_j - dL/dw_{K-1}) the direction w_j (g'_j - sum_{k<K-1} w_k g'_k);
    for K = 2 that is beta (1 - beta) dL/dbeta."""
    weight = grads.weight
    if setup.weight_param == "replicator":
        w = params.weight
        weight = w * (weight - jnp.sum(w * weight))
    zero = jnp.zeros_like
    mean_mask = jnp.asarray([setup.train_old_mean] + [setup.train_new_mean] * (setup.modes - 1))
    return mm.ModeParams(
        weight=weight if setup.train_weight else zero(weight),
        means=jnp.where(mean_mask[:, None], grads.means, 0.0),
        scales=grads.scales if setup.train_scales else zero(grads.scales),
    )


def learning_rates(hyper: Hyper, setup: Setup) -> mm.ModeParams:
    """eta * old_lr_scale for the old group (weights, m_0, s_0), eta * new_lr_scale for the rest;
    the K logits step at half that: for K = 2 the difference a_0 - a_1 = logit beta, whose two
    entries get opposite gradients of one size (and, under Adam, opposite directions of one size),
    then moves by the two-mode `logit` step of eta."""
    old = hyper.learning_rate * hyper.old_lr_scale
    new = hyper.learning_rate * hyper.new_lr_scale
    per_mode = mm.task_scales(old, new, setup)
    weight = 0.5 * old if setup.weight_param == "logit" else old
    return mm.ModeParams(weight=weight, means=per_mode[:, None], scales=per_mode)


def project(params: mm.ModeParams, setup: Setup) -> mm.ModeParams:
    """direct / replicator: free weights clipped to [eps, 1 - eps] (K > 2: then scaled so that
    w_{K-1} >= eps); scales clipped to >= scale_min."""
    weight = params.weight
    if setup.weight_param != "logit":
        eps = setup.weight_clip
        weight = jnp.clip(weight, eps, 1.0 - eps)
        if setup.modes > 2:
            total = jnp.sum(weight)
            weight = jnp.where(total > 1.0 - eps, weight * (1.0 - eps) / total, weight)
    return mm.ModeParams(weight, params.means, jnp.maximum(params.scales, setup.scale_min))


def apply_update(
    params, grads, opt_state, hyper: Hyper, setup: Setup, optimizer
) -> tuple[mm.ModeParams, optax.OptState]:
    """theta <- project(theta - eta_group * optimizer(precondition(grad))) (update.apply_update)."""
    with jax.numpy_dtype_promotion("standard"):
        directions, opt_state = optimizer.update(precondition(grads, params, setup), opt_state, params)
    rates = learning_rates(hyper, setup)
    stepped = jax.tree.map(lambda p, d, r: p - r * d, params, directions, rates)
    return project(stepped, setup), opt_state


# --- the stage objective -------------------------------------------------------------------------


def stage_objective(stage: Stage, setup_s: Setup) -> Callable:
    """`surrogate(params, hyper_s, noise) -> (value, (loss, missed))` of the stage (objectives.py)."""
    frame_basis = jnp.asarray(mm.frame(setup_s), setup_s.dtype)
    frame = (frame_basis, jnp.zeros((setup_s.dim,), setup_s.dtype))
    objective = setup_s.objective

    def surrogate(params: mm.ModeParams, hyper_s: Hyper, noise):
        q = mm.learner_modes(params, setup_s)
        target = mm.target_modes(hyper_s, setup_s)
        if objective == "fkl":
            assert stage.task is not None
            p_train = mm.training_modes(
                target, stage.task, stage.earlier, stage.replay_shares, hyper_s.replay_ratio, setup_s
            )
            return po.fkl(q, p_train, setup_s, noise, frame)
        towards = target if stage.target == "full" else mm.restricted(target, stage.seen, setup_s)
        return po.rkl(q, towards, setup_s, noise, frame)

    return surrogate


def reference_modes(stage: Stage, hyper_s: Hyper, setup_s: Setup) -> mm.Modes:
    """The distribution `kl_from_train` is measured from: p_train (FKL) or the stage's target (RKL)."""
    target = mm.target_modes(hyper_s, setup_s)
    if setup_s.objective == "fkl":
        assert stage.task is not None
        return mm.training_modes(target, stage.task, stage.earlier, stage.replay_shares, hyper_s.replay_ratio, setup_s)
    return target if stage.target == "full" else mm.restricted(target, stage.seen, setup_s)


def two_mode(params: mm.ModeParams) -> LearnerParams:
    """A K = 2 theta as model.LearnerParams (logit beta = a_0 - a_1, or beta; old mode first)."""
    weight = params.weight[0] - params.weight[1] if params.weight.shape[0] == 2 else params.weight[0]
    return LearnerParams(weight, params.means[0], params.means[1], params.scales[0], params.scales[1])


def measure(
    params: mm.ModeParams, before: items.Reference | None, stage: Stage, hyper_s: Hyper, setup_s: Setup
) -> dict[str, Scalar]:
    """State metrics of theta during `stage`. K = 2: every two-mode metric (metrics.measure on the
    same theta; `kl_from_train` from the stage's p_train or target; the sample-wise metrics against
    theta(0) of the pipeline, `before`). K > 2: old_weight, old_drift, old_mean_position,
    old_scale and the KLs (the loop adds loss, starved_fraction, old_drift_max and
    max_importance_weight), with
    the KLs by quadrature in the frame of the target means when it is exact (d = 1, or population
    runs), else NaN; the rest NaN. Always the per-mode metrics of MODE_METRICS but the starved
    fraction (the loop adds it)."""
    nan = jnp.asarray(jnp.nan, setup_s.dtype)
    target = mm.target_modes(hyper_s, setup_s)
    q = mm.learner_modes(params, setup_s)
    drift = mode_drift(params, target)
    out: dict[str, Scalar] = {name: nan for name in metrics.METRIC_NAMES}
    basis = jnp.asarray(mm.frame(setup_s), setup_s.dtype)
    origin = jnp.zeros((setup_s.dim,), setup_s.dtype)
    exact = setup_s.dim == 1 or setup_s.estimator == "population"
    order = setup_s.metric_quadrature_order if basis.shape[1] == 1 else min(setup_s.metric_quadrature_order, 16)
    reference = reference_modes(stage, hyper_s, setup_s)
    if setup_s.modes == 2:
        out.update(metrics.measure(two_mode(params), hyper_s, setup_s))
        out.update(items.measure(two_mode(params), before, hyper_s, setup_s))
    else:
        out.update(
            old_weight=q.weights[0],
            old_drift=drift[0],
            old_mean_position=params.means[0, 0],
            old_scale=params.scales[0],
            kl_to_target=po.kl(q.project(basis, origin), target.project(basis, origin), order) if exact else nan,
        )
    two_mode_data = setup_s.modes == 2 and setup_s.objective == "fkl" and stage.task == 1
    if not two_mode_data:  # K = 2 FKL on task 1: p_train is model.training_mixture, measured above
        out["kl_from_train"] = (
            po.kl(reference.project(basis, origin), q.project(basis, origin), order) if exact else nan
        )
    out.update(mode_weight=q.weights, mode_drift=drift, mode_mean_position=params.means[:, 0])
    return out


def make_segments(setup: Setup):
    """`(init, segment, finish)` of a pipeline Setup (module doc; train.make_segments' contract).

    The trajectory maps every name of metrics.METRIC_NAMES to (num_logs,) and every name of
    MODE_METRIC_NAMES to (num_logs, K), plus `diverged`, `diverged_reason`, `diverged_step`."""
    from ..train import TRACE_COUNTS, _float_leaves, _reason, keep_good, mark_logged, run_key

    stages = stages_of(setup)
    setups = [stage_setup(setup, s) for s in stages]
    optimizers = [make_optimizer(s) for s in setups]
    objectives = [get_objective(s.objective) for s in setups]
    surrogates = [stage_objective(st, ss) for st, ss in zip(stages, setups, strict=True)]
    every = setup.log_every
    bounds = [(st.first_step // every, (st.first_step + st.steps) // every) for st in stages]
    k = setup.modes
    names = (*metrics.METRIC_NAMES, *MODE_METRIC_NAMES)

    def init(hyper: Hyper) -> PipelineCarry:
        hyper0 = stage_hyper(hyper, stages[0])
        params = mm.init_params(hyper0, setups[0])
        target = mm.target_modes(hyper0, setups[0])
        opt_states = tuple(opt.init(params) for opt in optimizers)
        reason = _reason(_float_leaves((params, opt_states)), blown_up(params, target))
        state = PipelineState(
            params=params,
            opt_states=opt_states,
            missed_steps=jnp.zeros((k,), jnp.int32),
            old_drift_max=mode_drift(params, target)[0],
            max_importance_weight=jnp.asarray(jnp.nan, setup.dtype),
            diverged=reason > 0,
            diverged_reason=reason,
            diverged_step=jnp.where(reason > 0, 0, -1).astype(jnp.int32),
        )
        trajectory = {name: jnp.full((setup.num_logs,), jnp.nan, setup.dtype) for name in metrics.METRIC_NAMES}
        trajectory.update({name: jnp.full((setup.num_logs, k), jnp.nan, setup.dtype) for name in MODE_METRIC_NAMES})
        before = items.reference(two_mode(params), hyper0, setups[0]) if k == 2 else None
        return PipelineCarry(state=state, before=before, trajectory=trajectory)

    def segment(carry: PipelineCarry, hyper: Hyper, start, stop, noise_seeds=None, seed_slot=None) -> PipelineCarry:
        TRACE_COUNTS[setup] += 1
        start = jnp.asarray(start, jnp.int32)
        stop = jnp.asarray(stop, jnp.int32)
        step_dtype = jnp.arange(1).dtype
        key = run_key(hyper, setup)
        nan = jnp.asarray(jnp.nan, setup.dtype)
        before = carry.before

        for i, stage in enumerate(stages):
            setup_s, surrogate, optimizer, objective = setups[i], surrogates[i], optimizers[i], objectives[i]
            hyper_s = stage_hyper(hyper, stage)
            target = mm.target_modes(hyper_s, setup_s)

            def step(
                state: PipelineState,
                t,
                i=i,
                setup_s=setup_s,
                surrogate=surrogate,
                optimizer=optimizer,
                objective=objective,
                hyper_s=hyper_s,
                target=target,
            ):
                noise = objective.step_noise(key, t, hyper_s, setup_s)
                grads, (_, miss) = jax.grad(surrogate, has_aux=True)(state.params, hyper_s, noise)
                params, opt_state = apply_update(state.params, grads, state.opt_states[i], hyper_s, setup_s, optimizer)
                opt_states = tuple(opt_state if j == i else o for j, o in enumerate(state.opt_states))
                reason = _reason(_float_leaves((params, opt_state)), blown_up(params, target))
                stepped = PipelineState(
                    params=params,
                    opt_states=opt_states,
                    missed_steps=state.missed_steps + miss.astype(jnp.int32),
                    old_drift_max=jnp.fmax(state.old_drift_max, mode_drift(params, target)[0]),
                    max_importance_weight=jnp.fmax(state.max_importance_weight, jnp.ones((), setup.dtype)),
                    diverged=state.diverged,
                    diverged_reason=state.diverged_reason,
                    diverged_step=state.diverged_step,
                )
                return keep_good(state, stepped, reason, t + 1), None

            def advance(state: PipelineState, j, step=step) -> PipelineState:
                state = eqx.tree_at(lambda s: s.missed_steps, state, jnp.zeros((k,), jnp.int32))
                first = (j - 1).astype(step_dtype) * every
                return jax.lax.scan(step, state, first + jnp.arange(every, dtype=step_dtype))[0]

            def record(
                state: PipelineState,
                t,
                fractions,
                stage=stage,
                setup_s=setup_s,
                surrogate=surrogate,
                objective=objective,
                hyper_s=hyper_s,
            ):
                values = measure(state.params, before, stage, hyper_s, setup_s)
                _, (loss, _) = surrogate(state.params, hyper_s, objective.step_noise(key, t, hyper_s, setup_s))
                values.update(
                    loss=loss,
                    starved_fraction=fractions[0],
                    mode_starved_fraction=fractions,
                    old_drift_max=state.old_drift_max,
                    max_importance_weight=state.max_importance_weight,
                )
                values = {name: jnp.asarray(values[name], setup.dtype) for name in names}
                state = mark_logged(state, values, t)
                return state, {name: jnp.where(state.diverged, nan, v) for name, v in values.items()}

            def body(loop, advance=advance, record=record):
                j, carry = loop
                state = jax.lax.cond(j > 0, advance, lambda s, _: s, carry.state, j)
                fractions = jnp.where(j > 0, state.missed_steps.astype(setup.dtype) / every, nan)
                state, values = record(state, j.astype(step_dtype) * every, fractions)
                trajectory = {name: carry.trajectory[name].at[j].set(values[name]) for name in names}
                return j + 1, PipelineCarry(state=state, before=carry.before, trajectory=trajectory)

            lo = 0 if i == 0 else bounds[i][0] + 1
            hi = bounds[i][1] + 1
            first = jnp.clip(start, lo, hi)
            last = jnp.clip(stop, lo, hi)

            def more(loop, last=last) -> Bool[Array, ""]:
                return loop[0] < last

            _, carry = jax.lax.while_loop(more, body, (first, carry))
        return carry

    def finish(carry: PipelineCarry) -> dict[str, Array]:
        state = carry.state
        out = dict(carry.trajectory)
        out.update(diverged=state.diverged, diverged_reason=state.diverged_reason, diverged_step=state.diverged_step)
        return out

    return init, segment, finish
