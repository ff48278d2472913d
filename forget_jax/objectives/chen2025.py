"""CRNC25's toy estimators (docs/science/studies.md section 5; Chen, Razin, Narasimhan, Chen 2025, code
`simulation/run.py`, functions `fit_forward_kl` and `fit_reinforce`).

Both keep the +1e-12 terms of their code, which are not negligible here:

* `chen2025_fkl` is forward KL on samples of the target's new component (the Monte Carlo
  `forward_kl` sampling) with their floored density q(x) + 1e-12: the gradient is
  -mean(grad q / (q + 1e-12)). Early in training q(x) < 1e-12 at the upper tail of the target
  samples (mu_2 = 0.5 vs samples around 3.5), so the floor shrinks the step of mu_2 by ~0.5%,
  a systematic shift of ~7 Monte Carlo standard errors over 256 seeds if dropped.
  Population / stratified configurations fall back to plain `forward_kl`.
* `chen2025_rkl` is their surrogate REINFORCE: samples from the learner's *new* component only,
  reward R = log(p_2(x) / q_2(x) / tau + 1e-12) with p_2 the unweighted target new component and
  q_2 = (1 - pi_1) N(mu_2, s_2), importance weight iw = q / (q_2 + 1e-12) (unbounded), and
  the ascent direction mean(R iw grad log q) = mean(R grad q / (q_2 + 1e-12)). No baseline.
  Without the 1e-12 terms its expectation is (1 / (1 - pi_1)) E_q[(log p_2 - log N(mu_2, s_2))
  grad log q] (the constants -log tau - log(1 - pi_1) multiply E_q[grad log q] = 0). This holds
  for (mu_2, s_2); for the old group (pi_1, mu_1, s_1) the expectation lives where x ~ N(mu_2, s_2)
  is never sampled (the estimator has infinite variance when s_2^2 < s_1^2 / 2), the reward floor
  and the iw floor change it, and the realised update is not the expected one: once mu_2 has
  reached the target, every batch moves pi_1 by about -(-log tau - log(1 - pi_1)) / (1 - pi_1),
  which is what drives their pi_1 down (tests/test_chen2025.py). It is not grad KL(q || p*):
  the old mode is never sampled (starved by construction).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import fields
from .._types import PRNGKeyArray, Scalar
from ..gaussian import log_normal
from ..model import LearnerParams, learner_mixture, target_mixture, training_mixture
from ..presets import chen2025_config
from ..spec import Hyper, Setup
from ._common import Estimate, Noise, ancestral_at, components_at, standard_normal
from .forward_kl import draw_forward_kl, forward_kl_given
from .registry import Objective, register

sg = jax.lax.stop_gradient

#: The additive floor of CRNC25's densities and reward (`+ 1e-12` in `simulation/run.py`).
TINY = 1e-12


def chen2025_fkl(
    params: LearnerParams, hyper: Hyper, setup: Setup, key: PRNGKeyArray, companion: LearnerParams | None = None
) -> tuple[Scalar, Estimate]:
    """`chen2025_fkl_given` at the draws of `draw_forward_kl(key)`."""
    return chen2025_fkl_given(params, hyper, setup, draw_forward_kl(key, setup), companion)


def chen2025_fkl_given(
    params: LearnerParams, hyper: Hyper, setup: Setup, noise: Noise, companion: LearnerParams | None = None
) -> tuple[Scalar, Estimate]:
    """Surrogate -mean(log(q_theta(x) + 1e-12)), x ~ p_train (ancestral; their preset has
    lambda = 0, i.e. the target's new component only), at the draws of `forward_kl`.

    Uni-modal learner (`learner_modes: 1`): their `run_single_mode.py::fit_forward_kl` uses the
    exact score (x - mu) / s^2 of log N(x; mu, s^2), without the floor, so this is plain
    `forward_kl` (the floor would matter: q(x) < 1e-12 for most target samples at the start)."""
    if setup.estimator == "population" or setup.sampling != "ancestral" or setup.learner_modes == 1:
        return forward_kl_given(params, hyper, setup, noise)
    q = learner_mixture(params, setup)
    p_train = training_mixture(hyper, setup)
    x, replayed = ancestral_at(p_train, noise)
    log_q = q.log_prob(x)
    floored = jnp.logaddexp(log_q, jnp.log(jnp.asarray(TINY, setup.dtype)))
    loss = jnp.mean(p_train.log_prob(x) - log_q)
    return -jnp.mean(floored), Estimate(sg(loss), ~jnp.any(replayed), jnp.ones((), setup.dtype))


def draw_chen2025_reinforce(key: PRNGKeyArray, setup: Setup) -> Noise:
    """The step's draws: eps = B standard normals from the step key itself (no split)."""
    return Noise(eps=standard_normal(key, setup))


def chen2025_reinforce(
    params: LearnerParams, hyper: Hyper, setup: Setup, key: PRNGKeyArray, companion: LearnerParams | None = None
) -> tuple[Scalar, Estimate]:
    """`chen2025_reinforce_given` at the draws of `draw_chen2025_reinforce(key)`."""
    return chen2025_reinforce_given(params, hyper, setup, draw_chen2025_reinforce(key, setup), companion)


def chen2025_reinforce_given(
    params: LearnerParams, hyper: Hyper, setup: Setup, noise: Noise, companion: LearnerParams | None = None
) -> tuple[Scalar, Estimate]:
    """Surrogate -mean(sg(R iw) log q_theta(x)), x ~ N(m_n, s_n^2) (learner new component), at
    x = m_n + s_n eps (`draw_chen2025_reinforce`).

    Uni-modal learner (`learner_modes: 1`, their `run_single_mode.py::fit_reinforce`): x ~ q =
    N(m, s^2), reward R = log(p_2(x) / (q(x) + 1e-12) / tau + 1e-12), no importance weight, ascent
    along mean(R grad log q). Without the floors its expectation is -grad KL(q || p_2) (the
    constant -log tau multiplies E_q[grad log q] = 0): reverse KL to the unweighted target new
    component, whose unique optimum is q = p_2 = N(mu_n*, s_n*^2)."""
    q = learner_mixture(params, setup)
    target = target_mixture(hyper, setup)
    log_tiny = jnp.log(jnp.asarray(TINY, setup.dtype))
    assert noise.eps is not None
    if setup.learner_modes == 1:
        x = sg(components_at(q, noise.eps)[0])
        log_q = q.log_prob(x)
        log_p2 = log_normal(x, target.new_mean, target.new_scale)
        floored_q = jnp.logaddexp(log_q, log_tiny)
        reward = jnp.logaddexp(log_p2 - floored_q - jnp.log(hyper.reward_temperature), log_tiny)
        surrogate = -jnp.mean(sg(reward) * log_q)
        return surrogate, Estimate(sg(-jnp.mean(reward)), jnp.zeros((), bool), jnp.ones((), setup.dtype))
    x = sg(components_at(q, noise.eps)[1])  # the learner's new component only
    log_n1, log_n2 = q.component_log_probs(x)
    log_q1 = jnp.log(q.old_weight) + log_n1
    log_q2 = jnp.log1p(-q.old_weight) + log_n2
    log_p2 = log_normal(x, target.new_mean, target.new_scale)
    reward = jnp.logaddexp(log_p2 - log_q2 - jnp.log(hyper.reward_temperature), log_tiny)
    iw = jnp.exp(jnp.logaddexp(log_q1, log_q2) - jnp.logaddexp(log_q2, log_tiny))
    coefficient = sg(reward * iw)
    surrogate = -jnp.mean(coefficient * q.log_prob(x))
    return surrogate, Estimate(sg(-jnp.mean(reward)), jnp.ones((), bool), sg(jnp.max(iw)))


def _monte_carlo_rule(v) -> str | None:
    if v["estimator"] == "population" and str(v["objective"]).startswith("chen2025"):
        return f"objective={v['objective']} is a Monte Carlo estimator; use estimator=score or pathwise"
    return None


_RULE = fields.Rule(("objective", "estimator"), _monte_carlo_rule, "the CRNC25 estimators are Monte Carlo")

CHEN2025_FKL = register(
    Objective(
        "chen2025_fkl",
        chen2025_fkl,
        "CRNC25's forward-KL estimator with their 1e-12 density floor (objectives.md, studies.md)",
        rules=(_RULE,),
        preset=chen2025_config("chen2025_fkl"),
        supports_replay=True,
        draw=draw_forward_kl,
        estimate=chen2025_fkl_given,
    )
)
CHEN2025_RKL = register(
    Objective(
        "chen2025_rkl",
        chen2025_reinforce,
        "CRNC25's surrogate REINFORCE (not grad KL; objectives.md, studies.md)",
        fields=(
            fields.Field(
                "reward_temperature",
                "traced",
                0.1,
                "CRNC25's REINFORCE_BETA tau of the surrogate reward",
                gt=0,
                le=1e3,
                symbol="τ",
                objective=("chen2025_rkl",),
            ),
        ),
        rules=(_RULE,),
        preset=chen2025_config("chen2025_rkl"),
        draw=draw_chen2025_reinforce,
        estimate=chen2025_reinforce_given,
    )
)
