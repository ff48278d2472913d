"""Static structure vs traced numbers: the central design decision of forget-jax.

`Setup` holds everything that changes array shapes or the program itself (dimension, batch size,
steps, log interval, objective, estimator, sampling, update rule, optimiser, freeze flags). It is
hashable: one `Setup` = one compiled program.

`Hyper` holds every number a sweep varies (separation, replay ratio, learning rate, target weight,
initialisation, seed, ...). Its leaves are arrays, so a batch of configurations is a `Hyper` whose
leaves have a leading axis and the training loop is `vmap`-ed over it (purejaxrl / gymnax style:
the swept value is moved out of the static config into a traced argument).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ._types import Array, Int, Scalar

Objective = Literal["fkl", "rkl", "chen2025_fkl", "chen2025_rkl", "sdft", "ttt_discover", "oapl"]
Estimator = Literal["population", "pathwise", "score"]
Sampling = Literal["ancestral", "stratified"]
WeightParam = Literal["logit", "direct", "replicator"]
Optimizer = Literal["sgd", "adam"]
SdftConditioning = Literal["anchor_component", "anchor_density", "bayes_icl"]
SdftDirection = Literal["reverse", "forward"]
SdftDemo = Literal["new", "target"]
Reward = Literal["quadratic", "linear", "log_new"]


@dataclass(frozen=True)
class Setup:
    """Static (compile-time) structure of a simulation. Hashable; defines one compiled program.

    Attributes:
        objective: `fkl` (SFT, KL(p_train || q)), `rkl` (on-policy RL, KL(q || p*)), or CRNC25's
            `chen2025_fkl` / `chen2025_rkl` estimators (theory.md section 5), or the methods of
            methods.md A-C in the mixture: `sdft` (self-distillation to an EMA teacher, T7),
            `ttt_discover` (entropic utility with leave-one-out weights, T8), `oapl` (squared
            optimal-advantage regression on lagged-policy samples, T9).
        estimator: `population` (exact expectation by Gauss-Hermite quadrature, no sampling noise),
            `pathwise` (Monte Carlo, reparameterised within components) or `score`
            (Monte Carlo, score function with a leave-one-out baseline). For FKL the data do not
            depend on theta, so `pathwise` and `score` are the same Monte Carlo estimator.
        sampling: `ancestral` (labels drawn from the mixture weight: starvation lives here) or
            `stratified` (both components evaluated in every batch, Rao-Blackwellised over the label).
        dim: dimension d of x.
        batch_size: B, samples per step (ignored by `population`).
        steps: number of optimisation steps T.
        log_every: metrics are recorded at steps 0, k, 2k, ..., T (memory O(T / k)).
        weight_param: `logit` (GD on a = logit beta), `direct` (GD on beta, clipped) or
            `replicator` (Fisher-Rao / replicator step beta <- beta - eta beta (1-beta) dL/dbeta,
            clipped; with eta = 1 under FKL this is exactly the EM update beta <- E[w_o]).
        optimizer: `sgd` or `adam` (optax transforms; the learning rate is traced).
        train_weight, train_old_mean, train_new_mean, train_scales: freeze flags (False = frozen).
        quadrature_order: Gauss-Hermite nodes per axis for population objectives.
        metric_quadrature_order: nodes per axis for the exact KL / misassignment metrics.
        weight_clip: beta is clipped to [weight_clip, 1 - weight_clip] for `direct`/`replicator`.
        scale_min: learnable scales are clipped to >= scale_min (CRNC25: 1e-3).
        overlap_grid: (lo, hi, n) grid along the separation axis for the CRNC25 overlap metrics;
            None places n = 512 points over each target component +- 8 scales.
        adam_b1, adam_b2, adam_eps: Adam constants.
        x64: run in float64 (`train.precision` enables it around the run only).
        sdft_conditioning: SDFT teacher operator T = Cond(q_phi, demo) (methods.md A, theory.md T7):
            `anchor_component` (teacher's new mean pulled toward mu_n*), `anchor_density`
            (T = (1 - a) q_phi + a p_c) or `bayes_icl` (posterior reweighting by a demo at mu_n*).
        sdft_direction: `reverse` (E_q[log q - log T], BK26's analysis) or `forward`
            (E_T[log T - log q], what the SDFT runs used).
        sdft_demo: p_c of `anchor_density`: `new` (p_new*, a forgetting stress test) or `target` (p*).
        reward: reward preset of `ttt_discover` / `oapl` (methods.md B, C): `quadratic` bump
            -|y - mu_R|^2 / (2 rho^2), `linear` w . y, or `log_new` = log p_new*(y).
        adaptive_eta: TTT-Discover's per-group eta by bisection to KL(softmax(eta r) || U) = budget
            (population: KL(q_eta || q) = budget); False uses the traced `entropic_eta`.
        group_size: G, samples per group of `ttt_discover` / `oapl`; batch_size = groups x G.
    """

    objective: Objective = "fkl"
    estimator: Estimator = "population"
    sampling: Sampling = "ancestral"
    dim: int = 1
    batch_size: int = 64
    steps: int = 1000
    log_every: int = 10
    weight_param: WeightParam = "logit"
    optimizer: Optimizer = "sgd"
    train_weight: bool = True
    train_old_mean: bool = True
    train_new_mean: bool = True
    train_scales: bool = False
    quadrature_order: int = 64
    metric_quadrature_order: int = 64
    weight_clip: float = 1e-3
    scale_min: float = 1e-3
    overlap_grid: tuple[float, float, int] | None = None
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    x64: bool = False
    sdft_conditioning: SdftConditioning = "anchor_component"
    sdft_direction: SdftDirection = "reverse"
    sdft_demo: SdftDemo = "new"
    reward: Reward = "quadratic"
    adaptive_eta: bool = True
    group_size: int = 8

    @property
    def dtype(self):
        return jnp.float64 if self.x64 else jnp.float32

    def __post_init__(self):
        if (self.objective in ("ttt_discover", "oapl") and self.estimator != "population"
                and (self.group_size < 2 or self.batch_size % self.group_size)):
            raise ValueError(f"objective={self.objective} needs group_size >= 2 dividing batch_size "
                             f"(got group_size={self.group_size}, batch_size={self.batch_size})")

    @property
    def num_groups(self) -> int:
        """Groups per batch of the grouped objectives (`ttt_discover`, `oapl`)."""
        return self.batch_size // self.group_size

    @property
    def num_logs(self) -> int:
        """Number of logged points, including the initial state at step 0."""
        return self.steps // self.log_every + 1

    @property
    def is_reverse(self) -> bool:
        return self.objective in ("rkl", "chen2025_rkl")

    def logged_steps(self) -> np.ndarray:
        return np.arange(self.num_logs) * self.log_every


class Hyper(eqx.Module):
    """Traced numbers of one configuration (or, with a leading axis on every leaf, of a batch).

    Geometry (theory.md section 1): the target is
    p* = beta* N(mu_o*, s_o^2 I) + (1 - beta*) N(mu_n*, s_n^2 I) with mu_o* = target_old_mean e_1
    and mu_n* = mu_o* + separation * s_o e_1, so `separation` is the Mahalanobis distance Delta
    when s_o = s_n. The learner starts at beta(0) = init_old_weight,
    m_o(0) = mu_o* + init_old_offset e_1 and m_n(0) = mu_n* + init_new_offset e_1 (offsets in the
    units of x, along the separation axis).

    Method knobs (methods.md A-C; ignored by the other objectives): `teacher_ema` (SDFT alpha_ema),
    `teacher_anchor` (SDFT anchor strength a), `sdft_demo_scale` (bayes_icl demo noise tau_c),
    `sdft_is_cap` (forward Monte Carlo weight cap C), `reward_width` (rho), `reward_offset`
    (mu_R - mu_n* along e_1), `reward_slope` (w = slope e_1 of the linear reward), `entropic_eta`
    (fixed TTT eta), `entropic_kl_budget` (adaptive-eta KL budget, ln 2), `kl_penalty` (TTT
    lambda to q_ref = theta(0)), `oapl_lag` (L, steps between syncs), `oapl_beta1`, `oapl_beta2`.
    """

    separation: Scalar
    target_old_weight: Scalar
    target_old_mean: Scalar
    target_old_scale: Scalar
    target_new_scale: Scalar
    init_old_weight: Scalar
    init_old_offset: Scalar
    init_new_offset: Scalar
    init_old_scale: Scalar
    init_new_scale: Scalar
    replay_ratio: Scalar
    learning_rate: Scalar
    old_lr_scale: Scalar
    new_lr_scale: Scalar
    reward_temperature: Scalar
    teacher_ema: Scalar
    teacher_anchor: Scalar
    sdft_demo_scale: Scalar
    sdft_is_cap: Scalar
    reward_width: Scalar
    reward_offset: Scalar
    reward_slope: Scalar
    entropic_eta: Scalar
    entropic_kl_budget: Scalar
    kl_penalty: Scalar
    oapl_lag: Scalar
    oapl_beta1: Scalar
    oapl_beta2: Scalar
    seed: Int[Array, ""]


HYPER_DEFAULTS: dict[str, float] = dict(
    separation=4.0,
    target_old_weight=0.5,
    target_old_mean=0.0,
    target_old_scale=1.0,
    target_new_scale=1.0,
    init_old_weight=0.5,
    init_old_offset=0.0,
    init_new_offset=-1.0,
    init_old_scale=1.0,
    init_new_scale=1.0,
    replay_ratio=0.0,
    learning_rate=0.05,
    old_lr_scale=1.0,
    new_lr_scale=1.0,
    reward_temperature=0.1,
    teacher_ema=0.01,
    teacher_anchor=0.1,
    sdft_demo_scale=1.0,
    sdft_is_cap=2.0,
    reward_width=1.0,
    reward_offset=0.0,
    reward_slope=1.0,
    entropic_eta=2.0,
    entropic_kl_budget=0.6931471805599453,
    kl_penalty=0.0,
    oapl_lag=10.0,
    oapl_beta1=1.0,
    oapl_beta2=1.0,
    seed=0,
)

HYPER_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Hyper))
SETUP_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Setup))


def make_hyper(dtype=np.float32, **values) -> Hyper:
    """Build a `Hyper` from keyword values (scalars or equal-length 1-D arrays); unset fields take
    `HYPER_DEFAULTS`. Scalars are broadcast against arrays, so `make_hyper(separation=[2, 4, 6])`
    is a batch of three configurations.

    Leaves are host (NumPy) arrays of `dtype` (seeds int32): they keep float64 precision even
    before float64 is enabled, and `simulate` moves them to the device under the Setup's precision.
    """
    unknown = set(values) - set(HYPER_FIELDS)
    if unknown:
        raise ValueError(f"unknown Hyper field(s) {sorted(unknown)}; allowed: {list(HYPER_FIELDS)}")
    merged = {**HYPER_DEFAULTS, **values}
    arrays = {k: np.asarray(v) for k, v in merged.items()}
    shape = np.broadcast_shapes(*(a.shape for a in arrays.values()))
    dtype = np.dtype(dtype)
    out = {}
    for k, a in arrays.items():
        a = np.broadcast_to(a, shape)
        out[k] = np.array(a, dtype=np.int32 if k == "seed" else dtype)
    return Hyper(**out)
