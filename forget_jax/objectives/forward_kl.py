"""Forward KL (SFT): L_F(theta) = KL(p_train || q_theta) (theory.md section 1, T1-T2).

p_train = (1 - lambda) p_new + lambda p_old with lambda = `replay_ratio`, which is itself a
two-component mixture with old weight lambda: `training_mixture`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._types import PRNGKeyArray, Scalar
from ..divergence import kl_divergence
from ..model import LearnerParams, Mixture, learner_mixture, target_mixture
from ..spec import Hyper, Setup
from ._common import Estimate, bernoulli, population_frame, standard_normal


def training_mixture(hyper: Hyper, setup: Setup) -> Mixture:
    """p_lambda = (1 - lambda) N(mu_n*, s_n^2) + lambda N(mu_o*, s_o^2) (D5)."""
    target = target_mixture(hyper, setup)
    return Mixture(hyper.replay_ratio, target.old_mean, target.new_mean, target.old_scale, target.new_scale)


def forward_kl(params: LearnerParams, hyper: Hyper, setup: Setup, key: PRNGKeyArray) -> tuple[Scalar, Estimate]:
    r"""Surrogate whose gradient is the (estimated) gradient of KL(p_train || q_theta).

    * population: the exact KL by Gauss-Hermite quadrature under p_train.
    * Monte Carlo, ancestral: B samples of p_train, each old (a replayed sample) with probability
      lambda; surrogate $-\frac1B\sum_i \log q_\theta(x_i)$. Starved when no replayed sample.
    * Monte Carlo, stratified: each p_train component at the same B normal draws, weighted by
      (lambda, 1 - lambda); never starved unless lambda = 0.
    """
    q = learner_mixture(params, setup)
    p_train = training_mixture(hyper, setup)
    one = jnp.ones((), setup.dtype)
    no_old_data = hyper.replay_ratio <= 0
    if setup.estimator == "population":
        p_proj, q_proj = population_frame((p_train, q), setup)
        kl = kl_divergence(p_proj, q_proj, setup.quadrature_order)
        return kl, Estimate(kl, no_old_data, one)

    k_label, k_eps = jax.random.split(key)
    eps = standard_normal(k_eps, setup)
    x_old = p_train.old_mean + p_train.old_scale * eps
    x_new = p_train.new_mean + p_train.new_scale * eps
    if setup.sampling == "ancestral":
        replayed = bernoulli(k_label, hyper.replay_ratio, setup)
        x = jnp.where(replayed[:, None], x_old, x_new)
        log_q = q.log_prob(x)
        loss = jnp.mean(p_train.log_prob(x) - log_q)
        return -jnp.mean(log_q), Estimate(loss, ~jnp.any(replayed), one)

    lam = hyper.replay_ratio
    log_q_old, log_q_new = q.log_prob(x_old), q.log_prob(x_new)
    surrogate = -(lam * jnp.mean(log_q_old) + (1 - lam) * jnp.mean(log_q_new))
    loss = lam * jnp.mean(p_train.log_prob(x_old) - log_q_old) + (1 - lam) * jnp.mean(
        p_train.log_prob(x_new) - log_q_new
    )
    return surrogate, Estimate(loss, no_old_data, one)
