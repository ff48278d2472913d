"""Exact (quadrature) expectations under mixtures: KL divergences and soft misassignment.

Shared by the population objectives (objectives/*.py), the logged metrics (metrics.py) and the
theory module (theory.py), so that each formula exists once.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp
from jax.typing import DTypeLike

from ._types import Array, Float, Scalar
from .gaussian import _log_mix
from .model import Mixture
from .quadrature import _hermite_rule, expect


def mixture_expectation(
    mixture: Mixture, fn: Callable[[Float[Array, "n k"]], Float[Array, "n ..."]], order: int
) -> Float[Array, " ..."]:
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
    r"""KL(p || q) = E_p[log p - log q] by quadrature under p (docs/science/model.md section 1, objectives)."""
    return mixture_expectation(p, lambda x: p.log_prob(x) - q.log_prob(x), order)


def soft_misassignment(sample: Mixture, model: Mixture, order: int) -> Scalar:
    r"""Soft misassignment of the old mode, $\tilde\varepsilon_{o\to n} = E_{x \sim N_o^{sample}}[w_n^{model}(x)]$ (D4).

    `sample`'s old component is the data distribution (p_old = N(mu_o*, Sigma)); `model` supplies
    the responsibilities.
    """
    return expect(lambda x: 1.0 - model.old_responsibility(x), sample.old_mean, sample.old_scale, order)


def _log_rule(order: int, k: int, dtype: DTypeLike) -> tuple[Float[Array, "n k"], Float[Array, " n"]]:
    """Standard-normal Gauss-Hermite nodes and *log* weights (taken in float64, so the extreme
    nodes' weights (~1e-100 at order 64) stay finite in float32)."""
    nodes, weights = _hermite_rule(order, k)
    return jnp.asarray(nodes, dtype=dtype), jnp.asarray(np.log(weights), dtype=dtype)


def log_mean_exp(mixture: Mixture, fn: Callable[[Float[Array, "n k"]], Float[Array, " n"]], order: int) -> Scalar:
    r"""$\log E_{x \sim \text{mixture}}[e^{fn(x)}]$ by Gauss-Hermite quadrature, in log space.

    Per component $\log E_{N_k}[e^{fn}] = \text{logsumexp}_j(\log w_j + fn(m_k + s_k z_j))$, combined
    with the weight through gaussian.py's `_log_mix` (finite derivative at beta in {0, 1}).
    Differentiable in every mixture parameter (reparameterised nodes). Used for the entropic
    utility log E_q[e^{eta R}] (docs/science/methods.md B) and V* = beta_1 log E_{q_lag}[e^{r / beta_1}] (C).
    """
    k = mixture.old_mean.shape[-1]
    nodes, log_w = _log_rule(order, k, mixture.old_mean.dtype)

    def component(mean, scale):
        return logsumexp(log_w + fn(mean + scale * nodes))

    return _log_mix(
        mixture.old_weight,
        component(mixture.old_mean, mixture.old_scale),
        component(mixture.new_mean, mixture.new_scale),
    )


def mixture_nodes(mixture: Mixture, order: int) -> tuple[Float[Array, "n k"], Float[Array, " n"]]:
    r"""All 2 n^k quadrature points of a mixture and their log weights (log beta + log w_j for the
    old component, log(1 - beta) + log w_j for the new): the discrete distribution whose
    expectations are those of `mixture_expectation`. For quantities that need the whole node
    distribution at once (the population adaptive eta of docs/science/methods.md B); no gradient intended."""
    k = mixture.old_mean.shape[-1]
    nodes, log_w = _log_rule(order, k, mixture.old_mean.dtype)
    points = jnp.concatenate(
        [mixture.old_mean + mixture.old_scale * nodes, mixture.new_mean + mixture.new_scale * nodes]
    )
    beta = mixture.old_weight
    log_weights = jnp.concatenate([jnp.log(beta) + log_w, jnp.log1p(-beta) + log_w])
    return points, log_weights
