"""Reverse KL (on-policy RL): L_R(theta) = KL(q_theta || p*) (docs/science/objectives.md; claims.md
T3-T6).

With f_theta(x) = log q_theta(x) - log p*(x), the gradient is E_q[f grad log q] (score form) or,
reparameterising x = m_z + s_z eps within the component z, E[grad f(x_theta)] + E[f grad log pi_z]
(pathwise form; the label z is discrete, so its part keeps a score term).

Replay (T6): samples from m_lambda = (1 - lambda) q_theta + lambda p_old with the bounded weight
omega = q / m_lambda <= 1 / (1 - lambda); only the score estimator admits it (a replayed sample
is not a function of theta), which config validation enforces.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import fields
from .._types import PRNGKeyArray, Scalar
from ..divergence import kl_divergence, mixture_expectation
from ..model import LearnerParams, Mixture, learner_mixture, old_task, target_mixture
from ..spec import Hyper, Setup
from ._common import Estimate, bernoulli, component_draws, draw_ancestral, leave_one_out_mean, population_frame
from .registry import Objective, register

sg = jax.lax.stop_gradient


def replay_log_weight(q: Mixture, p_old: Mixture, x, replay_ratio: Scalar):
    r"""log omega(x) = log q(x) - log((1 - lambda) q(x) + lambda p_old(x)) (D5); omega <= 1/(1-lambda)."""
    log_q = q.log_prob(x)
    log_m = jnp.logaddexp(jnp.log1p(-replay_ratio) + log_q, jnp.log(replay_ratio) + p_old.log_prob(x))
    return jnp.where(replay_ratio > 0, log_q - log_m, 0.0)


def population_kl(params: LearnerParams, hyper: Hyper, setup: Setup) -> Scalar:
    """KL(q_theta || p*) by quadrature, differentiable to any order (used for the Hessian, T5)."""
    q_proj, p_proj = population_frame((learner_mixture(params, setup), target_mixture(hyper, setup)), setup)
    return kl_divergence(q_proj, p_proj, setup.quadrature_order)


def population_reverse_kl(q: Mixture, target, order: int) -> Scalar:
    r"""Surrogate for KL(q || target) by quadrature under q (both already in the population frame).

    value = KL(q || target); gradient = sum_k grad(pi_k) E_k[f] + E[grad_x f dx/dtheta] with
    f = log q - log target: the term E_q[grad_theta log q_theta(x)] at fixed x is 0 analytically
    and is dropped rather than left to quadrature error, so the gradient vanishes exactly where
    q = target (T3). `target` is anything with `log_prob` (a Mixture or the SDFT teacher); it is
    not differentiated.
    """
    q_fixed = sg(q)
    return mixture_expectation(q, lambda x: q_fixed.log_prob(x) - target.log_prob(x), order)


def reverse_kl(
    params: LearnerParams, hyper: Hyper, setup: Setup, key: PRNGKeyArray, companion: LearnerParams | None = None
) -> tuple[Scalar, Estimate]:
    """Surrogate whose gradient is the (estimated) gradient of KL(q_theta || p*); see module doc.
    `companion` is unused."""
    target = target_mixture(hyper, setup)
    return reverse_kl_to(learner_mixture(params, setup), target, setup, key, hyper.replay_ratio, old_task(target))


def reverse_kl_to(
    q: Mixture,
    target,
    setup: Setup,
    key: PRNGKeyArray,
    replay_ratio: Scalar | None = None,
    p_old: Mixture | None = None,
) -> tuple[Scalar, Estimate]:
    """Surrogate whose gradient estimates grad KL(q || target) for any fixed `target` with
    `log_prob` and `project` (p* for `rkl`, the SDFT teacher for `sdft`): population, or Monte
    Carlo pathwise / score, ancestral / stratified (module doc). Replay (T6) only when
    `replay_ratio` and `p_old` are given (score, ancestral)."""
    one = jnp.ones((), setup.dtype)
    false = jnp.zeros((), bool)

    def f(x):
        return q.log_prob(x) - target.log_prob(x)

    if setup.estimator == "population":
        q_proj, p_proj = population_frame((q, target), setup)
        surrogate = population_reverse_kl(q_proj, p_proj, setup.quadrature_order)
        return surrogate, Estimate(sg(surrogate), false, one)

    k_replay, k_label, k_eps = jax.random.split(key, 3)
    beta = q.old_weight

    if setup.sampling == "stratified":
        x_old, x_new = component_draws(q, k_eps, setup)
        if setup.estimator == "pathwise":
            f_old, f_new = f(x_old), f(x_new)
            surrogate = beta * jnp.mean(f_old) + (1 - beta) * jnp.mean(f_new)
            return surrogate, Estimate(sg(surrogate), false, one)
        x_old, x_new = sg(x_old), sg(x_new)
        f_old, f_new = sg(f(x_old)), sg(f(x_new))
        log_n_old, log_n_new = q.component_log_probs(x_old)[0], q.component_log_probs(x_new)[1]
        surrogate = (
            beta * jnp.mean(f_old)
            + (1 - beta) * jnp.mean(f_new)
            + sg(beta) * jnp.mean((f_old - leave_one_out_mean(f_old)) * log_n_old)
            + sg(1 - beta) * jnp.mean((f_new - leave_one_out_mean(f_new)) * log_n_new)
        )
        loss = sg(beta * jnp.mean(f_old) + (1 - beta) * jnp.mean(f_new))
        return surrogate, Estimate(loss, false, one)

    # x is reparameterised within its component (pathwise); the label carries no gradient
    x, is_old = draw_ancestral(q, k_label, k_eps, setup)
    if setup.estimator == "pathwise":
        fx = f(x)
        log_label = jnp.where(is_old, jnp.log(beta), jnp.log1p(-beta))
        advantage = sg(fx - leave_one_out_mean(sg(fx)))
        surrogate = jnp.mean(fx + advantage * log_label)
        return surrogate, Estimate(sg(jnp.mean(fx)), ~jnp.any(is_old), one)

    # score function, ancestral, optionally through the replay proposal (T6)
    if replay_ratio is None or p_old is None:
        x = sg(x)
        fx = sg(f(x))
        advantage = fx - leave_one_out_mean(fx)
        surrogate = jnp.mean(advantage * q.log_prob(x))
        return surrogate, Estimate(jnp.mean(fx), ~jnp.any(is_old), one)
    replayed = bernoulli(k_replay, replay_ratio, setup)
    x_replay, _ = component_draws(p_old, k_eps, setup)
    x = sg(jnp.where(replayed[:, None], x_replay, x))
    omega = sg(jnp.exp(replay_log_weight(q, p_old, x, replay_ratio)))
    fx = sg(f(x))
    advantage = omega * (fx - leave_one_out_mean(fx, omega))
    surrogate = jnp.mean(advantage * q.log_prob(x))
    loss = jnp.mean(omega * fx)
    starved = ~jnp.any(is_old | replayed)
    return surrogate, Estimate(loss, starved, jnp.max(omega))


def _replay_estimator_rule(v) -> str | None:
    if v["objective"] != "rkl" or v["replay_ratio"] <= 0:
        return None
    if v["estimator"] == "pathwise":
        return (
            f"replay_ratio={v['replay_ratio']} under objective=rkl with estimator='pathwise' is not allowed: "
            "needs estimator=score or population "
            "(a replayed sample is not a function of theta, so the pathwise estimator cannot use it; T6)"
        )
    if v["estimator"] == "score" and v["sampling"] == "stratified":
        return "replay_ratio > 0 under objective=rkl needs sampling=ancestral (replay is a proposal for ancestral sampling)"
    return None


REVERSE_KL = register(
    Objective(
        "rkl",
        reverse_kl,
        "on-policy RL: KL(q || p*), replay through a bounded-weight proposal (objectives.md; claims.md T3-T6)",
        rules=(
            fields.Rule(
                ("objective", "replay_ratio", "estimator", "sampling"),
                _replay_estimator_rule,
                "rkl replay needs the score estimator with ancestral sampling (or population)",
            ),
        ),
        supports_replay=True,
    )
)
