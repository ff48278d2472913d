"""Pieces shared by every objective: the estimate type, the sampling helpers (every Monte Carlo
draw of forget-jax goes through `draw_ancestral` / `component_draws`), the leave-one-out
baseline and the frame for population quadrature."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .._types import Array, Bool, Float, PRNGKeyArray, Scalar
from ..model import Mixture, axis
from ..spec import Setup


class Estimate(eqx.Module):
    """What one objective evaluation returns besides its differentiable surrogate.

    Attributes:
        loss: the objective value estimated on this batch (exact for `population`).
        starved: True when the batch holds no old-mode sample (docs/science/model.md D6; replayed old
            samples count as old-mode). Always False for stratified sampling.
        max_importance_weight: largest replay weight omega in the batch (T6); 1 without replay.
    """

    loss: Scalar
    starved: Bool[Array, ""]
    max_importance_weight: Scalar


def standard_normal(key: PRNGKeyArray, setup: Setup) -> Float[Array, "B d"]:
    return jax.random.normal(key, (setup.batch_size, setup.dim), dtype=setup.dtype)


def bernoulli(key: PRNGKeyArray, prob: Scalar, setup: Setup) -> Bool[Array, " B"]:
    return jax.random.uniform(key, (setup.batch_size,), dtype=setup.dtype) < prob


def leave_one_out_mean(values: Float[Array, " B"], weights: Float[Array, " B"] | None = None) -> Float[Array, " B"]:
    r"""Baseline $b_i = \sum_{j\ne i} w_j v_j / \sum_{j \ne i} w_j$; independent of sample i, so the
    score estimator stays unbiased. Zero when B = 1."""
    if weights is None:
        weights = jnp.ones_like(values)
    total_w = jnp.sum(weights) - weights
    total_v = jnp.sum(weights * values) - weights * values
    return jnp.where(total_w > 0, total_v / jnp.where(total_w > 0, total_w, 1.0), 0.0)


def population_frame(mixtures: tuple[Any, ...], setup: Setup) -> tuple[Any, ...]:
    """Project mixtures (anything with `project(basis, origin)`: a `Mixture`, the SDFT teacher)
    onto the separation axis e_1 (k = 1) for population quadrature.

    Exact in d = 1; in d > 1 exact when every mean lies on the axis and scales are equal, which
    population dynamics preserve (inits are offsets along e_1 and the gradient's orthogonal part
    vanishes by symmetry). Config validation enforces equal, fixed scales for d > 1.
    """
    basis, origin = project_frame(setup)
    return tuple(m.project(basis, origin) for m in mixtures)


def component_draws(
    mixture: Mixture, noise_key: PRNGKeyArray, setup: Setup
) -> tuple[Float[Array, "B d"], Float[Array, "B d"]]:
    """Both components of a mixture at the same B standard-normal draws eps (stratified sampling,
    docs/science/objectives.md): (m_o + s_o eps, m_n + s_n eps). Differentiable in the means and
    scales (reparameterised); pass a stop-gradient mixture for samples that are not a function of
    theta."""
    eps = standard_normal(noise_key, setup)
    return mixture.old_mean + mixture.old_scale * eps, mixture.new_mean + mixture.new_scale * eps


def draw_ancestral(
    mixture: Mixture, label_key: PRNGKeyArray, noise_key: PRNGKeyArray, setup: Setup
) -> tuple[Float[Array, "B d"], Bool[Array, " B"]]:
    """B ancestral draws of a two-component mixture (docs/science/methods.md section 0, regime (i)): label
    z ~ Bern(beta) (True = old component) from `label_key`, then x = m_z + s_z eps with eps from
    `noise_key`. Returns (x, is_old). The label is not differentiable; x is reparameterised within
    its component (the pathwise estimator's x_theta), so pass a stop-gradient mixture for on-policy
    samples that are not a function of theta. This is the one ancestral sampler of forget-jax."""
    x_old, x_new = component_draws(mixture, noise_key, setup)
    is_old = bernoulli(label_key, mixture.old_weight, setup)
    return jnp.where(is_old[:, None], x_old, x_new), is_old


def sample_ancestral(
    mixture: Mixture, key: PRNGKeyArray, setup: Setup
) -> tuple[Float[Array, "B d"], Bool[Array, " B"]]:
    """`draw_ancestral` with the label and noise keys split from one key."""
    label_key, noise_key = jax.random.split(key)
    return draw_ancestral(mixture, label_key, noise_key, setup)


def project_frame(setup: Setup) -> tuple[Float[Array, "d 1"], Float[Array, " d"]]:
    """(basis, origin) of `population_frame`: e_1 and the origin."""
    return axis(setup.dim, setup.dtype)[:, None], jnp.zeros((setup.dim,), setup.dtype)
