"""The two-mode Gaussian mixture: target p*, learner q_theta, and its parameterisations.

`learner_modes: 1` replaces the learner by one Gaussian N(m_o, s_o^2 I) (CRNC25's uni-modal
contrast, docs/science/studies.md section 5; `learner_mixture`).

docs/science/model.md section 1: q_theta(x) = beta N(x; m_o, s_o^2 I) + (1 - beta) N(x; m_n, s_n^2 I),
p* = beta* N(mu_o*, s_o*^2 I) + (1 - beta*) N(mu_n*, s_n*^2 I), all means on the separation axis e_1
at initialisation.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from . import gaussian
from ._types import Array, Float, Scalar
from .spec import Hyper, Setup


class Mixture(eqx.Module):
    """A two-component isotropic Gaussian mixture (old component first), as a distribution."""

    old_weight: Scalar
    old_mean: Float[Array, " k"]
    new_mean: Float[Array, " k"]
    old_scale: Scalar
    new_scale: Scalar

    def log_prob(self, x: Float[Array, "... k"]) -> Float[Array, " ..."]:
        return gaussian.mixture_log_density(
            x, self.old_weight, self.old_mean, self.new_mean, self.old_scale, self.new_scale
        )

    def old_responsibility(self, x: Float[Array, "... k"]) -> Float[Array, " ..."]:
        return gaussian.old_responsibility(
            x, self.old_weight, self.old_mean, self.new_mean, self.old_scale, self.new_scale
        )

    def component_log_probs(self, x: Float[Array, "... k"]) -> tuple[Float[Array, " ..."], Float[Array, " ..."]]:
        return gaussian.component_log_densities(x, self.old_mean, self.new_mean, self.old_scale, self.new_scale)

    def project(self, basis: Float[Array, "d k"], origin: Float[Array, " d"]) -> Mixture:
        """The same mixture in the coordinates y = basis^T (x - origin) (exact for densities ratios
        when the span of `basis` contains every mean and the scales are equal; quadrature.py)."""
        return Mixture(
            self.old_weight,
            (self.old_mean - origin) @ basis,
            (self.new_mean - origin) @ basis,
            self.old_scale,
            self.new_scale,
        )


class LearnerParams(eqx.Module):
    """Trainable parameters theta. `weight` is a = logit(beta) under the `logit` update rule and
    beta itself under `direct` / `replicator` (docs/science/model.md section 1, update rules (a)-(c))."""

    weight: Scalar
    old_mean: Float[Array, " d"]
    new_mean: Float[Array, " d"]
    old_scale: Scalar
    new_scale: Scalar


def axis(dim: int, dtype) -> Float[Array, " d"]:
    """Unit vector e_1 along which the target means are placed."""
    return jnp.zeros((dim,), dtype).at[0].set(1.0)


def new_mode_position(target_old_mean, separation, target_old_scale):
    """mu_n* along e_1: mu_o* + Delta s_o* (docs/science/model.md section 1). The one place the
    new mode is placed; works on floats, NumPy and JAX arrays."""
    return target_old_mean + separation * target_old_scale


def target_mixture(hyper: Hyper, setup: Setup) -> Mixture:
    """p* of docs/science/model.md section 1: mu_o* = target_old_mean e_1, mu_n* = mu_o* + Delta s_o e_1."""
    e1 = axis(setup.dim, setup.dtype)
    old_mean = hyper.target_old_mean * e1
    new_mean = new_mode_position(hyper.target_old_mean, hyper.separation, hyper.target_old_scale) * e1
    return Mixture(hyper.target_old_weight, old_mean, new_mean, hyper.target_old_scale, hyper.target_new_scale)


def training_mixture(hyper: Hyper, setup: Setup) -> Mixture:
    """p_lambda = (1 - lambda) N(mu_n*, s_n^2) + lambda N(mu_o*, s_o^2), the FKL training data with
    replay ratio lambda as a two-component mixture of old weight lambda (docs/science/model.md D5)."""
    target = target_mixture(hyper, setup)
    return Mixture(hyper.replay_ratio, target.old_mean, target.new_mean, target.old_scale, target.new_scale)


def old_task(target: Mixture) -> Mixture:
    """p_old as a (degenerate) mixture with all mass on the old component."""
    return Mixture(
        jnp.ones_like(target.old_weight), target.old_mean, target.new_mean, target.old_scale, target.new_scale
    )


def old_weight(params: LearnerParams, setup: Setup) -> Scalar:
    """beta from the stored weight parameter."""
    return jax.nn.sigmoid(params.weight) if setup.weight_param == "logit" else params.weight


def weight_parameter(beta: Scalar, setup: Setup) -> Scalar:
    """Inverse of `old_weight`: the stored parameter for a given beta."""
    return gaussian.logit(beta) if setup.weight_param == "logit" else beta


def learner_mixture(params: LearnerParams, setup: Setup) -> Mixture:
    """q_theta as a distribution.

    Two modes (`learner_modes: 2`): beta N(m_o, s_o^2 I) + (1 - beta) N(m_n, s_n^2 I).

    One mode (`learner_modes: 1`, CRNC25's uni-modal learner, docs/science/studies.md section 5):
    q_theta = N(m_o, s_o^2 I), the old slot with its weight held at exactly 1. The new slot carries
    a stop-gradient copy of the same Gaussian with weight 0, so every density, sample and
    quadrature of the two-slot code is that of the single Gaussian (a zero-weight component
    contributes exactly 0: `gaussian._log_mix`, `divergence.mixture_expectation`), and the
    unused parameters (weight, m_n, s_n) get an exactly zero gradient: nothing is learned for a
    component that does not exist. The single Gaussian is the old group (old learning-rate
    scale, `train_old_mean`), i.e. the pre-trained model's one mode that has to move to learn
    the new task; `metrics.measure` defines the forgetting metrics of this learner.
    """
    if setup.learner_modes == 1:
        sg = jax.lax.stop_gradient
        one = jnp.ones((), setup.dtype)
        return Mixture(one, params.old_mean, sg(params.old_mean), params.old_scale, sg(params.old_scale))
    return Mixture(old_weight(params, setup), params.old_mean, params.new_mean, params.old_scale, params.new_scale)


def init_params(hyper: Hyper, setup: Setup) -> LearnerParams:
    """theta(0): old and new means at the target means plus the configured offsets along e_1."""
    target = target_mixture(hyper, setup)
    e1 = axis(setup.dim, setup.dtype)
    return LearnerParams(
        weight=weight_parameter(hyper.init_old_weight, setup),
        old_mean=target.old_mean + hyper.init_old_offset * e1,
        new_mean=target.new_mean + hyper.init_new_offset * e1,
        old_scale=hyper.init_old_scale,
        new_scale=hyper.init_new_scale,
    )


def optimum_params(hyper: Hyper, setup: Setup) -> LearnerParams:
    """theta* = (beta*, mu_o*, mu_n*, s_o*, s_n*) of the reverse-KL objective (T3)."""
    target = target_mixture(hyper, setup)
    return LearnerParams(
        weight=weight_parameter(target.old_weight, setup),
        old_mean=target.old_mean,
        new_mean=target.new_mean,
        old_scale=target.old_scale,
        new_scale=target.new_scale,
    )
