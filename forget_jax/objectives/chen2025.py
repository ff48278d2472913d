"""CRNC25's toy estimators (theory.md section 5; Chen, Razin, Narasimhan, Chen 2025, code
`simulation/run.py`, functions `fit_forward_kl` and `fit_reinforce`).

* `chen2025_fkl` is forward KL on samples of the target's new component only: exactly the
  Monte Carlo `forward_kl` with lambda = 0 (their preset), so it is not re-implemented here.
* `chen2025_rkl` is their surrogate REINFORCE: samples from the learner's *new* component only,
  reward R = log(p_2(x) / q_2(x) / tau + 1e-12) with p_2 the unweighted target new component and
  q_2 = (1 - pi_1) N(mu_2, s_2), importance weight iw = q / q_2 = 1 + q_1 / q_2 (unbounded), and
  the ascent direction mean(R iw grad log q). No baseline. In expectation this is
  (1 / (1 - pi_1)) E_q[(log p_2 - log N(mu_2, s_2)) grad log q] up to constants, which is not
  grad KL(q || p*): the old mode is never sampled (starved by construction).
  The +1e-12 of their q and q_2 is dropped (it only matters where q_2 < 1e-12).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._types import PRNGKeyArray, Scalar
from ..gaussian import log_normal
from ..model import LearnerParams, learner_mixture, target_mixture
from ..spec import Hyper, Setup
from ._common import Estimate, standard_normal
from .forward_kl import forward_kl

sg = jax.lax.stop_gradient

chen2025_fkl = forward_kl


def chen2025_reinforce(params: LearnerParams, hyper: Hyper, setup: Setup, key: PRNGKeyArray) -> tuple[Scalar, Estimate]:
    """Surrogate -mean(sg(R iw) log q_theta(x)), x ~ N(m_n, s_n^2) (learner new component)."""
    q = learner_mixture(params, setup)
    target = target_mixture(hyper, setup)
    x = sg(q.new_mean + q.new_scale * standard_normal(key, setup))
    log_n1, log_n2 = q.component_log_probs(x)
    log_q1 = jnp.log(q.old_weight) + log_n1
    log_q2 = jnp.log1p(-q.old_weight) + log_n2
    log_p2 = log_normal(x, target.new_mean, target.new_scale)
    reward = jnp.logaddexp(log_p2 - log_q2 - jnp.log(hyper.reward_temperature), jnp.log(1e-12))
    iw = 1.0 + jnp.exp(log_q1 - log_q2)
    coefficient = sg(reward * iw)
    surrogate = -jnp.mean(coefficient * q.log_prob(x))
    return surrogate, Estimate(sg(-jnp.mean(reward)), jnp.ones((), bool), sg(jnp.max(iw)))
