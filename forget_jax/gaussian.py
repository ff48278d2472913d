"""Gaussian primitives shared by the simulation, the metrics and the theory module.

Everything here is a pure function of arrays; no formula below is written anywhere else in
forget-jax (docs/science/model.md sections 1-2: components N(x; m, s^2 I), responsibilities, Bhattacharyya).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp, ndtr

from ._types import Array, Float, Scalar

#: log(2 pi) as a Python float: a jnp computation at import time would initialise the XLA backend,
#: after which `jax.distributed.initialize` (forget-jax sweep --distributed) refuses to run.
LOG_2PI = 1.8378770664093453

# Broadcast shapes are written " ..." (leading space, as " k"): ruff's UP037 would unquote a bare
# "..." into an Ellipsis, which jaxtyping rejects when the annotations are evaluated.


def logit(p: Float[Array | np.ndarray, " ..."] | float) -> Float[Array, " ..."]:
    r"""Log-odds $\operatorname{logit} p = \log p - \log(1 - p)$ (the `logit` weight parameter; model.md)."""
    p = jnp.asarray(p)
    return jnp.log(p) - jnp.log1p(-p)


def log_normal(x: Float[Array, "... k"], mean: Float[Array, " k"], scale: Scalar) -> Float[Array, " ..."]:
    r"""Log-density of the isotropic Gaussian N(x; mean, scale^2 I_k).

    $\log N = -\lVert x - m\rVert^2 / (2 s^2) - k \log s - \tfrac{k}{2}\log 2\pi$.
    """
    k = x.shape[-1]
    sq = jnp.sum(jnp.square(x - mean), axis=-1)
    return -0.5 * sq / jnp.square(scale) - k * jnp.log(scale) - 0.5 * k * LOG_2PI


def component_log_densities(
    x: Float[Array, "... k"],
    old_mean: Float[Array, " k"],
    new_mean: Float[Array, " k"],
    old_scale: Scalar,
    new_scale: Scalar,
) -> tuple[Float[Array, " ..."], Float[Array, " ..."]]:
    """(log N_o(x), log N_n(x)) for the two components of a mixture."""
    return log_normal(x, old_mean, old_scale), log_normal(x, new_mean, new_scale)


def mixture_log_density(
    x: Float[Array, "... k"],
    old_weight: Scalar,
    old_mean: Float[Array, " k"],
    new_mean: Float[Array, " k"],
    old_scale: Scalar,
    new_scale: Scalar,
) -> Float[Array, " ..."]:
    r"""$\log q(x) = \log(\beta N_o(x) + (1-\beta) N_n(x))$, computed stably with logsumexp.

    Differentiable on the closed interval beta in [0, 1] (`_log_mix`): d log q / d beta =
    (N_o - N_n) / q stays finite at beta = 0 or 1, where autodiff through log(beta) would give
    0 * inf = NaN (direct / replicator weights reach beta = 0 when weight_clip = 0; T1 (a)).
    """
    log_o, log_n = component_log_densities(x, old_mean, new_mean, old_scale, new_scale)
    return _log_mix(old_weight, log_o, log_n)


@jax.custom_jvp
def _log_mix(weight, log_o, log_n):
    """log(w e^{log_o} + (1 - w) e^{log_n}) with w in [0, 1]."""
    return jnp.logaddexp(jnp.log(weight) + log_o, jnp.log1p(-weight) + log_n)


@_log_mix.defjvp
def _log_mix_jvp(primals, tangents):
    r"""d log q = ((N_o - N_n) dw + w N_o d log_o + (1 - w) N_n d log_n) / q, written with the ratios
    N_k / q = exp(log_k - log q) (capped just below the largest finite float, reached only where
    w = 0 or 1 and the exact derivative overflows), so no 1/w or 1/(1-w) appears."""
    weight, log_o, log_n = primals
    d_weight, d_o, d_n = tangents
    out = _log_mix(weight, log_o, log_n)
    cap = jnp.log(jnp.finfo(out.dtype).max) - 2.0
    ratio_o = jnp.exp(jnp.minimum(log_o - out, cap))
    ratio_n = jnp.exp(jnp.minimum(log_n - out, cap))
    tangent = (ratio_o - ratio_n) * d_weight + weight * ratio_o * d_o + (1 - weight) * ratio_n * d_n
    return out, tangent.astype(out.dtype)


def old_responsibility(
    x: Float[Array, "... k"],
    old_weight: Scalar,
    old_mean: Float[Array, " k"],
    new_mean: Float[Array, " k"],
    old_scale: Scalar,
    new_scale: Scalar,
) -> Float[Array, " ..."]:
    r"""Responsibility of the old component, $w_o(x) = \beta N_o(x) / q(x)$ (docs/science/model.md section 1)."""
    log_o, log_n = component_log_densities(x, old_mean, new_mean, old_scale, new_scale)
    a = jnp.log(old_weight) + log_o
    b = jnp.log1p(-old_weight) + log_n
    return jnp.exp(a - logsumexp(jnp.stack([a, b]), axis=0))


def bhattacharyya_coefficient(
    mean_1: Float[Array, "... k"], mean_2: Float[Array, "... k"], scale: Scalar | float
) -> Float[Array, " ..."]:
    r"""Bhattacharyya coefficient of two equal-covariance Gaussians (docs/science/model.md D3).

    $BC = \int \sqrt{N_1 N_2}\,dx = \exp(-\Delta_{12}^2/8)$ with the Mahalanobis distance
    $\Delta_{12} = \lVert m_1 - m_2\rVert / s$.
    """
    sq = jnp.sum(jnp.square(mean_1 - mean_2), axis=-1) / jnp.square(scale)
    return jnp.exp(-sq / 8.0)


def hard_misassignment(
    sample_mean: Float[Array, " k"],
    sample_scale: Scalar | float,
    old_mean: Float[Array, " k"],
    new_mean: Float[Array, " k"],
    old_weight: Float[Array | np.ndarray, " ..."] | float,
    scale: Scalar | float,
) -> Float[Array, " ..."]:
    r"""P_{x ~ N(sample_mean, sample_scale^2 I)}[w_n(x) > 1/2] for a mixture with equal scales.

    w_n > 1/2  <=>  (x - (m_o + m_n)/2) . v / s^2 > ln(beta / (1 - beta)), v = m_n - m_o, so with
    t = (x - mid) . v/|v| ~ N((mu - mid) . v/|v|, s_x^2):
    P = Phi_bar((s^2 ln(beta/(1-beta)) / |v| - (mu - mid) . v/|v|) / s_x).
    With mu = m_o and s_x = s this is D4's Phi_bar(Delta/2 + ln(beta/(1-beta)) / Delta).
    """
    v = jnp.asarray(new_mean) - jnp.asarray(old_mean)
    norm = jnp.linalg.norm(v)
    safe = jnp.where(norm > 0, norm, 1.0)
    direction = v / safe
    mid = 0.5 * (jnp.asarray(old_mean) + jnp.asarray(new_mean))
    offset = jnp.dot(jnp.asarray(sample_mean) - mid, direction)
    log_odds = logit(old_weight)
    threshold = jnp.square(scale) * log_odds / safe
    p = 1.0 - ndtr((threshold - offset) / sample_scale)
    return jnp.where(norm > 0, p, jnp.where(old_weight < 0.5, 1.0, 0.0))


def mixture_log_density_vjp(
    x: Float[Array, "B k"],
    cotangent: Float[Array, " B"],
    old_weight: Scalar,
    old_mean: Float[Array, " k"],
    new_mean: Float[Array, " k"],
    old_scale: Scalar,
    new_scale: Scalar,
    *,
    logit_weight: bool,
) -> tuple[
    Float[Array, " B"], tuple[Scalar, Float[Array, " k"], Float[Array, " k"], Scalar, Scalar], Float[Array, "B k"]
]:
    r"""log q(x_i) and the vector-Jacobian product of $\sum_i c_i \log q(x_i)$, hand-written (the
    autodiff of `mixture_log_density` is its test oracle: tests/test_lean_step.py).

    With $a_o = \log\beta + \log N_o(x)$, $a_n = \log(1-\beta) + \log N_n(x)$,
    $\log q = \operatorname{logaddexp}(a_o, a_n)$ and the responsibilities
    $r_o = \sigma(a_o - a_n)$, $r_n = 1 - r_o$ (one exp and one log1p per sample):

    * weight: $\partial_\beta \log q = (N_o - N_n)/q = r_o/\beta - r_n/(1-\beta)$; in the logit
      parameter $a = \operatorname{logit}\beta$: $\partial_a \log q = r_o - \beta$;
    * means: $\partial_{m_k} \log q = r_k (x - m_k) / s_k^2$;
    * scales: $\partial_{s_k} \log q = r_k (\lVert x - m_k\rVert^2 / s_k^3 - k / s_k)$;
    * samples: $\nabla_x \log q = -\sum_k r_k (x - m_k) / s_k^2$.

    Args:
        x: B samples; cotangent: c_i; the mixture's parameters (beta in [0, 1]);
        logit_weight: differentiate in a = logit(beta) (True) or in beta itself (False; at
            beta = 0 or 1 the ratio form exp(log N_k - log q) is used, as `_log_mix` does).

    Returns:
        (log q(x) of shape (B,), (d_weight, d_old_mean, d_new_mean, d_old_scale, d_new_scale),
        c_i * grad_x log q(x_i) of shape (B, k)).
    """
    k = x.shape[-1]
    d_old, d_new = x - old_mean, x - new_mean
    sq_old, sq_new = jnp.sum(jnp.square(d_old), axis=-1), jnp.sum(jnp.square(d_new), axis=-1)
    log_o, log_n = component_log_densities(x, old_mean, new_mean, old_scale, new_scale)
    a_o, a_n = jnp.log(old_weight) + log_o, jnp.log1p(-old_weight) + log_n
    gap = a_o - a_n
    e = jnp.exp(-jnp.abs(gap))  # in [0, 1]
    log_q = jnp.maximum(a_o, a_n) + jnp.log1p(e)
    r_old = jnp.where(gap >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    r_new = 1.0 - r_old
    if logit_weight:
        d_weight = jnp.sum(cotangent * (r_old - old_weight))
    else:
        ratio = jnp.exp(log_o - log_q) - jnp.exp(log_n - log_q)
        d_weight = jnp.sum(cotangent * ratio)
    w_old = cotangent * r_old / jnp.square(old_scale)
    w_new = cotangent * r_new / jnp.square(new_scale)
    d_old_mean = jnp.sum(w_old[:, None] * d_old, axis=0)
    d_new_mean = jnp.sum(w_new[:, None] * d_new, axis=0)
    d_old_scale = jnp.sum(w_old * sq_old) / old_scale - k * jnp.sum(cotangent * r_old) / old_scale
    d_new_scale = jnp.sum(w_new * sq_new) / new_scale - k * jnp.sum(cotangent * r_new) / new_scale
    d_x = -(w_old[:, None] * d_old + w_new[:, None] * d_new)
    return log_q, (d_weight, d_old_mean, d_new_mean, d_old_scale, d_new_scale), d_x
