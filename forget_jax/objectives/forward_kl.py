"""Forward KL (SFT): L_F(theta) = KL(p_train || q_theta) (docs/science/objectives.md; claims.md
T1-T2).

p_train = (1 - lambda) p_new + lambda p_old with lambda = `replay_ratio`, which is itself a
two-component mixture with old weight lambda: `model.training_mixture`.
"""

from __future__ import annotations

import jax.numpy as jnp

from .._types import PRNGKeyArray, Scalar
from ..divergence import kl_divergence
from ..gaussian import mixture_log_density_vjp
from ..model import LearnerParams, learner_mixture, old_weight, training_mixture
from ..spec import Hyper, Setup
from ._common import Estimate, Noise, ancestral_at, ancestral_noise, components_at, population_frame, stratified_noise
from .registry import Objective, register


def draw_forward_kl(key: PRNGKeyArray, setup: Setup) -> Noise:
    """The step's draws: none (population), label and eps (ancestral), eps (stratified)."""
    if setup.estimator == "population":
        return Noise()
    return ancestral_noise(key, setup) if setup.sampling == "ancestral" else stratified_noise(key, setup)


def _data(hyper: Hyper, setup: Setup, noise: Noise):
    """The step's training samples (not functions of theta) and the weight of each in the
    surrogate -sum_i w_i log q(x_i): (x (n, d), weights (n,), starved). Ancestral: the B samples
    of p_train, weights 1/B, starved when no replayed sample. Stratified: each component at the
    same eps, weights lambda/B and (1 - lambda)/B."""
    p_train = training_mixture(hyper, setup)
    b = setup.batch_size
    if setup.sampling == "ancestral":
        x, replayed = ancestral_at(p_train, noise)
        return x, jnp.full((b,), 1.0 / b, setup.dtype), ~jnp.any(replayed)
    assert noise.eps is not None
    x_old, x_new = components_at(p_train, noise.eps)
    lam = hyper.replay_ratio
    weights = jnp.concatenate([jnp.full((b,), lam / b, setup.dtype), jnp.full((b,), (1 - lam) / b, setup.dtype)])
    return jnp.concatenate([x_old, x_new]), weights, hyper.replay_ratio <= 0


def forward_kl_given(
    params: LearnerParams, hyper: Hyper, setup: Setup, noise: Noise, companion: LearnerParams | None = None
) -> tuple[Scalar, Estimate]:
    r"""Surrogate whose gradient is the (estimated) gradient of KL(p_train || q_theta), given the
    step's draws (`draw_forward_kl`).

    * population: the exact KL by Gauss-Hermite quadrature under p_train.
    * Monte Carlo, ancestral: B samples of p_train, each old (a replayed sample) with probability
      lambda; surrogate $-\frac1B\sum_i \log q_\theta(x_i)$. Starved when no replayed sample.
    * Monte Carlo, stratified: each p_train component at the same B normal draws, weighted by
      (lambda, 1 - lambda); never starved unless lambda = 0.

    Args:
        params: theta. hyper, setup: the configuration. noise: this step's draws.
        companion: unused (the data do not depend on theta).

    Returns:
        (surrogate, Estimate): the gradient of `surrogate` estimates grad KL(p_train || q_theta).
    """
    q = learner_mixture(params, setup)
    p_train = training_mixture(hyper, setup)
    one = jnp.ones((), setup.dtype)
    if setup.estimator == "population":
        p_proj, q_proj = population_frame((p_train, q), setup)
        kl = kl_divergence(p_proj, q_proj, setup.quadrature_order)
        return kl, Estimate(kl, hyper.replay_ratio <= 0, one)
    x, weights, starved = _data(hyper, setup, noise)
    log_q = q.log_prob(x)
    loss = jnp.sum(weights * (p_train.log_prob(x) - log_q))
    return -jnp.sum(weights * log_q), Estimate(loss, starved, one)


def forward_kl(
    params: LearnerParams, hyper: Hyper, setup: Setup, key: PRNGKeyArray, companion: LearnerParams | None = None
) -> tuple[Scalar, Estimate]:
    """`forward_kl_given` at the draws of `draw_forward_kl(key)`."""
    return forward_kl_given(params, hyper, setup, draw_forward_kl(key, setup), companion)


def forward_kl_gradient(setup: Setup):
    r"""The hand-written gradient of the Monte Carlo surrogate $-\sum_i w_i \log q_\theta(x_i)$
    (`gaussian.mixture_log_density_vjp`): 1 exp + 1 log1p per sample where autodiff through the
    log-density spends 4 transcendentals. None where autodiff is kept (population; the uni-modal
    learner). Returns `gradient(params, hyper, noise, companion) -> (grads, Estimate)`."""
    if setup.estimator == "population" or setup.learner_modes != 2:
        return None

    def gradient(params: LearnerParams, hyper: Hyper, noise: Noise, companion=None):
        p_train = training_mixture(hyper, setup)
        x, weights, starved = _data(hyper, setup, noise)
        beta = old_weight(params, setup)
        log_q, grads, _ = mixture_log_density_vjp(
            x,
            -weights,
            beta,
            params.old_mean,
            params.new_mean,
            params.old_scale,
            params.new_scale,
            logit_weight=setup.weight_param == "logit",
        )
        loss = jnp.sum(weights * (p_train.log_prob(x) - log_q))
        return LearnerParams(*grads), Estimate(loss, starved, jnp.ones((), setup.dtype))

    return gradient


FORWARD_KL = register(
    Objective(
        "fkl",
        forward_kl,
        "SFT: KL(p_train || q) on new data plus replay (objectives.md; claims.md T1, T2)",
        supports_replay=True,
        draw=draw_forward_kl,
        estimate=forward_kl_given,
        gradient=forward_kl_gradient,
    )
)
