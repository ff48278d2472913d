"""Closed forms and predictions of theory.md (sections 2-3), built on the same primitives as the
simulation (gaussian.py, divergence.py, the population objectives), so no formula exists twice.

Every function accepts JAX arrays or Python floats and is jit/vmap-compatible unless noted.
"""

from __future__ import annotations

import contextlib
import math

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr

from ._types import Array, Float, Scalar
from .gaussian import bhattacharyya_coefficient
from .spec import Setup, make_hyper

# ---------------------------------------------------------------------------------------------
# D3: overlap


def bhattacharyya(separation) -> Scalar:
    r"""BC of two equal-covariance Gaussians at Mahalanobis distance Delta: exp(-Delta^2 / 8) (D3)."""
    sep = jnp.asarray(separation)
    return bhattacharyya_coefficient(sep[..., None], jnp.zeros_like(sep)[..., None], 1.0)


# ---------------------------------------------------------------------------------------------
# D4: misassignment


def hard_misassignment(sample_mean, sample_scale, old_mean, new_mean, old_weight, scale) -> Scalar:
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
    log_odds = jnp.log(old_weight) - jnp.log1p(-old_weight)
    threshold = jnp.square(scale) * log_odds / safe
    p = 1.0 - ndtr((threshold - offset) / sample_scale)
    return jnp.where(norm > 0, p, jnp.where(old_weight < 0.5, 1.0, 0.0))


def misassignment_old_to_new(old_weight, separation) -> Scalar:
    r"""epsilon_{o->n} = Phi_bar(Delta/2 + ln(beta/(1-beta))/Delta) (D4), via `hard_misassignment`."""
    sep = jnp.asarray(separation, dtype=jnp.result_type(float))
    zero = jnp.zeros((1,), sep.dtype)
    return hard_misassignment(zero, 1.0, zero, sep[None], old_weight, 1.0)


def misassignment_new_to_old(old_weight, separation) -> Scalar:
    r"""epsilon_{n->o} = Phi_bar(Delta/2 - ln(beta/(1-beta))/Delta) (D4)."""
    sep = jnp.asarray(separation, dtype=jnp.result_type(float))
    zero = jnp.zeros((1,), sep.dtype)
    return 1.0 - hard_misassignment(sep[None], 1.0, zero, sep[None], old_weight, 1.0)


def soft_misassignment(old_weight, separation, order: int = 96) -> Scalar:
    r"""epsilon~_{o->n} = E_{N_o}[w_n(x)] by quadrature (D4), with the divergence.py primitive."""
    from .divergence import soft_misassignment as _soft
    from .model import Mixture

    sep = jnp.asarray(separation, dtype=jnp.result_type(float))
    zero = jnp.zeros((1,), sep.dtype)
    one = jnp.ones((), sep.dtype)
    mixture = Mixture(jnp.asarray(old_weight, sep.dtype), zero, sep[None], one, one)
    return _soft(mixture, mixture, order)


def hard_misassignment_bound(old_weight, separation) -> Scalar:
    r"""epsilon_{o->n} <= sqrt((1-beta)/beta) BC (D4)."""
    return jnp.sqrt((1 - old_weight) / old_weight) * bhattacharyya(separation)


def soft_misassignment_bound(old_weight, separation) -> Scalar:
    r"""epsilon~_{o->n} <= (1/2) sqrt((1-beta)/beta) BC (D4)."""
    return 0.5 * hard_misassignment_bound(old_weight, separation)


def bayes_error_bound(old_weight, separation) -> Scalar:
    r"""beta eps_{o->n} + (1-beta) eps_{n->o} <= sqrt(beta(1-beta)) BC (D4)."""
    return jnp.sqrt(old_weight * (1 - old_weight)) * bhattacharyya(separation)


# ---------------------------------------------------------------------------------------------
# T2: forward KL with replay; T6 / D6: starvation


def fkl_replay_optimum(replay_ratio) -> Scalar:
    """Population minimiser of KL(p_lambda || q_theta): beta = lambda, means at truth (T2)."""
    return jnp.asarray(replay_ratio)


def starvation_probability(old_weight, replay_ratio, batch_size) -> Scalar:
    r"""P(no old-mode sample in a batch) = ((1 - lambda)(1 - beta))^B (D6, T6)."""
    return jnp.power((1 - jnp.asarray(replay_ratio)) * (1 - jnp.asarray(old_weight)), batch_size)


def batch_size_for_starvation(old_weight: float, replay_ratio: float, delta: float) -> int:
    r"""Smallest B with ((1-lambda)(1-beta))^B <= delta: B = ceil(ln(1/delta) / -ln((1-lambda)(1-beta))) (T6)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta={delta!r} must lie in (0, 1)")
    rate = -math.log((1 - replay_ratio) * (1 - old_weight))
    return max(1, math.ceil(math.log(1 / delta) / rate - 1e-12))


def replay_weight_bound(replay_ratio) -> Scalar:
    """omega = q / ((1-lambda) q + lambda r) <= 1 / (1 - lambda) (D5, T6)."""
    return 1.0 / (1.0 - jnp.asarray(replay_ratio))


# ---------------------------------------------------------------------------------------------
# T1: forward-KL time courses (new data only, separated limit, means fixed)


def fkl_weight_euclidean(t, initial_weight, learning_rate) -> Scalar:
    r"""(a) direct GD, d beta/dt = -1/(1-beta): (1-beta)^2 = (1-beta_0)^2 + 2 eta t, beta = 0 after
    t* = beta_0 (2 - beta_0) / (2 eta) (T1)."""
    value = 1.0 - jnp.sqrt((1 - initial_weight) ** 2 + 2 * learning_rate * jnp.asarray(t))
    return jnp.maximum(value, 0.0)


def fkl_weight_logit(t, initial_weight, learning_rate) -> Scalar:
    r"""(b) logit GD, d beta/dt ~ -beta^2: beta(t) ~ 1 / (1/beta_0 + eta t) = Theta(1/t) (T1)."""
    return 1.0 / (1.0 / initial_weight + learning_rate * jnp.asarray(t))


def fkl_weight_replicator(t, initial_weight, learning_rate) -> Scalar:
    r"""(c) replicator, d beta/dt ~ -beta: beta(t) = beta_0 exp(-eta t) (T1)."""
    return initial_weight * jnp.exp(-learning_rate * jnp.asarray(t))


def fkl_weight_zero_time(initial_weight, learning_rate) -> Scalar:
    """t* = beta_0 (2 - beta_0) / (2 eta): steps until direct GD hits beta = 0 (T1 (a))."""
    return initial_weight * (2 - initial_weight) / (2 * learning_rate)


# ---------------------------------------------------------------------------------------------
# T5: local geometry of reverse KL


def _precision(x64: bool):
    """float64 for the duration of a theory computation, without flipping the global switch."""
    return jax.enable_x64(True) if x64 else contextlib.nullcontext()


def _flat_objective(setup: Setup, separation, target_old_weight):
    """L_R as a function of the flat vector theta = (weight parameter, m_o (d), m_n (d)) around
    theta*, using the population objective of objectives/reverse_kl.py itself."""
    from .model import LearnerParams, optimum_params
    from .objectives.reverse_kl import population_kl

    hyper = make_hyper(setup.dtype, separation=separation, target_old_weight=target_old_weight)
    star = optimum_params(hyper, setup)
    def loss(theta):
        params = LearnerParams(theta[0], theta[1 : 1 + setup.dim], theta[1 + setup.dim :], star.old_scale, star.new_scale)
        return population_kl(params, hyper, setup)

    theta_star = jnp.concatenate([star.weight[None], star.old_mean, star.new_mean])
    return loss, theta_star, hyper


def rkl_hessian(separation, target_old_weight, weight_param: str = "logit", dim: int = 1, x64: bool = True) -> Float[Array, "p p"]:
    r"""Hessian of L_R = KL(q_theta || p*) at theta* (population, exact quadrature); equals the
    Fisher information I(theta*) there (T5). theta = (a or beta, m_o, m_n)."""
    setup = Setup(objective="rkl", estimator="population", weight_param=weight_param, dim=dim, x64=x64)
    with _precision(x64):
        loss, theta_star, _ = _flat_objective(setup, separation, target_old_weight)
        return jax.hessian(loss)(theta_star)


def fisher_information(separation, target_old_weight, weight_param: str = "logit", dim: int = 1,
                       order: int = 96, x64: bool = True) -> Float[Array, "p p"]:
    r"""I(theta*) = E_{p*}[grad log q grad log q^T] at q = p*, by quadrature (T5)."""
    setup = Setup(objective="rkl", estimator="population", weight_param=weight_param, dim=dim, x64=x64)
    with _precision(x64):
        return _fisher(setup, separation, target_old_weight, dim, order)


def _fisher(setup, separation, target_old_weight, dim, order):
    from .divergence import mixture_expectation
    from .model import LearnerParams, learner_mixture, optimum_params

    hyper = make_hyper(setup.dtype, separation=separation, target_old_weight=target_old_weight)
    star = optimum_params(hyper, setup)
    theta_star = jnp.concatenate([star.weight[None], star.old_mean, star.new_mean])
    p_star = learner_mixture(star, setup)

    def log_q(theta, x):
        params = LearnerParams(theta[0], theta[1 : 1 + dim], theta[1 + dim :], star.old_scale, star.new_scale)
        return learner_mixture(params, setup).log_prob(x)

    def outer(xs):
        scores = jax.vmap(lambda x: jax.grad(log_q)(theta_star, x))(xs)
        return scores[:, :, None] * scores[:, None, :]

    return mixture_expectation(p_star, outer, order)


def predicted_contraction(hessian: Float[Array, "p p"], learning_rate: float) -> Scalar:
    r"""Per-step contraction of GD near theta*: spectral radius of I - eta H; equals 1 - eta mu with
    mu = lambda_min(H) when eta <= 1 / lambda_max (T5)."""
    eigs = jnp.linalg.eigvalsh(hessian)
    return jnp.max(jnp.abs(1.0 - learning_rate * eigs))


def smallest_eigenvalue(hessian: Float[Array, "p p"]) -> Scalar:
    """mu = lambda_min(I(theta*)), the predicted local rate of gradient flow (T5)."""
    return jnp.linalg.eigvalsh(hessian)[0]


def separated_limit_fisher(target_old_weight, weight_param: str = "logit") -> Float[Array, "3 3"]:
    r"""I(theta*) in the separated limit, d = 1: diag(beta*(1-beta*) [logit] or 1/(beta*(1-beta*))
    [direct], beta*, 1 - beta*) (T5)."""
    b = jnp.asarray(target_old_weight)
    w = b * (1 - b) if weight_param == "logit" else 1 / (b * (1 - b))
    return jnp.diag(jnp.stack([w, b, 1 - b]))


def rkl_drift_envelope(min_separation) -> Scalar:
    r"""exp(-Delta_min^2 / 8): the overlap scale of the reverse-KL old-mean drift (T4)."""
    return bhattacharyya(min_separation)
