"""SDFT (Shenfeld et al. 2026, "Self-Distillation Enables Continual Learning") in the two-mode
mixture: docs/science/methods.md A "Translation into the two-mode mixture" [PROPOSAL], docs/science/claims.md T7.

State. The companion of `train.TrainState` holds the teacher weights phi, an exponential moving
average of theta in the stored parameter space ((logit beta or beta), m_o, m_n, scales), updated
after every optimiser step (the code's `sync_ref_model`, `ref_model_sync_steps = 1`):

    phi <- (1 - alpha_ema) phi + alpha_ema theta,    alpha_ema = `teacher_ema` (paper 0.01).

phi starts at theta(0).

Teacher. T = Cond(q_phi, c), a conditioning operator (static `sdft_conditioning`) applied to the
EMA student q_phi, with the demonstration at mu_c = mu_n* (accurate new-task demos):

* `anchor_component` (default; BK26's reading [S]): beta_T = beta_phi, m_o^T = m_o^phi,
  m_n^T = (1 - a) m_n^phi + a mu_c, a = `teacher_anchor`. The teacher never touches the old mode,
  so the fixed point of the joint (theta, phi) dynamics keeps beta (no mass forgetting) and
  moves m_n to mu_c; drift of m_o is overlap-controlled (T7 "Drift", T4 with p* -> T).
* `anchor_density`: T = (1 - a) q_phi + a p_c, a four-component density, p_c = p_new*
  (`sdft_demo: new`, a forgetting stress test: beta_T = (1 - a) beta_phi in the separated limit,
  docs/science/claims.md T7 Example A) or p* (`sdft_demo: target`).
* `bayes_icl` (negative control): beta_T = beta_phi rho_o / (beta_phi rho_o + (1 - beta_phi) rho_n),
  rho_k = N(c; m_k^phi, (s_k^2 + tau_c^2) I), c = mu_n*, tau_c = `sdft_demo_scale`, components of
  phi (T7 Example C). logit beta_T = logit beta_phi + log(rho_o / rho_n): the demo always favours
  the new mode, so beta collapses.

The demonstration is its mean mu_c (no per-step demo sampling): the conditioning is deterministic.

Loss (static `sdft_direction`; the teacher is never differentiated):

* `reverse` (the paper's theory and BK26's analysis): L_R = E_{y~q_theta}[log q_theta(y) - sg(log T(y))],
  estimated exactly as `rkl` estimates KL(q || p*) (objectives/reverse_kl.py `reverse_kl_at`:
  population quadrature, or Monte Carlo pathwise / score, ancestral / stratified) with T in place of p*.
* `forward` (what the SDFT results used, per the repo README): L_F = E_{y~T}[log T(y) - log q_theta(y)].
  population: exact by quadrature under T (T's expectation is (1 - a) E_{q_phi} + a E_{p_c}).
  Monte Carlo (`pathwise` and `score` are the same estimator here): on-policy student samples
  y ~ q_theta (stop-gradient; ancestral or stratified) with capped importance weights
  w = min(T(y) / q_theta(y), C), C = `sdft_is_cap` (the code's truncated-IS cap 2.0), surrogate
  -mean(w log q_theta(y)). The cap biases the estimator toward the student's support (the
  "on-policy prefix" restriction of docs/science/methods.md A); C -> infinity is unbiased importance sampling.
  Estimate.max_importance_weight reports the largest applied (capped) weight.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import fields
from .._types import Array, Float, PRNGKeyArray, Scalar
from ..divergence import mixture_expectation
from ..gaussian import log_normal, logit
from ..model import LearnerParams, Mixture, learner_mixture, target_mixture
from ..spec import Hyper, Setup
from ._common import Estimate, Noise, ancestral_at, ancestral_noise, components_at, population_frame, stratified_noise
from .registry import Objective, register
from .reverse_kl import draw_reverse_kl, reverse_kl_at

sg = jax.lax.stop_gradient


class Teacher(eqx.Module):
    r"""T = (1 - a) base + a anchor: a two-component `base` (Cond applied to q_phi), optionally mixed
    with a second two-component `anchor` density p_c (`anchor_density`; a = 0 otherwise). The
    log-density is a logsumexp of two `Mixture.log_prob`s (gaussian.py primitives)."""

    base: Mixture
    anchor: Mixture
    anchor_weight: Scalar

    def log_prob(self, x: Float[Array, "... k"]) -> Float[Array, " ..."]:
        a = self.anchor_weight
        return jnp.logaddexp(jnp.log1p(-a) + self.base.log_prob(x), jnp.log(a) + self.anchor.log_prob(x))

    def project(self, basis, origin) -> Teacher:
        return Teacher(self.base.project(basis, origin), self.anchor.project(basis, origin), self.anchor_weight)

    def expectation(self, fn, order: int) -> Scalar:
        """E_T[fn] = (1 - a) E_base[fn] + a E_anchor[fn] by quadrature (zero-weight parts masked)."""
        a = self.anchor_weight
        e_base = mixture_expectation(self.base, fn, order)
        e_anchor = mixture_expectation(self.anchor, fn, order)
        return jnp.where(a < 1, (1 - a) * e_base, 0.0) + jnp.where(a > 0, a * e_anchor, 0.0)


def teacher(companion: LearnerParams, hyper: Hyper, setup: Setup) -> Teacher:
    """T = Cond(q_phi, c) for the configured `sdft_conditioning` (module doc)."""
    phi = sg(learner_mixture(companion, setup))
    target = target_mixture(hyper, setup)
    demo = target.new_mean
    a = hyper.teacher_anchor
    zero = jnp.zeros((), setup.dtype)
    if setup.sdft_conditioning == "anchor_density":
        p_c = (
            target
            if setup.sdft_demo == "target"
            else Mixture(zero, target.old_mean, target.new_mean, target.old_scale, target.new_scale)
        )
        return Teacher(phi, p_c, jnp.asarray(a, setup.dtype))
    if setup.sdft_conditioning == "bayes_icl":
        tau2 = jnp.square(hyper.sdft_demo_scale)
        log_rho_o = log_normal(demo, phi.old_mean, jnp.sqrt(jnp.square(phi.old_scale) + tau2))
        log_rho_n = log_normal(demo, phi.new_mean, jnp.sqrt(jnp.square(phi.new_scale) + tau2))
        log_odds = logit(phi.old_weight) + log_rho_o - log_rho_n
        base = Mixture(jax.nn.sigmoid(log_odds), phi.old_mean, phi.new_mean, phi.old_scale, phi.new_scale)
    else:  # anchor_component
        base = Mixture(phi.old_weight, phi.old_mean, (1 - a) * phi.new_mean + a * demo, phi.old_scale, phi.new_scale)
    return Teacher(base, base, zero)


def ema_teacher(companion: LearnerParams, params: LearnerParams, step, hyper: Hyper, setup: Setup) -> LearnerParams:
    """phi <- (1 - alpha_ema) phi + alpha_ema theta, every step, in the stored parameter space."""
    alpha = hyper.teacher_ema
    return jax.tree.map(lambda c, p: (1 - alpha) * c + alpha * p, companion, params)


def draw_sdft(key: PRNGKeyArray, setup: Setup) -> Noise:
    """The step's draws (a function of the key and the static setup only): none (population);
    `reverse`: those of `draw_reverse_kl` (eps, and the labels when ancestral; no replay
    uniforms: SDFT has no replay); `forward`: label and eps of `ancestral_noise` (ancestral) or
    eps of `stratified_noise` (stratified)."""
    if setup.estimator == "population":
        return Noise()
    if setup.sdft_direction == "reverse":
        noise = draw_reverse_kl(key, setup)
        return Noise(eps=noise.eps, label=noise.label)
    return ancestral_noise(key, setup) if setup.sampling == "ancestral" else stratified_noise(key, setup)


def sdft_given(
    params: LearnerParams, hyper: Hyper, setup: Setup, noise: Noise, companion: LearnerParams
) -> tuple[Scalar, Estimate]:
    """Surrogate whose gradient estimates grad_theta of the SDFT loss toward T = Cond(q_phi, c),
    given the step's draws (`draw_sdft`)."""
    q = learner_mixture(params, setup)
    t = teacher(companion, hyper, setup)
    if setup.sdft_direction == "reverse":
        return reverse_kl_at(q, t, setup, noise)
    return _forward(q, t, hyper.sdft_is_cap, setup, noise)


def sdft(
    params: LearnerParams, hyper: Hyper, setup: Setup, key: PRNGKeyArray, companion: LearnerParams
) -> tuple[Scalar, Estimate]:
    """`sdft_given` at the draws of `draw_sdft(key)`."""
    return sdft_given(params, hyper, setup, draw_sdft(key, setup), companion)


def _forward(q: Mixture, t: Teacher, cap: Scalar, setup: Setup, noise: Noise) -> tuple[Scalar, Estimate]:
    """Forward KL(T || q_theta): exact by quadrature under T, or capped-IS on student samples
    (the stop-gradient student at the step's draws)."""
    one = jnp.ones((), setup.dtype)
    false = jnp.zeros((), bool)
    if setup.estimator == "population":
        q_proj, t_proj = population_frame((q, t), setup)
        t_proj = sg(t_proj)
        kl = t_proj.expectation(lambda x: t_proj.log_prob(x) - q_proj.log_prob(x), setup.quadrature_order)
        return kl, Estimate(sg(kl), false, one)

    def weighted(x):
        """(mean of w log q, mean of w (log T - log q), max w) over student samples x."""
        log_q = q.log_prob(x)
        log_t = t.log_prob(x)
        w = sg(jnp.minimum(jnp.exp(log_t - sg(log_q)), cap))
        return jnp.mean(w * log_q), sg(jnp.mean(w * (log_t - log_q))), jnp.max(w)

    beta = sg(q.old_weight)
    if setup.sampling == "stratified":
        assert noise.eps is not None
        x_old, x_new = components_at(sg(q), noise.eps)
        (lq_o, l_o, w_o), (lq_n, l_n, w_n) = weighted(x_old), weighted(x_new)
        surrogate = -(beta * lq_o + (1 - beta) * lq_n)
        return surrogate, Estimate(beta * l_o + (1 - beta) * l_n, false, jnp.maximum(w_o, w_n))
    x, is_old = ancestral_at(sg(q), noise)
    lq, loss, w_max = weighted(x)
    return -lq, Estimate(loss, ~jnp.any(is_old), w_max)


SDFT = register(
    Objective(
        "sdft",
        sdft,
        "self-distillation to an EMA teacher T = Cond(q_phi, demo) (methods.md A; claims.md T7)",
        fields=(
            fields.Field(
                "sdft_conditioning",
                "static",
                "anchor_component",
                "teacher T = Cond(EMA student q_phi, demo at mu_n*): teacher new mean (1-a) m_n + a mu_n* "
                "(`anchor_component`), (1-a) q_phi + a p_c (`anchor_density`), or the weight reweighted by the "
                "demo likelihood (`bayes_icl`) (docs/science/methods.md A)",
                type=str,
                choices=("anchor_component", "anchor_density", "bayes_icl"),
                objective=("sdft",),
            ),
            fields.Field(
                "sdft_direction",
                "static",
                "reverse",
                "loss KL(q || T) (`reverse`, BK26's analysis) or KL(T || q) (`forward`, SDFT's runs)",
                type=str,
                choices=("reverse", "forward"),
                objective=("sdft",),
            ),
            fields.Field(
                "sdft_demo",
                "static",
                "new",
                "p_c of `anchor_density`: p_new* (`new`) or p* (`target`)",
                type=str,
                choices=("new", "target"),
                objective=("sdft",),
            ),
            fields.Field(
                "teacher_ema",
                "traced",
                0.01,
                "EMA rate alpha of the teacher weights, phi <- (1-alpha) phi + alpha theta every step (paper 0.01)",
                ge=0,
                le=1,
                symbol="α_ema",
                label="teacher EMA rate",
                objective=("sdft",),
            ),
            fields.Field(
                "teacher_anchor",
                "traced",
                0.1,
                "anchor strength a of `anchor_component` / `anchor_density`",
                ge=0,
                le=1,
                symbol="a",
                objective=("sdft",),
            ),
            fields.Field(
                "sdft_demo_scale",
                "traced",
                1.0,
                "`bayes_icl` demo noise tau_c in rho_k = N(c; m_k, s^2 + tau_c^2)",
                ge=0,
                le=1e3,
                symbol="τ_c",
                objective=("sdft",),
            ),
            fields.Field(
                "sdft_is_cap",
                "traced",
                2.0,
                "cap C of the forward Monte Carlo weights min(T/q, C)",
                gt=0,
                le=1e6,
                symbol="C",
                objective=("sdft",),
            ),
        ),
        companion_update=ema_teacher,
        draw=draw_sdft,
        estimate=sdft_given,
    )
)
