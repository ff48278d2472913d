"""The objectives registry: one `Objective` per training objective, all with one interface.

An objective is a loss with the signature

    loss(params, hyper, setup, key, companion) -> (surrogate, Estimate)

whose gradient in `params` is the (estimated) gradient of the objective
(docs/science/objectives.md); `companion` is a second copy of theta carried by the training loop
(an EMA teacher, a lagged policy, the reference theta(0)) that objectives without one ignore. It
travels with its knobs (`fields`, declared in the field table on registration), its cross-field
`rules`, the optional `companion_update(companion, params, step, hyper, setup)` applied after every
optimiser step, and an optional `preset` (values filled in for unset keys, e.g. CRNC25's setting).

The step's randomness can be split from its arithmetic (objectives.md, "Noise"): `draw(key,
setup) -> Noise` makes the standard draws from the step key only, `estimate(params, hyper, setup,
noise, companion)` is the surrogate given them, and `gradient(setup)` may return a hand-written
`(grads, Estimate)` for the same surrogate (autodiff of `estimate` stays its test oracle). The
training loop then draws the noise once per seed for every grid point sharing it. An objective
without `draw` keeps the key-based `loss` and draws per configuration.

Adding an objective is one file under objectives/ plus one `register(...)` call: it then
validates, sweeps, lands in the store and gets plot labels with no edit elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jax

from .. import fields
from .._types import PRNGKeyArray, Scalar
from ..fields import Field, Rule
from ..model import LearnerParams
from ..spec import Hyper, Setup
from ._common import Estimate, Noise


class Loss(Protocol):
    def __call__(
        self, params: LearnerParams, hyper: Hyper, setup: Setup, key: PRNGKeyArray, companion: LearnerParams
    ) -> tuple[Scalar, Estimate]: ...


CompanionUpdate = Callable[[LearnerParams, LearnerParams, Any, Hyper, Setup], LearnerParams]
BatchKey = Callable[[PRNGKeyArray, Any, Hyper, Setup], PRNGKeyArray]
Draw = Callable[[PRNGKeyArray, Setup], Noise]
NoiseEstimate = Callable[[LearnerParams, Hyper, Setup, Noise, LearnerParams], tuple[Scalar, Estimate]]
NoiseGradient = Callable[[LearnerParams, Hyper, Noise, LearnerParams], tuple[LearnerParams, Estimate]]


def step_key(run_key: PRNGKeyArray, step, hyper: Hyper, setup: Setup) -> PRNGKeyArray:
    """The default PRNG key of step t: fold_in(key(seed), t), a fresh batch every step that depends
    on the configuration's own seed only."""
    return jax.random.fold_in(run_key, step)


def keep_companion(companion: LearnerParams, params: LearnerParams, step, hyper: Hyper, setup: Setup) -> LearnerParams:
    """The default companion update: the companion stays theta(0)."""
    return companion


@dataclass(frozen=True)
class Objective:
    """A registered training objective.

    Attributes:
        name: the value of the `objective` config key.
        loss: the surrogate (module doc); its gradient estimates the objective's gradient.
        doc: one line (with its docs/science section) for the docs table and `--help`.
        fields: the objective's own knobs (fields.Field with `objective=(name,)`).
        rules: its cross-field rules (fields.Rule).
        companion_update: how the companion evolves (default: stays theta(0)).
        preset: values for keys the user leaves unset (e.g. CRNC25's whole setting).
        supports_replay: the objective reads `replay_ratio` (otherwise replay_ratio > 0 is rejected).
        batch_key: the PRNG key of step t from the run key, `batch_key(run_key, t, hyper, setup)`
            (default `step_key`: fold_in(run_key, t)); OAPL's batch reuse returns one key per sync
            window. It must depend on the run key, t and the configuration's own values only.
        draw: the step's standard draws from its key, `draw(key, setup) -> Noise` (None: the
            objective draws inside `loss`, per configuration).
        estimate: the surrogate given the draws, `estimate(params, hyper, setup, noise,
            companion)`; `loss(..., key, ...)` must equal `estimate(..., draw(key, setup), ...)`.
        gradient: `gradient(setup)` -> a hand-written `(params, hyper, noise, companion) ->
            (grads, Estimate)` equal to the autodiff of `estimate` (to float rounding), or None
            where autodiff is kept.
        batch_key_is_step_key: `batch_key_is_step_key(setup)`: True where a non-default
            `batch_key` returns exactly `step_key(run_key, t)` for this setup (OAPL without batch
            reuse), so the setup may share noise as if `batch_key` were the default. None: only
            the default `batch_key` counts as `step_key`.
    """

    name: str
    loss: Loss
    doc: str = ""
    fields: tuple[Field, ...] = ()
    rules: tuple[Rule, ...] = ()
    companion_update: CompanionUpdate = keep_companion
    preset: Mapping[str, Any] | None = None
    supports_replay: bool = False
    batch_key: BatchKey = step_key
    draw: Draw | None = None
    estimate: NoiseEstimate | None = None
    gradient: Callable[[Setup], NoiseGradient | None] | None = None
    batch_key_is_step_key: Callable[[Setup], bool] | None = None

    def noise_gradient(self, setup: Setup) -> NoiseGradient:
        """`(params, hyper, noise, companion) -> (grads, Estimate)` of one step: the hand-written
        gradient where there is one, else autodiff of `estimate` (or of `loss`, whose `noise` is
        then the step's PRNG key)."""
        hand = self.gradient(setup) if self.gradient is not None else None
        if hand is not None:
            return hand
        estimate = self.estimate
        if estimate is None:
            loss = self.loss
            return lambda params, hyper, key, companion: jax.grad(loss, has_aux=True)(
                params, hyper, setup, key, companion
            )
        return lambda params, hyper, noise, companion: jax.grad(estimate, has_aux=True)(
            params, hyper, setup, noise, companion
        )

    def noise_value(
        self, setup: Setup
    ) -> Callable[[LearnerParams, Hyper, Any, LearnerParams], tuple[Scalar, Estimate]]:
        """`(params, hyper, noise, companion) -> (surrogate, Estimate)` at the noise of `step_noise`."""
        estimate = self.estimate if self.estimate is not None else self.loss
        return lambda params, hyper, noise, companion: estimate(params, hyper, setup, noise, companion)

    def step_noise(self, run_key: PRNGKeyArray, step, hyper: Hyper, setup: Setup):
        """The noise of step t: `draw(batch_key(run_key, t))`, or the batch key itself for an
        objective without `draw`."""
        key = self.batch_key(run_key, step, hyper, setup)
        return key if self.draw is None else self.draw(key, setup)

    def seed_shared(self, setup: Setup) -> bool:
        """True when the step's noise is `draw(fold_in(key(seed), t), setup)` with array leaves:
        a function of (seed, t) only, which the loop may draw once per seed."""
        default_key = self.batch_key is step_key or (
            self.batch_key_is_step_key is not None and self.batch_key_is_step_key(setup)
        )
        if self.draw is None or not default_key:
            return False
        shape = jax.eval_shape(lambda: self.draw(jax.random.key(0), setup))  # type: ignore[misc]
        return len(jax.tree.leaves(shape)) > 0


OBJECTIVES: dict[str, Objective] = {}


def _replay_rule(v: Mapping[str, Any]) -> str | None:
    objective = OBJECTIVES.get(v["objective"])
    if objective is not None and not objective.supports_replay and v["replay_ratio"] > 0:
        with_replay = " / ".join(k for k, o in OBJECTIVES.items() if o.supports_replay)
        return (
            f"replay_ratio={v['replay_ratio']} has no meaning under objective={v['objective']} "
            f"(replay is defined for {with_replay} only); set replay_ratio=0"
        )
    return None


fields.add_rule(Rule(("objective", "replay_ratio"), _replay_rule, "replay needs an objective that reads it"))


def register(objective: Objective) -> Objective:
    """Add an objective: its knobs enter the field table, its rules the rule list, its name the
    choices of the `objective` field. Re-registering the same object is a no-op."""
    if OBJECTIVES.get(objective.name) is objective:
        return objective
    if objective.name in OBJECTIVES:
        raise ValueError(f"objective {objective.name!r} is already registered")
    fields.declare(*objective.fields, owner=objective.loss.__module__)
    for rule in objective.rules:
        fields.add_rule(rule)
    OBJECTIVES[objective.name] = objective
    fields.set_choices("objective", tuple(OBJECTIVES))
    return objective


def unregister(name: str) -> None:
    """Remove an objective and its knobs (tests that register a toy objective clean up with it)."""
    objective = OBJECTIVES.pop(name)
    for rule in objective.rules:
        fields.remove_rule(rule)
    fields.undeclare(*(f.name for f in objective.fields))
    fields.set_choices("objective", tuple(OBJECTIVES))


def get_objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"objective={name!r} is not registered; registered: {', '.join(OBJECTIVES)}") from None
