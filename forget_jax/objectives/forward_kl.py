"""Forward KL (SFT): L_F(theta) = KL(p_train || q_theta) (docs/science/objectives.md; claims.md
T1-T2).

p_train = (1 - lambda) p_new + lambda p_old with lambda = `replay_ratio`, which is itself a
two-component mixture with old weight lambda: `model.training_mixture`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._types import PRNGKeyArray, Scalar
from ..divergence import kl_divergence
from ..model import LearnerParams, learner_mixture, training_mixture
from ..spec import Hyper, Setup
from ._common import Estimate, component_draws, population_frame, sample_ancestral
from .registry import Objective, register


def forward_kl(
    params: LearnerParams, hyper: Hyper, setup: Setup, key: PRNGKeyArray, companion: LearnerParams | None = None
) -> tuple[Scalar, Estimate]:
    r"""Surrogate whose gradient is the (estimated) gradient of KL(p_train || q_theta).

    * population: the exact KL by Gauss-Hermite quadrature under p_train.
    * Monte Carlo, ancestral: B samples of p_train, each old (a replayed sample) with probability
      lambda; surrogate $-\frac1B\sum_i \log q_\theta(x_i)$. Starved when no replayed sample.
    * Monte Carlo, stratified: each p_train component at the same B normal draws, weighted by
      (lambda, 1 - lambda); never starved unless lambda = 0.

    Args:
        params: theta. hyper, setup: the configuration. key: this step's PRNG key.
        companion: unused (the data do not depend on theta).

    Returns:
        (surrogate, Estimate): the gradient of `surrogate` estimates grad KL(p_train || q_theta).
    """
    q = learner_mixture(params, setup)
    p_train = training_mixture(hyper, setup)
    one = jnp.ones((), setup.dtype)
    no_old_data = hyper.replay_ratio <= 0
    if setup.estimator == "population":
        p_proj, q_proj = population_frame((p_train, q), setup)
        kl = kl_divergence(p_proj, q_proj, setup.quadrature_order)
        return kl, Estimate(kl, no_old_data, one)

    if setup.sampling == "ancestral":
        x, replayed = sample_ancestral(p_train, key, setup)
        log_q = q.log_prob(x)
        loss = jnp.mean(p_train.log_prob(x) - log_q)
        return -jnp.mean(log_q), Estimate(loss, ~jnp.any(replayed), one)

    x_old, x_new = component_draws(p_train, jax.random.split(key)[1], setup)
    lam = hyper.replay_ratio
    log_q_old, log_q_new = q.log_prob(x_old), q.log_prob(x_new)
    surrogate = -(lam * jnp.mean(log_q_old) + (1 - lam) * jnp.mean(log_q_new))
    loss = lam * jnp.mean(p_train.log_prob(x_old) - log_q_old) + (1 - lam) * jnp.mean(
        p_train.log_prob(x_new) - log_q_new
    )
    return surrogate, Estimate(loss, no_old_data, one)


FORWARD_KL = register(
    Objective(
        "fkl",
        forward_kl,
        "SFT: KL(p_train || q) on new data plus replay (objectives.md; claims.md T1, T2)",
        supports_replay=True,
    )
)
