"""Pieces shared by every objective: the estimate type, the noise of one step and the samplers
built on it (every Monte Carlo sample of forget-jax is `components_at` / `ancestral_at` of a
`Noise`), the leave-one-out baseline and the frame for population quadrature.

A step's randomness is split from its arithmetic (docs/science/objectives.md, "Noise"): an
objective's `draw(key, setup) -> Noise` makes standard draws from the step's PRNG key only
(eps ~ N(0, I_d), u ~ U(0, 1)), and its estimate maps (theta, Noise) to samples
(x = m_z + s_z eps, z = old iff u < beta). The draws depend on the key and the static shapes
only, never on theta or the configuration's values, so grid points that share a seed share
them, and the training loop may draw them once per seed (train.py, seed-shared noise).
"""

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


class Noise(eqx.Module):
    """The standard draws of one step (fields an objective does not use are None).

    Attributes:
        eps: standard normal draws, shape (B, d): the reparameterised x = m + s eps.
        label: uniform draws on [0, 1), shape (B,): label z = old iff label < beta.
        replay: uniform draws on [0, 1), shape (B,): sample i replayed iff replay < lambda.
    """

    eps: Float[Array, "B d"] | None = None
    label: Float[Array, " B"] | None = None
    replay: Float[Array, " B"] | None = None


def ancestral_noise(key: PRNGKeyArray, setup: Setup) -> Noise:
    """Noise of `sample_ancestral`: (label key, noise key) = split(key)."""
    label_key, noise_key = jax.random.split(key)
    return Noise(eps=standard_normal(noise_key, setup), label=uniform(label_key, setup))


def stratified_noise(key: PRNGKeyArray, setup: Setup) -> Noise:
    """Noise of stratified sampling: eps from split(key)[1] (the ancestral noise key)."""
    return Noise(eps=standard_normal(jax.random.split(key)[1], setup))


def uniform(key: PRNGKeyArray, setup: Setup) -> Float[Array, " B"]:
    return jax.random.uniform(key, (setup.batch_size,), dtype=setup.dtype)


def standard_normal(key: PRNGKeyArray, setup: Setup) -> Float[Array, "B d"]:
    return jax.random.normal(key, (setup.batch_size, setup.dim), dtype=setup.dtype)


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


def components_at(mixture: Mixture, eps: Float[Array, "B d"]) -> tuple[Float[Array, "B d"], Float[Array, "B d"]]:
    """Both components of a mixture at the same standard-normal draws eps (stratified sampling,
    docs/science/objectives.md): (m_o + s_o eps, m_n + s_n eps). Differentiable in the means and
    scales (reparameterised); pass a stop-gradient mixture for samples that are not a function of
    theta."""
    return mixture.old_mean + mixture.old_scale * eps, mixture.new_mean + mixture.new_scale * eps


def ancestral_at(mixture: Mixture, noise: Noise) -> tuple[Float[Array, "B d"], Bool[Array, " B"]]:
    """B ancestral draws of a two-component mixture (docs/science/methods.md section 0, regime (i)):
    label z = old iff noise.label < beta (z ~ Bern(beta)), then x = m_z + s_z eps. Returns
    (x, is_old). The label is not differentiable; x is reparameterised within its component (the
    pathwise estimator's x_theta), so pass a stop-gradient mixture for on-policy samples that are
    not a function of theta. This is the one ancestral sampler of forget-jax."""
    assert noise.eps is not None and noise.label is not None
    x_old, x_new = components_at(mixture, noise.eps)
    is_old = noise.label < mixture.old_weight
    return jnp.where(is_old[:, None], x_old, x_new), is_old


def sample_ancestral(
    mixture: Mixture, key: PRNGKeyArray, setup: Setup
) -> tuple[Float[Array, "B d"], Bool[Array, " B"]]:
    """`ancestral_at` with the noise of `ancestral_noise(key)`."""
    return ancestral_at(mixture, ancestral_noise(key, setup))


def project_frame(setup: Setup) -> tuple[Float[Array, "d 1"], Float[Array, " d"]]:
    """(basis, origin) of `population_frame`: e_1 and the origin."""
    return axis(setup.dim, setup.dtype)[:, None], jnp.zeros((setup.dim,), setup.dtype)
