"""Exact (quadrature) expectations under mixtures: KL divergences and soft misassignment.

Shared by the population objectives (objectives/*.py), the logged metrics (metrics.py) and the
theory module (theory.py), so that each formula exists once.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from ._types import Array, Float, Scalar
from .model import Mixture
from .quadrature import expect


def mixture_expectation(
    mixture: Mixture, fn: Callable[[Float[Array, "n k"]], Float[Array, " n"]], order: int
) -> Scalar:
    r"""$E_{x \sim \text{mixture}}[fn(x)] = \beta E_{N_o}[fn] + (1-\beta) E_{N_n}[fn]$, Gauss-Hermite per component.

    Differentiable in every mixture parameter (nodes are reparameterised: x = m + s z), so the
    gradient of a population objective is the exact gradient of its quadrature value. A component
    of zero weight contributes exactly 0 (its expectation is masked, never multiplied as inf * 0).
    """
    e_old = expect(fn, mixture.old_mean, mixture.old_scale, order)
    e_new = expect(fn, mixture.new_mean, mixture.new_scale, order)
    w = mixture.old_weight
    return jnp.where(w > 0, w * e_old, 0.0) + jnp.where(w < 1, (1.0 - w) * e_new, 0.0)


def kl_divergence(p: Mixture, q: Mixture, order: int) -> Scalar:
    r"""KL(p || q) = E_p[log p - log q] by quadrature under p (theory.md section 1, objectives)."""
    return mixture_expectation(p, lambda x: p.log_prob(x) - q.log_prob(x), order)


def soft_misassignment(sample: Mixture, model: Mixture, order: int) -> Scalar:
    r"""Soft misassignment of the old mode, $\tilde\varepsilon_{o\to n} = E_{x \sim N_o^{sample}}[w_n^{model}(x)]$ (D4).

    `sample`'s old component is the data distribution (p_old = N(mu_o*, Sigma)); `model` supplies
    the responsibilities.
    """
    return expect(lambda x: 1.0 - model.old_responsibility(x), sample.old_mean, sample.old_scale, order)
