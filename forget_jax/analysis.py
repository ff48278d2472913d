"""Engine-derived quantities: what is obtained by differentiating or running the engine's own
objectives, as opposed to the closed forms of theory.py.

* `rkl_hessian`: the Hessian of the simulated population reverse KL at theta* (T5 predicts it
  equals the Fisher information; docs/science/claims.md T5).
* `fisher_information`: E_{p*}[grad log q grad log q^T] of the model's own log-density, by
  quadrature (T5).
* `adaptive_eta`: the engine's TTT-Discover eta solver (docs/science/methods.md B step 1).

These are measurements of the engine, checked in tests against the closed forms of theory.py
(e.g. `theory.separated_limit_fisher`) and independent computations; theory.py never imports
this module.
"""

from __future__ import annotations

import contextlib
import math

import jax
import jax.numpy as jnp

from ._types import Array, Float
from .divergence import mixture_expectation
from .model import LearnerParams, learner_mixture, optimum_params
from .objectives.reverse_kl import population_kl
from .objectives.ttt_discover import group_eta
from .spec import Setup, make_hyper


def _precision(x64: bool):
    """float64 for the duration of a theory computation, without flipping the global switch."""
    return jax.enable_x64(True) if x64 else contextlib.nullcontext()


def _flat_objective(setup: Setup, separation, target_old_weight):
    """L_R as a function of the flat vector theta = (weight parameter, m_o (d), m_n (d)) around
    theta*, using the population objective of objectives/reverse_kl.py itself."""
    hyper = make_hyper(setup.dtype, separation=separation, target_old_weight=target_old_weight)
    star = optimum_params(hyper, setup)

    def loss(theta):
        params = LearnerParams(
            theta[0], theta[1 : 1 + setup.dim], theta[1 + setup.dim :], star.old_scale, star.new_scale
        )
        return population_kl(params, hyper, setup)

    theta_star = jnp.concatenate([star.weight[None], star.old_mean, star.new_mean])
    return loss, theta_star, hyper


def rkl_hessian(
    separation, target_old_weight, weight_param: str = "logit", dim: int = 1, x64: bool = True
) -> Float[Array, "p p"]:
    r"""Hessian of L_R = KL(q_theta || p*) at theta* (population, exact quadrature); equals the
    Fisher information I(theta*) there (T5). theta = (a or beta, m_o, m_n)."""
    setup = Setup(objective="rkl", estimator="population", weight_param=weight_param, dim=dim, x64=x64)
    with _precision(x64):
        loss, theta_star, _ = _flat_objective(setup, separation, target_old_weight)
        return jax.hessian(loss)(theta_star)


def fisher_information(
    separation, target_old_weight, weight_param: str = "logit", dim: int = 1, order: int = 96, x64: bool = True
) -> Float[Array, "p p"]:
    r"""I(theta*) = E_{p*}[grad log q grad log q^T] at q = p*, by quadrature (T5)."""
    setup = Setup(objective="rkl", estimator="population", weight_param=weight_param, dim=dim, x64=x64)
    with _precision(x64):
        return _fisher(setup, separation, target_old_weight, dim, order)


def _fisher(setup, separation, target_old_weight, dim, order):
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


LN2 = math.log(2.0)


def adaptive_eta(rewards: Float[Array, "... G"], budget: float = LN2) -> Float[Array, " ..."]:
    r"""TTT-Discover's adaptive eta per group (rewards of shape (..., G)):
    KL(softmax(eta r) || Uniform_G) = budget (docs/science/methods.md B step 1); the engine's own solver."""
    return group_eta(jnp.asarray(rewards), jnp.asarray(budget))
