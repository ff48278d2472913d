"""Reward presets and grouped sampling shared by `ttt_discover` and `oapl` (docs/science/methods.md B
"Translation", (a)-(c); C uses "the same reward presets as section B"). The fields they share
(`reward`, `reward_width`, `reward_offset`, `reward_slope`, `group_size`) and the grouping rule
are declared here, once.

* `quadratic`: R(y) = -|y - mu_R|^2 / (2 rho^2), a bump centred at mu_R = mu_n* + reward_offset e_1
  with width rho = reward_width; localised, so it reaches the old mode only through overlap
  (docs/science/claims.md T8 "Drift").
* `linear`: R(y) = w . y with w = reward_slope e_1; global, so it tilts (moves) the old mean too.
* `log_new`: R(y) = log p_new*(y) = log N(y; mu_n*, s_n*^2 I), a quadratic of width s_n* plus a
  constant.

The tilt closed forms for these (the mass factors M = E_N[e^{eta R}] of docs/science/methods.md section 0) are
in theory.py.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from .. import fields
from .._types import Array, Float, Scalar
from ..gaussian import log_normal
from ..model import axis, target_mixture
from ..spec import Hyper, Setup

#: The objectives that read a reward preset and draw their batch in groups.
GROUPED = ("ttt_discover", "oapl")


class Reward(eqx.Module):
    """A reward function y -> R(y) of one preset (`kind` is static)."""

    kind: str = eqx.field(static=True)
    center: Float[Array, " k"]
    slope: Float[Array, " k"]
    width: Scalar

    def __call__(self, x: Float[Array, "... k"]) -> Float[Array, " ..."]:
        if self.kind == "linear":
            return x @ self.slope
        if self.kind == "log_new":
            return log_normal(x, self.center, self.width)
        return -0.5 * jnp.sum(jnp.square(x - self.center), axis=-1) / jnp.square(self.width)

    def project(self, basis: Float[Array, "d k"], origin: Float[Array, " d"]) -> Reward:
        """The reward in the coordinates y = basis^T (x - origin) of `population_frame`. Exact up to
        an additive constant (which cancels in every normalised quantity: tilts, weights,
        advantages) when the center and slope lie in the span of `basis`."""
        return Reward(self.kind, (self.center - origin) @ basis, self.slope @ basis, self.width)


def reward_function(hyper: Hyper, setup: Setup) -> Reward:
    """The configured preset (`setup.reward`) with its traced numbers."""
    target = target_mixture(hyper, setup)
    e1 = axis(setup.dim, setup.dtype)
    if setup.reward == "log_new":
        return Reward("log_new", target.new_mean, jnp.zeros_like(e1), jnp.asarray(target.new_scale, setup.dtype))
    if setup.reward == "linear":
        return Reward(
            "linear", jnp.zeros_like(e1), hyper.reward_slope * e1, jnp.asarray(hyper.reward_width, setup.dtype)
        )
    return Reward(
        "quadratic",
        target.new_mean + hyper.reward_offset * e1,
        jnp.zeros_like(e1),
        jnp.asarray(hyper.reward_width, setup.dtype),
    )


fields.declare(
    fields.Field(
        "reward",
        "static",
        "quadratic",
        "reward preset: `quadratic` -|y - mu_R|^2/(2 rho^2) at mu_R = "
        "mu_n* + reward_offset e_1, `linear` w . y, `log_new` log p_new*(y) (docs/science/methods.md B)",
        type=str,
        choices=("quadratic", "linear", "log_new"),
        objective=GROUPED,
    ),
    fields.Field(
        "group_size",
        "static",
        8,
        "samples per group G (`batch_size` = groups x G)",
        type=int,
        ge=2,
        le=1_000_000,
        symbol="G",
        objective=GROUPED,
    ),
    fields.Field(
        "reward_width",
        "traced",
        1.0,
        "width rho of the quadratic reward",
        gt=0,
        le=1e3,
        symbol="ρ",
        objective=GROUPED,
    ),
    fields.Field(
        "reward_offset",
        "traced",
        0.0,
        "quadratic reward centre mu_R - mu_n* along e_1",
        ge=-1e3,
        le=1e3,
        symbol="μ_R − μ_n*",
        objective=GROUPED,
    ),
    fields.Field(
        "reward_slope",
        "traced",
        1.0,
        "linear reward w = reward_slope e_1",
        ge=-1e3,
        le=1e3,
        symbol="w",
        objective=GROUPED,
    ),
    owner=__name__,
)


def _group_rule(v) -> str | None:
    if v["objective"] not in GROUPED:
        return None
    objective = v["objective"]
    if v["estimator"] == "pathwise":
        return (
            f"estimator='pathwise' is not allowed under objective={objective}: needs estimator=score or "
            "population (a policy-gradient / regression loss on samples)"
        )
    if v["estimator"] != "population" and v["sampling"] == "stratified":
        return (
            f"sampling='stratified' is not allowed under objective={objective}: groups are drawn on-policy "
            "(sampling=ancestral)"
        )
    if v["estimator"] != "population" and v["batch_size"] % v["group_size"]:
        return (
            f"group_size={v['group_size']} must divide batch_size={v['batch_size']} under objective={objective} "
            "(batch = groups x group_size)"
        )
    return None


#: Grouped objectives draw on-policy groups: score or population, ancestral, G divides B.
GROUP_RULE = fields.Rule(
    ("objective", "estimator", "sampling", "batch_size", "group_size"),
    _group_rule,
    "grouped objectives: score or population estimator, ancestral groups, G divides B",
)
fields.add_rule(GROUP_RULE)
