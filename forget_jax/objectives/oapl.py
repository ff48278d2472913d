"""OAPL (Ritter et al. 2026, "LLMs Can Learn to Reason Via Off-Policy RL") in the two-mode mixture:
docs/science/methods.md C "Translation into the two-mode mixture" [PROPOSAL], docs/science/claims.md T9.

State. The companion of `train.TrainState` is the lagged inference policy theta_lag. It starts at
theta(0) and is re-synced to theta every L = `oapl_lag` optimiser steps (after steps L, 2L, ...):
companion = where(step % L == 0, theta, companion).

Loss (squared optimal-advantage regression, no importance sampling; the code's
`compute_policy_loss`), per group of G samples y_i ~ q_lag with rewards r_i = R(y_i)
(objectives/reward.py presets):

    V_hat = beta_1 log mean_i e^{r_i / beta_1}                       (per group)
    L(theta) = mean_i (beta_2 [log q_theta(y_i) - sg(log q_lag(y_i))] - (r_i - V_hat))^2

beta_1 = `oapl_beta1`, beta_2 = `oapl_beta2`. With beta_1 = beta_2 = beta and a realisable
tilt, the population minimiser is q* = q_lag e^{r / beta} / Z (docs/science/claims.md T9), whose old weight has
logit beta_lag + log(M_o / M_n), M_k = E_{N_k(theta_lag)}[e^{r / beta}]: mass changes once per
sync, not per gradient step. The tilt is realisable in the fixed-scale family for the linear
reward (components shift by s^2 w / beta); the quadratic and log_new rewards also shrink the
component variance (docs/science/methods.md section 0), so with fixed scales the regression is a projection
and the recursion holds only approximately.

Sampling. By default each step draws a *fresh* batch (num_groups x G, ancestral) from the
current q_lag. With `oapl_reuse_batch: true` one batch is drawn per sync window and reused for
its L steps, as the paper's offline rounds do: `batch_key` returns fold_in(key(seed), t // L) for
step t, and steps t = kL, ..., kL + L - 1 all run on theta_lag = theta(kL) (the sync follows steps
L, 2L, ...), so they see the same samples. Each step's batch has the same distribution either
way (so the expected gradient at given theta is the same); reuse makes the steps of a window
share their noise (docs/science/methods.md C, "As implemented"). Estimate.starved is True
when the batch holds no old-mode sample of q_lag (with one group per batch its probability is
(1 - beta_lag)^G, docs/science/claims.md T9).

beta_1 != beta_2 (the published code: beta_1 = 1, beta_2 = 1e-3). V_hat uses beta_1, the
regression coefficient beta_2; the target r - V is then not beta_2 log of a normalised density
ratio, and the population minimiser is not the tilt q_lag e^{r / beta_2} / Z: for one Gaussian of
fixed scale and a linear reward it solves a cubic (docs/science/methods.md C, "beta_1 != beta_2").

`population`: the expectation over q_lag by Gauss-Hermite quadrature and V* = beta_1 log
E_{q_lag}[e^{r / beta_1}] exactly. `pathwise` is not offered (the samples do not depend on theta).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from .. import fields
from .._types import PRNGKeyArray, Scalar
from ..divergence import log_mean_exp, mixture_expectation
from ..model import LearnerParams, learner_mixture
from ..spec import Hyper, Setup
from ._common import Estimate, Noise, ancestral_at, ancestral_noise, population_frame, project_frame
from .registry import Objective, register
from .reward import reward_function

sg = jax.lax.stop_gradient


def draw_oapl(key: PRNGKeyArray, setup: Setup) -> Noise:
    """The step's draws from its batch key (`oapl_batch_key`): none (population), else label and
    eps of `ancestral_noise` (the batch is ancestral whatever `sampling` says)."""
    return Noise() if setup.estimator == "population" else ancestral_noise(key, setup)


def oapl(
    params: LearnerParams, hyper: Hyper, setup: Setup, key: PRNGKeyArray, companion: LearnerParams
) -> tuple[Scalar, Estimate]:
    """`oapl_given` at the draws of `draw_oapl(key)`."""
    return oapl_given(params, hyper, setup, draw_oapl(key, setup), companion)


def oapl_given(
    params: LearnerParams, hyper: Hyper, setup: Setup, noise: Noise, companion: LearnerParams
) -> tuple[Scalar, Estimate]:
    """Surrogate (= the regression loss itself) on lagged-policy samples at the step's draws
    (`draw_oapl`); see module doc."""
    q = learner_mixture(params, setup)
    lag = sg(learner_mixture(companion, setup))
    reward = reward_function(hyper, setup)
    b1, b2 = hyper.oapl_beta1, hyper.oapl_beta2
    one = jnp.ones((), setup.dtype)

    if setup.estimator == "population":
        q_p, lag_p = population_frame((q, lag), setup)
        r_p = reward.project(*project_frame(setup))
        value = b1 * log_mean_exp(lag_p, lambda x: r_p(x) / b1, setup.quadrature_order)

        def residual_sq(x):
            return jnp.square(b2 * (q_p.log_prob(x) - lag_p.log_prob(x)) - (r_p(x) - value))

        loss = mixture_expectation(lag_p, residual_sq, setup.quadrature_order)
        return loss, Estimate(sg(loss), jnp.zeros((), bool), one)

    x, is_old = ancestral_at(lag, noise)
    rewards = reward(x).reshape(setup.num_groups, setup.group_size)
    value = b1 * (logsumexp(rewards / b1, axis=-1, keepdims=True) - jnp.log(setup.group_size))
    advantage = (rewards - value).reshape(-1)
    ell = q.log_prob(x) - lag.log_prob(x)
    loss = jnp.mean(jnp.square(b2 * ell - advantage))
    return loss, Estimate(sg(loss), ~jnp.any(is_old), one)


def sync_lagged_policy(
    companion: LearnerParams, params: LearnerParams, step, hyper: Hyper, setup: Setup
) -> LearnerParams:
    """theta_lag <- theta after every L-th step (step = number of steps done)."""
    step = jnp.asarray(step)
    lag = jnp.maximum(jnp.round(hyper.oapl_lag), 1.0).astype(step.dtype)
    sync = jnp.mod(step, lag) == 0
    return jax.tree.map(lambda c, p: jnp.where(sync, p, c), companion, params)


def oapl_batch_key(run_key: PRNGKeyArray, step, hyper: Hyper, setup: Setup) -> PRNGKeyArray:
    """Key of step t: fold_in(run_key, t) (fresh batches: `registry.step_key`, so the loop may
    draw them once per seed; `batch_key_is_step_key`), or fold_in(run_key, t // L) under
    `oapl_reuse_batch` (one batch per sync window; windows [kL, (k + 1) L) end at the syncs; L is
    traced, so these draws stay per configuration)."""
    step = jnp.asarray(step)
    if not setup.oapl_reuse_batch:
        return jax.random.fold_in(run_key, step)
    lag = jnp.maximum(jnp.round(hyper.oapl_lag), 1.0).astype(step.dtype)
    return jax.random.fold_in(run_key, jnp.floor_divide(step, lag))


OAPL = register(
    Objective(
        "oapl",
        oapl,
        "squared optimal-advantage regression on lagged-policy samples (methods.md C; claims.md T9)",
        fields=(
            fields.Field(
                "oapl_lag",
                "traced",
                10.0,
                "steps L between syncs of the lagged policy",
                ge=1,
                le=1e8,
                whole=True,
                symbol="L",
                label="OAPL lag",
                objective=("oapl",),
            ),
            fields.Field(
                "oapl_beta1",
                "traced",
                1.0,
                "temperature beta_1 of V_hat = beta_1 log mean exp(r / beta_1)",
                gt=0,
                le=1e4,
                symbol="β₁",
                objective=("oapl",),
            ),
            fields.Field(
                "oapl_beta2",
                "traced",
                1.0,
                "KL coefficient beta_2 of the regression (code: 1e-3)",
                gt=0,
                le=1e4,
                symbol="β₂",
                objective=("oapl",),
            ),
            fields.Field(
                "oapl_reuse_batch",
                "static",
                False,
                "draw one batch per sync and reuse it for the L steps until the next (the paper's offline "
                "rounds); false: a fresh batch every step (methods.md C)",
                type=bool,
                objective=("oapl",),
            ),
        ),
        companion_update=sync_lagged_policy,
        batch_key=oapl_batch_key,
        batch_key_is_step_key=lambda setup: not setup.oapl_reuse_batch,
        draw=draw_oapl,
        estimate=oapl_given,
    )
)
