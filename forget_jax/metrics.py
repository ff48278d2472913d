"""Metrics recorded at every logged step (docs/science/model.md D1-D7).

All exact quantities reuse the primitives of gaussian.py / divergence.py; nothing here imports
theory.py (the closed forms the simulation is checked against) or an objective.
"""

from __future__ import annotations

import jax.numpy as jnp

from ._types import Array, Float, Scalar
from .divergence import kl_divergence, soft_misassignment
from .gaussian import hard_misassignment, log_normal
from .items import SAMPLEWISE_METRICS
from .model import LearnerParams, Mixture, axis, learner_mixture, target_mixture, training_mixture
from .spec import Hyper, Setup

#: The per-logged-step metrics in the order the store writes them: name -> (symbol, words) for
#: plot labels (docs/science/model.md D1-D7 define them).
METRICS: dict[str, tuple[str, str]] = {
    "old_weight": ("β", "old weight"),
    "old_drift": ("δ", "old drift"),
    "old_drift_max": ("δ_max", "max old drift"),
    "new_mean_error": ("‖m_n − μ_n*‖", "new mean error"),
    "kl_to_target": ("KL(q‖p*)", "KL to target"),
    "kl_from_train": ("KL(p_train‖q)", "KL from train"),
    "loss": ("L", "loss"),
    "soft_misassignment": ("ε̃", "soft misassignment"),
    "hard_misassignment": ("ε", "hard misassignment"),
    "starved_fraction": ("P_starve", "starved fraction"),
    "old_overlap": ("A(T′)", "old overlap"),
    "new_overlap": ("A(T)", "new overlap"),
    "max_importance_weight": ("max ω", "max importance weight"),
    "old_mean_position": ("m_o", "old mean position"),
    "new_mean_position": ("m_n", "new mean position"),
    "old_scale": ("s_o", "old scale"),
    "new_scale": ("s_n", "new scale"),
    # sample-wise forgetting on item sets, theta(0) -> theta (items.py; docs/science/methods.md E)
    **SAMPLEWISE_METRICS,
}
METRIC_NAMES: tuple[str, ...] = tuple(METRICS)

#: Per-mode metrics of a pipeline (pipeline/loop.py; shape (num_logs, K) per configuration, store
#: dimension `mode`): name -> (symbol, words) (docs/science/pipelines.md).
MODE_METRICS: dict[str, tuple[str, str]] = {
    "mode_weight": ("w_k", "mode weight"),
    "mode_drift": ("δ_k", "mode drift"),
    "mode_mean_position": ("m_k", "mode mean position"),
    "mode_starved_fraction": ("P_miss,k", "mode starved fraction"),
}
MODE_METRIC_NAMES: tuple[str, ...] = tuple(MODE_METRICS)


def values_per_logged_step(pipeline_modes: int = 0) -> int:
    """Numbers a configuration logs per logged step: every metric of METRIC_NAMES, plus K per
    per-mode metric in a pipeline of K = `pipeline_modes` modes (0: not a pipeline)."""
    return len(METRIC_NAMES) + len(MODE_METRIC_NAMES) * pipeline_modes


def old_drift(params: LearnerParams, target: Mixture) -> Scalar:
    """delta = ||m_o - mu_o*|| / s_o* (D2; Mahalanobis with the old component's covariance)."""
    return jnp.linalg.norm(params.old_mean - target.old_mean) / target.old_scale


def metric_frame(q: Mixture, target: Mixture, setup: Setup) -> tuple[Float[Array, "d k"], Float[Array, " d"]]:
    """Orthonormal basis of the span of every mean (k = min(d, 3)) with origin mu_o*.

    For d = 1 or population runs (means stay on the axis) this is e_1; otherwise QR of the mean
    offsets. Exact for equal scales (quadrature.py)."""
    origin = target.old_mean
    if setup.dim == 1 or setup.estimator == "population":
        return axis(setup.dim, setup.dtype)[:, None], origin
    offsets = jnp.stack([target.new_mean - origin, q.old_mean - origin, q.new_mean - origin], axis=1)
    basis, _ = jnp.linalg.qr(offsets)  # reduced: (d, min(d, 3))
    return basis, origin


def _overlap_grid(center: Scalar, scale: Scalar, setup: Setup) -> Float[Array, " n"]:
    if setup.overlap_grid is not None:
        lo, hi, n = setup.overlap_grid
        return jnp.linspace(lo, hi, n, dtype=setup.dtype)
    return center + scale * jnp.linspace(-8.0, 8.0, 512, dtype=setup.dtype)


def component_overlap(
    target_weight: Scalar,
    target_mean: Scalar,
    target_scale: Scalar,
    model_weight: Scalar,
    model_mean: Scalar,
    model_scale: Scalar,
    setup: Setup,
) -> Scalar:
    r"""CRNC25's accuracy (D7): $\int \min(w^* N(\mu^*, s^*), w N(m, s)) / \int w^* N(\mu^*, s^*)$,
    trapezoid rule on a 1-D grid along the separation axis (marginals of the components)."""
    xs = _overlap_grid(target_mean, target_scale, setup)
    grid = xs[:, None]
    p = target_weight * jnp.exp(log_normal(grid, target_mean[None], target_scale))
    q = model_weight * jnp.exp(log_normal(grid, model_mean[None], model_scale))
    return jnp.trapezoid(jnp.minimum(p, q), xs) / jnp.trapezoid(p, xs)


def old_mode_mass(q: Mixture, target: Mixture, setup: Setup) -> Scalar:
    r"""The old weight of a uni-modal learner q = N(m, s^2 I): $E_{x \sim q}[w^*_o(x)]$ with
    $w^*_o = \beta^* N(\mu_o^*, s_o^{*2}) / p^*$ the target's posterior of its old mode.

    Trapezoid rule along e_1 on the overlap grid (setup.overlap_grid, else m_1 +- 8 s with 512
    points): w*_o depends on x_1 only (target means on e_1; d > 1 has equal scales) and the
    marginal of q along e_1 is N(m_1, s^2). Gauss-Hermite under q converges slowly here (w*_o is a
    steep sigmoid, two-sided for unequal scales: 64 nodes are 1e-3 off), the grid does not."""
    e1 = axis(setup.dim, setup.dtype)
    xs = _overlap_grid(q.old_mean @ e1, q.old_scale, setup)
    grid = xs[:, None]
    log_q = log_normal(grid, (q.old_mean @ e1)[None], q.old_scale)
    log_o = jnp.log(target.old_weight) + log_normal(grid, (target.old_mean @ e1)[None], target.old_scale)
    log_n = jnp.log1p(-target.old_weight) + log_normal(grid, (target.new_mean @ e1)[None], target.new_scale)
    return jnp.trapezoid(jnp.exp(log_q + log_o - jnp.logaddexp(log_o, log_n)), xs)


def measure(params: LearnerParams, hyper: Hyper, setup: Setup) -> dict[str, Scalar]:
    """State metrics of theta (everything in METRIC_NAMES that does not need the step history).

    A uni-modal learner (`learner_modes: 1`, q = N(m, s^2 I); docs/science/studies.md section 5)
    has no weight parameter, so its metrics read:

    * `old_weight` = E_{x ~ q}[w*_o(x)] (`old_mode_mass`), w*_o = beta* N(mu_o*, s_o*^2) / p* the
      target's posterior of its old mode: the learner's mass the target attributes to the old mode
      (~1 at the old mode, ~0 at the new one when they are well separated; beta* if q were p*);
    * `old_drift` = ||m - mu_o*|| / s_o*: how far the single mode has moved off the old mode
      (for this learner forgetting is drift; there is no mass to lose);
    * `new_mean_error` = ||m - mu_n*|| / s_n*, `old_mean_position` = `new_mean_position` = m,
      `old_scale` = `new_scale` = s;
    * `old_overlap`, `new_overlap`: CRNC25's single-mode accuracies int min(w*_k N*_k, q) /
      w*_k with the whole (unweighted) q, as in their `run_single_mode.py`;
    * the misassignments are 0: there is no second component to assign old data to.
    """
    q = learner_mixture(params, setup)
    target = target_mixture(hyper, setup)
    p_train = training_mixture(hyper, setup)
    basis, origin = metric_frame(q, target, setup)
    k = basis.shape[1]
    order = setup.metric_quadrature_order if k == 1 else min(setup.metric_quadrature_order, 16)
    q_k, t_k, tr_k = (m.project(basis, origin) for m in (q, target, p_train))
    e1 = axis(setup.dim, setup.dtype)
    beta = q.old_weight
    pooled_scale = jnp.sqrt(q.old_scale * q.new_scale)
    if setup.learner_modes == 1:
        # one Gaussian (model.learner_mixture): its mass near the old mode is E_q[w*_o(x)] and it
        # is the model component of both CRNC25 accuracies (their single-mode code, unweighted q)
        reported_weight = old_mode_mass(q, target, setup)
        new_model_weight = jnp.ones_like(beta)
    else:
        reported_weight, new_model_weight = beta, 1 - beta
    return dict(
        old_weight=reported_weight,
        old_drift=old_drift(params, target),
        new_mean_error=jnp.linalg.norm(q.new_mean - target.new_mean) / target.new_scale,
        kl_to_target=kl_divergence(q_k, t_k, order),
        kl_from_train=kl_divergence(tr_k, q_k, order),
        soft_misassignment=soft_misassignment(t_k, q_k, order),
        hard_misassignment=hard_misassignment(
            target.old_mean, target.old_scale, q.old_mean, q.new_mean, beta, pooled_scale
        ),
        old_overlap=component_overlap(
            target.old_weight, target.old_mean @ e1, target.old_scale, beta, q.old_mean @ e1, q.old_scale, setup
        ),
        new_overlap=component_overlap(
            1 - target.old_weight,
            target.new_mean @ e1,
            target.new_scale,
            new_model_weight,
            q.new_mean @ e1,
            q.new_scale,
            setup,
        ),
        old_mean_position=q.old_mean @ e1,
        new_mean_position=q.new_mean @ e1,
        old_scale=q.old_scale,
        new_scale=q.new_scale,
    )
