"""Reward presets shared by `ttt_discover` and `oapl` (methods.md B "Translation", (a)-(c); C uses
"the same reward presets as section B").

* `quadratic`: R(y) = -|y - mu_R|^2 / (2 rho^2), a bump centred at mu_R = mu_n* + reward_offset e_1
  with width rho = reward_width; localised, so it reaches the old mode only through overlap
  (theory.md T8 "Drift").
* `linear`: R(y) = w . y with w = reward_slope e_1; global, so it tilts (moves) the old mean too.
* `log_new`: R(y) = log p_new*(y) = log N(y; mu_n*, s_n*^2 I), a quadratic of width s_n* plus a
  constant.

The tilt closed forms for these (the mass factors M = E_N[e^{eta R}] of methods.md section 0) are
in theory.py.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from .._types import Array, Float, Scalar
from ..gaussian import log_normal
from ..model import axis, target_mixture
from ..spec import Hyper, Setup


class Reward(eqx.Module):
    """A reward function y -> R(y) of one preset (`kind` is static)."""

    kind: str = eqx.field(static=True)
    center: Float[Array, " k"]
    slope: Float[Array, " k"]
    width: Scalar

    def __call__(self, x: Float[Array, "... k"]) -> Float[Array, "..."]:
        if self.kind == "linear":
            return x @ self.slope
        if self.kind == "log_new":
            return log_normal(x, self.center, self.width)
        return -0.5 * jnp.sum(jnp.square(x - self.center), axis=-1) / jnp.square(self.width)

    def project(self, basis: Float[Array, "d k"], origin: Float[Array, " d"]) -> "Reward":
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
        return Reward("linear", jnp.zeros_like(e1), hyper.reward_slope * e1, jnp.asarray(hyper.reward_width, setup.dtype))
    return Reward("quadratic", target.new_mean + hyper.reward_offset * e1, jnp.zeros_like(e1),
                  jnp.asarray(hyper.reward_width, setup.dtype))
