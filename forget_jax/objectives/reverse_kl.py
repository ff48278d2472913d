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
from ..gaussian import mixture_log_density_vjp
from ..model import LearnerParams, Mixture, learner_mixture, old_task, old_weight, target_mixture
from ..spec import Hyper, Setup
from ._common import (
    Estimate,
    Noise,
    ancestral_at,
    components_at,
    leave_one_out_mean,
    population_frame,
    standard_normal,
    uniform,
)
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


def draw_reverse_kl(key: PRNGKeyArray, setup: Setup) -> Noise:
    """The step's draws, from (replay, label, eps) keys = split(key, 3): none (population), eps
    (stratified), label and eps (pathwise, ancestral), and the replay uniforms too (score,
    ancestral)."""
    if setup.estimator == "population":
        return Noise()
    k_replay, k_label, k_eps = jax.random.split(key, 3)
    eps = standard_normal(k_eps, setup)
    if setup.sampling == "stratified":
        return Noise(eps=eps)
    if setup.estimator == "pathwise":
        return Noise(eps=eps, label=uniform(k_label, setup))
    return Noise(eps=eps, label=uniform(k_label, setup), replay=uniform(k_replay, setup))


def reverse_kl_given(
    params: LearnerParams, hyper: Hyper, setup: Setup, noise: Noise, companion: LearnerParams | None = None
) -> tuple[Scalar, Estimate]:
    """Surrogate whose gradient is the (estimated) gradient of KL(q_theta || p*) given the step's
    draws (`draw_reverse_kl`); see module doc. `companion` is unused."""
    target = target_mixture(hyper, setup)
    return reverse_kl_at(learner_mixture(params, setup), target, setup, noise, hyper.replay_ratio, old_task(target))


def reverse_kl(
    params: LearnerParams, hyper: Hyper, setup: Setup, key: PRNGKeyArray, companion: LearnerParams | None = None
) -> tuple[Scalar, Estimate]:
    """`reverse_kl_given` at the draws of `draw_reverse_kl(key)`."""
    return reverse_kl_given(params, hyper, setup, draw_reverse_kl(key, setup), companion)


def reverse_kl_to(
    q: Mixture,
    target,
    setup: Setup,
    key: PRNGKeyArray,
    replay_ratio: Scalar | None = None,
    p_old: Mixture | None = None,
) -> tuple[Scalar, Estimate]:
    """`reverse_kl_at` at the draws of `draw_reverse_kl(key)`."""
    return reverse_kl_at(q, target, setup, draw_reverse_kl(key, setup), replay_ratio, p_old)


def reverse_kl_at(
    q: Mixture,
    target,
    setup: Setup,
    noise: Noise,
    replay_ratio: Scalar | None = None,
    p_old: Mixture | None = None,
) -> tuple[Scalar, Estimate]:
    """Surrogate whose gradient estimates grad KL(q || target) for any fixed `target` with
    `log_prob` and `project` (p* for `rkl`, the SDFT teacher for `sdft`) at the step's draws:
    population, or Monte Carlo pathwise / score, ancestral / stratified (module doc). Replay (T6)
    only when `replay_ratio` and `p_old` are given (score, ancestral)."""
    one = jnp.ones((), setup.dtype)
    false = jnp.zeros((), bool)

    def f(x):
        return q.log_prob(x) - target.log_prob(x)

    if setup.estimator == "population":
        q_proj, p_proj = population_frame((q, target), setup)
        surrogate = population_reverse_kl(q_proj, p_proj, setup.quadrature_order)
        return surrogate, Estimate(sg(surrogate), false, one)

    beta = q.old_weight
    assert noise.eps is not None

    if setup.sampling == "stratified":
        x_old, x_new = components_at(q, noise.eps)
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
    x, is_old = ancestral_at(q, noise)
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
    assert noise.replay is not None
    replayed = noise.replay < replay_ratio
    x_replay, _ = components_at(p_old, noise.eps)
    x = sg(jnp.where(replayed[:, None], x_replay, x))
    omega = sg(jnp.exp(replay_log_weight(q, p_old, x, replay_ratio)))
    fx = sg(f(x))
    advantage = omega * (fx - leave_one_out_mean(fx, omega))
    surrogate = jnp.mean(advantage * q.log_prob(x))
    loss = jnp.mean(omega * fx)
    starved = ~jnp.any(is_old | replayed)
    return surrogate, Estimate(loss, starved, jnp.max(omega))


def reverse_kl_gradient(setup: Setup):
    r"""Hand-written gradient of the pathwise, ancestral surrogate
        $rac1B\sum_i [f(x_i(	heta)) + A_i \log\pi_{z_i}]$, $f = \log q_	heta - \log p^*$,
        $x_i = m_{z_i} + s_{z_i}\epsilon_i$, $A_i = f_i - ar f_{-i}$ (stop-gradient):

        $
    abla_	heta f(x_i) = \partial_	heta \log q_	heta(x_i) + (
    abla_x \log q_	heta -
    abla_x \log p^*)(x_i)
        \cdot \partial_	heta x_i$ with $\partial_{m_z} x_i = I$, $\partial_{s_z} x_i = \epsilon_i$ for the
        sample's own component, and $\partial_a \log\pi_z = [z = o] - eta$ (logit) or
        $[z=o]/eta - [z=n]/(1-eta)$ (beta), all through `gaussian.mixture_log_density_vjp`. None
        (autodiff of `reverse_kl_given`) for the other estimators and the uni-modal learner.
        Returns `gradient(params, hyper, noise, companion) -> (grads, Estimate)`."""
    if setup.estimator != "pathwise" or setup.sampling != "ancestral" or setup.learner_modes != 2:
        return None
    logit = setup.weight_param == "logit"

    def gradient(params: LearnerParams, hyper: Hyper, noise: Noise, companion=None):
        q = learner_mixture(params, setup)
        target = target_mixture(hyper, setup)
        beta = old_weight(params, setup)
        x, is_old = ancestral_at(q, noise)
        assert noise.eps is not None
        c = jnp.full(is_old.shape, 1.0 / setup.batch_size, setup.dtype)
        log_q, (d_w, d_mo, d_mn, d_so, d_sn), dx_q = mixture_log_density_vjp(
            x, c, beta, q.old_mean, q.new_mean, q.old_scale, q.new_scale, logit_weight=logit
        )
        log_p, _, dx_p = mixture_log_density_vjp(
            x,
            c,
            target.old_weight,
            target.old_mean,
            target.new_mean,
            target.old_scale,
            target.new_scale,
            logit_weight=False,
        )
        fx = log_q - log_p
        advantage = fx - leave_one_out_mean(fx)
        g = dx_q - dx_p  # (1/B) grad_x f at each sample
        old = is_old[:, None]
        d_mo = d_mo + jnp.sum(jnp.where(old, g, 0.0), axis=0)
        d_mn = d_mn + jnp.sum(jnp.where(old, 0.0, g), axis=0)
        g_eps = jnp.sum(g * noise.eps, axis=-1)
        d_so = d_so + jnp.sum(jnp.where(is_old, g_eps, 0.0))
        d_sn = d_sn + jnp.sum(jnp.where(is_old, 0.0, g_eps))
        label_score = is_old.astype(beta.dtype) - beta if logit else jnp.where(is_old, 1.0 / beta, -1.0 / (1.0 - beta))
        d_w = d_w + jnp.sum(c * advantage * label_score)
        one = jnp.ones((), setup.dtype)
        return LearnerParams(d_w, d_mo, d_mn, d_so, d_sn), Estimate(jnp.mean(fx), ~jnp.any(is_old), one)

    return gradient


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
        draw=draw_reverse_kl,
        estimate=reverse_kl_given,
        gradient=reverse_kl_gradient,
    )
)
