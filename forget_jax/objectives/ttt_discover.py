"""TTT-Discover (Yuksekgonul et al. 2026, "Learning to Discover at Test Time") in the two-mode
mixture: docs/science/methods.md B "Translation into the two-mode mixture" [PROPOSAL], docs/science/claims.md T8.

Objective: the entropic utility with an optional KL penalty to the reference q_ref = q_{theta(0)}
(the companion of `train.TrainState`, never updated: "the only place where past behaviour is
visible"),

    maximise  J(theta) - lambda KL(q_theta || q_ref),   J(theta) = log E_{q_theta}[e^{eta R(y)}],

with a reward preset R (objectives/reward.py), lambda = `kl_penalty`, and eta either fixed
(`entropic_eta`, `adaptive_eta: false`) or adaptive (`adaptive_eta: true`, the code's
`entropic_adaptive_beta`): eta solves KL(softmax(eta r) || Uniform_G) = delta per group,
delta = `entropic_kl_budget` (ln 2), by doubling from 1 (cap 1e6) then 60 bisection steps.
grad J = E_q[(e^{eta R} / E_q[e^{eta R}]) grad log q]: one step moves q toward the tilt
q e^{eta R} / Z, whose old weight has logit beta + log(M_o / M_n), M_k = E_{N_k}[e^{eta R}]
(docs/science/methods.md section 0; theory.py `tilt_logit`). Exactly, d J / d logit beta = beta_tilt - beta.

Estimators:

* `score` (Monte Carlo; the method as run): batch = num_groups x G on-policy ancestral draws
  y ~ q_theta (regime (i)), r = R(y), per-group eta, leave-one-out weights
  w_i = e_i / Z_{-i}, e_i = e^{eta r_i}, Z_{-i} = mean_{j != i} e_j (computed in log space),
  advantage A_i = w_i - 1, plus lambda (mean_j l_j - l_i) with l = log q_theta - log q_ref
  (the code's `incorporate_kl_penalty`, batch mean), surrogate -mean(sg(A) log q_theta(y)).
  Estimate.loss = -mean_groups log mean_i e^{eta r_i} + lambda mean(l); max_importance_weight =
  the largest w_i. `pathwise` is not offered (config validation): the method is a policy gradient.
* `population`: the exact J - lambda KL by Gauss-Hermite quadrature (differentiable); adaptive
  eta solves KL(q_eta || q) = delta with q_eta = q e^{eta R} / Z over the quadrature nodes (the
  population analogue of the group rule, docs/science/methods.md B "Population analogue").

PUCT state reuse has no analogue (an unconditional learner has no state input).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from .. import fields
from .._types import Array, Float, PRNGKeyArray, Scalar
from ..divergence import log_mean_exp, mixture_nodes
from ..model import LearnerParams, learner_mixture
from ..spec import Hyper, Setup
from ._common import Estimate, Noise, ancestral_at, ancestral_noise, population_frame, project_frame
from .registry import Objective, register
from .reverse_kl import population_reverse_kl
from .reward import reward_function

sg = jax.lax.stop_gradient

#: Doubling schedule and cap of the code's adaptive-beta search (docs/science/methods.md B, step 1).
ETA_MAX = 1e6
DOUBLINGS = 21  # 1, 2, ..., 2^20 >= ETA_MAX
BISECTIONS = 60


def tilt_kl(
    eta: Float[Array, " ..."], rewards: Float[Array, "... n"], log_weights: Float[Array, "... n"]
) -> Float[Array, " ..."]:
    r"""KL(p_eta || p_0) with p_0 = exp(log_weights) (normalised) and p_eta ∝ p_0 e^{eta r}:

    KL = sum_i p_eta,i eta (r_i - r_max) - log sum_i p_0,i e^{eta (r_i - r_max)}

    (shifted by the largest reward of positive weight, so nothing overflows at eta ~ 1e6). With
    p_0 uniform over a group this is KL(softmax(eta r) || Uniform_G).
    """
    eta = jnp.asarray(eta)[..., None]
    r_max = jnp.max(jnp.where(jnp.isfinite(log_weights), rewards, -jnp.inf), axis=-1, keepdims=True)
    shifted = eta * (rewards - r_max)
    logits = log_weights + shifted
    log_z = logsumexp(logits, axis=-1, keepdims=True)
    p = jnp.exp(logits - log_z)
    return jnp.sum(jnp.where(p > 0, p * shifted, 0.0), axis=-1) - log_z[..., 0]


def solve_eta(
    rewards: Float[Array, "... n"], log_weights: Float[Array, "... n"], budget: Scalar
) -> Float[Array, " ..."]:
    """eta >= 0 with KL(p_eta || p_0) = budget (docs/science/methods.md B step 1): hi = 1, 2, 4, ... until the KL
    reaches the budget (capped at 1e6, returned when never reached), then 60 bisection steps on
    [hi / 2, hi] ([0, 1] if hi = 1). KL is non-decreasing in eta. Not differentiated."""
    rewards, log_weights = sg(rewards), sg(log_weights)
    dtype = rewards.dtype
    grid = jnp.minimum(2.0 ** jnp.arange(DOUBLINGS, dtype=dtype), ETA_MAX)
    kls = jax.vmap(lambda e: tilt_kl(e, rewards, log_weights), out_axes=-1)(grid)
    reached = kls >= budget
    first = jnp.argmax(reached, axis=-1)
    hi = grid[first]
    lo = jnp.where(first > 0, grid[jnp.maximum(first - 1, 0)], 0.0)

    def bisect(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        above = tilt_kl(mid, rewards, log_weights) >= budget
        return jnp.where(above, lo, mid), jnp.where(above, mid, hi)

    lo, hi = jax.lax.fori_loop(0, BISECTIONS, bisect, (lo, hi))
    return jnp.where(jnp.any(reached, axis=-1), 0.5 * (lo + hi), ETA_MAX)


def group_eta(rewards: Float[Array, "g G"], budget: Scalar) -> Float[Array, " g"]:
    """Adaptive eta per group: KL(softmax(eta r) || Uniform_G) = budget."""
    group = rewards.shape[-1]
    log_uniform = jnp.full(rewards.shape, -jnp.log(group), rewards.dtype)
    return solve_eta(rewards, log_uniform, budget)


def leave_one_out_log_weights(logits: Float[Array, "g G"]) -> Float[Array, "g G"]:
    r"""log w_i = log e_i - log Z_{-i}, Z_{-i} = (1 / (G - 1)) sum_{j != i} e_j, e = exp(logits), in log
    space (no underflow of the e_j at large eta)."""
    group = logits.shape[-1]
    mask = jnp.where(jnp.eye(group, dtype=bool), -jnp.inf, 0.0).astype(logits.dtype)
    log_z = logsumexp(logits[..., None, :] + mask, axis=-1) - jnp.log(group - 1.0)
    return logits - log_z


def draw_ttt_discover(key: PRNGKeyArray, setup: Setup) -> Noise:
    """The step's draws: none (population), else label and eps of `ancestral_noise` (the batch is
    ancestral whatever `sampling` says)."""
    return Noise() if setup.estimator == "population" else ancestral_noise(key, setup)


def ttt_discover(
    params: LearnerParams, hyper: Hyper, setup: Setup, key: PRNGKeyArray, companion: LearnerParams
) -> tuple[Scalar, Estimate]:
    """`ttt_discover_given` at the draws of `draw_ttt_discover(key)`."""
    return ttt_discover_given(params, hyper, setup, draw_ttt_discover(key, setup), companion)


def ttt_discover_given(
    params: LearnerParams, hyper: Hyper, setup: Setup, noise: Noise, companion: LearnerParams
) -> tuple[Scalar, Estimate]:
    """Surrogate whose gradient estimates -grad (J - lambda KL(q || q_ref)) given the step's draws
    (`draw_ttt_discover`); see module doc."""
    q = learner_mixture(params, setup)
    ref = sg(learner_mixture(companion, setup))
    reward = reward_function(hyper, setup)
    one = jnp.ones((), setup.dtype)
    lam = hyper.kl_penalty

    if setup.estimator == "population":
        q_p, ref_p = population_frame((q, ref), setup)
        r_p = reward.project(*project_frame(setup))
        if setup.adaptive_eta:
            points, log_w = mixture_nodes(sg(q_p), setup.quadrature_order)
            eta = solve_eta(r_p(points), log_w, hyper.entropic_kl_budget)
        else:
            eta = hyper.entropic_eta
        utility = log_mean_exp(q_p, lambda x: eta * r_p(x), setup.quadrature_order)
        kl = population_reverse_kl(q_p, ref_p, setup.quadrature_order)
        surrogate = -utility + lam * kl
        return surrogate, Estimate(sg(surrogate), jnp.zeros((), bool), one)

    x, is_old = ancestral_at(sg(q), noise)
    rewards = reward(x).reshape(setup.num_groups, setup.group_size)
    if setup.adaptive_eta:
        eta = group_eta(rewards, hyper.entropic_kl_budget)
    else:
        eta = jnp.full((setup.num_groups,), hyper.entropic_eta, setup.dtype)
    logits = eta[:, None] * rewards
    weights = jnp.exp(leave_one_out_log_weights(logits)).reshape(-1)
    log_q = q.log_prob(x)
    ell = sg(log_q) - ref.log_prob(x)
    advantage = sg(weights - 1.0 + lam * (jnp.mean(ell) - ell))
    surrogate = -jnp.mean(advantage * log_q)
    utility = jnp.mean(logsumexp(logits, axis=-1) - jnp.log(setup.group_size))
    loss = -utility + lam * jnp.mean(ell)
    return surrogate, Estimate(sg(loss), ~jnp.any(is_old), sg(jnp.max(weights)))


TTT_DISCOVER = register(
    Objective(
        "ttt_discover",
        ttt_discover,
        "entropic utility log E_q[e^{eta R}] with leave-one-out weights, KL-anchored to q_ref = theta(0) "
        "(methods.md B; claims.md T8)",
        draw=draw_ttt_discover,
        estimate=ttt_discover_given,
        fields=(
            fields.Field(
                "adaptive_eta",
                "static",
                True,
                "eta per group by bisection to KL(softmax(eta r) || uniform) = "
                "`entropic_kl_budget` (population: KL(q_eta || q)); false uses `entropic_eta`",
                type=bool,
                objective=("ttt_discover",),
            ),
            fields.Field(
                "entropic_eta",
                "traced",
                2.0,
                "fixed eta of the entropic utility (adaptive_eta=false)",
                gt=0,
                le=1e6,
                symbol="η_ent",
                label="entropic eta",
                objective=("ttt_discover",),
            ),
            fields.Field(
                "entropic_kl_budget",
                "traced",
                0.6931471805599453,
                "adaptive-eta KL budget delta (ln 2)",
                gt=0,
                le=100,
                symbol="δ",
                default_text="ln 2",
                objective=("ttt_discover",),
            ),
            fields.Field(
                "kl_penalty",
                "traced",
                0.0,
                "lambda of the KL penalty to q_ref = theta(0)",
                ge=0,
                le=1e4,
                symbol="λ_KL",
                label="KL penalty",
                objective=("ttt_discover",),
            ),
        ),
    )
)
