"""Item sets and answering modes: the sample-wise forgetting metric inside the mixture
(docs/science/methods.md E, "Translation into the mixture engine"; the formulas are samplewise.py).

**Items.** An item set of one target mode N(mu*, s*^2 I) is N items; item i has k candidate answers

    a_ij = c_i + delta s* (cos(2 pi j / k) v_i1 + sin(2 pi j / k) v_i2),   j = 0..k-1,

with the centre c_i ~ N(mu*, s*^2 I) and (v_i1, v_i2) a uniformly random orthonormal 2-frame of
R^d (Gram-Schmidt of two standard normal vectors): the vertices of a regular k-gon in a random
plane (for k = 3 the 2-simplex). In d = 1 there is no plane and k = 2: a_i = c_i -+ delta s*. The
correct candidate j*_i is the one of highest mode density, i.e. closest to mu*. Items depend on
the item seed (`samplewise_item_seed`) and the configuration's traced geometry (mu*, s*, delta)
only, never on the batch or the training seed. Old-task items use the old target mode, new-task
items the new one (key fold_in(key(item seed), 0) and 1).

**Exact 1/k chance.** A model whose answer on item i is a function of the candidate set only
(e.g. all its mass far from the old items at mu_n*, or greedy likelihood ranking under any model
that does not depend on c_i - mu*) answers j'_i independently of z_i = c_i - mu* given the
candidate frame. The correct index is argmin_j ||z_i + delta s* R_i u_j||; z_i ~ N(0, s*^2 I) is
isotropic, hence invariant under the rotations (and reflections) of the k-gon's plane that permute
its vertices cyclically, so every index is the argmin with probability 1/k and P(j'_i = j*_i) = 1/k.

**Answering modes** (`samplewise_answer`), p_i(theta) = P(item i answered correctly):

* `generative` (G): y ~ q_theta, answer argmin_j ||y - a_ij||; invalid (scored wrong) when
  min_j ||y - a_ij|| > R_max s* (`samplewise_invalid_radius`, 0 = no radius). In d = 1 the correct
  region is an interval (the half line on the correct side of c_i, cut to [a - R, a + R]) and
  p_i = sum_c w_c [Phi((hi - m_c)/s_c) - Phi((lo - m_c)/s_c)] is exact. For d > 1,
  p_i = beta mean_m 1{m_o + s_o z_m correct} + (1 - beta) mean_m 1{m_n + s_n z_m correct} with
  M = `samplewise_draws` common random numbers z_m ~ N(0, I_d), fixed by the item seed and shared
  by both components and every item (the component label is summed out exactly).
* `likelihood` (L): pi_i(j) = softmax_j(log q_theta(a_ij) / T) and p_i = pi_i(j*_i); at T = 0
  (`samplewise_temperature`) the greedy answer, p_i = 1{argmax_j q_theta(a_ij) = j*_i}.

**Metrics in the loop** (`metrics.METRICS`): before = theta(0), after = each logged theta; the
exact expected metrics of samplewise.expected_transitions on the old-task item set (`forgetting`,
`backward_transfer`, `forgetting_true`, `backward_transfer_true`, `old_task_accuracy`), the
new-task accuracy mean_i p_i^new (`new_task_accuracy`) and the same-model noise floor
F(theta, theta) = mean_i p_i (1 - p_i) of the old-task items (`forgetting_noise_floor`).
`samplewise_items: 0` switches them off (NaN). Per-seed sampled metrics: `sampled_transitions`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr

from . import fields, samplewise
from ._types import Array, Float, Int, PRNGKeyArray
from .fields import Field, Rule
from .model import LearnerParams, Mixture, learner_mixture, target_mixture
from .spec import Hyper, Setup

#: The store variables this module adds (name -> (symbol, words)); metrics.METRICS includes them.
SAMPLEWISE_METRICS: dict[str, tuple[str, str]] = {
    "forgetting": ("F", "forgetting (1→0, old items)"),
    "backward_transfer": ("BT", "backward transfer (0→1, old items)"),
    "forgetting_true": ("F_true", "chance-adjusted forgetting"),
    "backward_transfer_true": ("BT_true", "chance-adjusted backward transfer"),
    "old_task_accuracy": ("ā_old", "old-task accuracy"),
    "new_task_accuracy": ("ā_new", "new-task accuracy"),
    "forgetting_noise_floor": ("F(θ,θ)", "same-model forgetting noise floor"),
}

_OWN = "forget_jax.items"
_DOC = "docs/science/methods.md E"

fields.declare(
    Field(
        "samplewise_items",
        "static",
        256,
        f"items N per item set (old and new task) of the sample-wise metrics; 0 switches them off ({_DOC})",
        type=int,
        ge=0,
        le=65536,
        symbol="N",
        label="items",
        group="samplewise",
    ),
    Field(
        "samplewise_choices",
        "static",
        2,
        f"candidates k per item: a regular k-gon in a random plane around the centre; d = 1 needs k = 2 ({_DOC})",
        type=int,
        ge=2,
        le=64,
        symbol="k",
        label="choices",
        group="samplewise",
    ),
    Field(
        "samplewise_answer",
        "static",
        "generative",
        f"answering mode: `generative` (sample y ~ q, nearest candidate) or `likelihood` (softmax of log q over "
        f"the candidates) ({_DOC})",
        type=str,
        choices=("generative", "likelihood"),
        label="answering mode",
        group="samplewise",
    ),
    Field(
        "samplewise_draws",
        "static",
        64,
        f"common random numbers M per component of the generative mode for d > 1 (d = 1 is exact) ({_DOC})",
        type=int,
        ge=1,
        le=65536,
        symbol="M",
        label="draws",
        group="samplewise",
    ),
    Field(
        "samplewise_spread",
        "traced",
        1.0,
        f"candidate spread delta: distance of the candidates from the item centre, in units of the mode's scale "
        f"({_DOC})",
        gt=0,
        le=1e3,
        symbol="δ_items",
        label="item spread",
        group="samplewise",
    ),
    Field(
        "samplewise_invalid_radius",
        "traced",
        0.0,
        f"generative answers farther than R_max (mode's scale units) from every candidate are invalid (wrong); "
        f"0 = no radius ({_DOC})",
        ge=0,
        le=1e3,
        symbol="R_max",
        label="invalid radius",
        group="samplewise",
    ),
    Field(
        "samplewise_temperature",
        "traced",
        0.0,
        f"temperature T of the likelihood ranking softmax; 0 = greedy ({_DOC})",
        ge=0,
        le=1e3,
        symbol="T",
        label="ranking temperature",
        group="samplewise",
    ),
    Field(
        "samplewise_item_seed",
        "traced",
        0.0,
        f"seed of the item sets (and of the generative draws); items never depend on the batch ({_DOC})",
        ge=0,
        le=2**24,
        whole=True,
        label="item seed",
        group="samplewise",
    ),
    owner=_OWN,
)


def _choices_rule(v: Mapping[str, Any]) -> str | None:
    if v["dim"] == 1 and v["samplewise_choices"] != 2:
        return (
            f"samplewise_choices={v['samplewise_choices']} needs dim > 1 (d = 1 items have k = 2 candidates c -+ delta)"
        )
    return None


fields.add_rule(Rule(("dim", "samplewise_choices"), _choices_rule, "d = 1 items have k = 2"))


class ItemSet(eqx.Module):
    """N items of k candidates in R^d and the index of the correct one (closest to the mode)."""

    candidates: Float[Array, "n k d"]
    correct: Int[Array, " n"]
    scale: Float[Array, ""]  # s* of the mode (unit of delta and R_max)


def make_items(key: PRNGKeyArray, mean: Float[Array, " d"], scale, spread, n: int, k: int) -> ItemSet:
    """The item set of the mode N(mean, scale^2 I) (module doc): centres c_i = mean + scale xi_i,
    candidates c_i + spread scale (cos(2 pi j/k) v_i1 + sin(2 pi j/k) v_i2), correct = closest to mean.

    Args:
        key: the item key; mean: mu* (d,); scale: s*; spread: delta (units of s*); n, k: static.
    """
    d = mean.shape[0]
    dtype = mean.dtype
    k_centre, k_frame = jax.random.split(key)
    centres = mean + scale * jax.random.normal(k_centre, (n, d), dtype)
    if d == 1:
        offsets = jnp.broadcast_to(jnp.asarray([[-1.0], [1.0]], dtype), (n, 2, 1))
    else:
        g = jax.random.normal(k_frame, (n, 2, d), dtype)
        v1 = g[:, 0] / jnp.linalg.norm(g[:, 0], axis=-1, keepdims=True)
        w = g[:, 1] - jnp.sum(g[:, 1] * v1, axis=-1, keepdims=True) * v1
        v2 = w / jnp.linalg.norm(w, axis=-1, keepdims=True)
        angle = 2 * jnp.pi * jnp.arange(k, dtype=dtype) / k
        offsets = jnp.cos(angle)[None, :, None] * v1[:, None, :] + jnp.sin(angle)[None, :, None] * v2[:, None, :]
    candidates = centres[:, None, :] + spread * scale * offsets
    correct = jnp.argmin(jnp.sum((candidates - mean) ** 2, axis=-1), axis=-1)
    return ItemSet(candidates, correct, jnp.asarray(scale, dtype))


def item_key(hyper: Hyper) -> PRNGKeyArray:
    """key(item seed): the root of the item sets and of the generative draws."""
    return jax.random.key(jnp.asarray(hyper.samplewise_item_seed).astype(jnp.int32))


def item_sets(hyper: Hyper, setup: Setup) -> tuple[ItemSet, ItemSet]:
    """(old-task, new-task) item sets of the configuration's target p* (module doc)."""
    target = target_mixture(hyper, setup)
    key = item_key(hyper)
    n, k = setup.samplewise_items, setup.samplewise_choices
    old = make_items(jax.random.fold_in(key, 0), target.old_mean, target.old_scale, hyper.samplewise_spread, n, k)
    new = make_items(jax.random.fold_in(key, 1), target.new_mean, target.new_scale, hyper.samplewise_spread, n, k)
    return old, new


def _interval_probability(lo, hi, mean, scale):
    """P(lo < Y < hi) for Y ~ N(mean, scale^2), from the tail on the interval's side (no cancellation)."""
    a, b = (lo - mean) / scale, (hi - mean) / scale
    return jnp.where(a > 0, ndtr(-a) - ndtr(-b), ndtr(b) - ndtr(a))


def _radius(items: ItemSet, hyper: Hyper):
    r = hyper.samplewise_invalid_radius
    return jnp.where(r > 0, r * items.scale, jnp.inf)


def generative_correctness_1d(q: Mixture, items: ItemSet, hyper: Hyper) -> Float[Array, " n"]:
    """Exact p_i of mode (G) in d = 1: the correct candidate a (the other one a') is answered when
    y lies on a's side of the centre c and |y - a| <= R, an interval; Gaussian CDFs per component."""
    x = items.candidates[..., 0]  # (n, 2)
    centre = 0.5 * (x[:, 0] + x[:, 1])
    right = x[:, 0] > x[:, 1]
    a = jnp.take_along_axis(x, items.correct[:, None], axis=1)[:, 0]
    correct_right = jnp.where(right, items.correct == 0, items.correct == 1)
    r = _radius(items, hyper)
    lo = jnp.where(correct_right, jnp.maximum(centre, a - r), a - r)
    hi = jnp.where(correct_right, a + r, jnp.minimum(centre, a + r))
    p_old = _interval_probability(lo, hi, q.old_mean[0], q.old_scale)
    p_new = _interval_probability(lo, hi, q.new_mean[0], q.new_scale)
    return q.old_weight * p_old + (1 - q.old_weight) * p_new


def generative_draws(hyper: Hyper, setup: Setup) -> Float[Array, "m d"]:
    """The M common random numbers z_m ~ N(0, I_d) of mode (G) for d > 1 (key fold_in(item key, 2))."""
    return jax.random.normal(jax.random.fold_in(item_key(hyper), 2), (setup.samplewise_draws, setup.dim), setup.dtype)


def generative_correctness_draws(
    q: Mixture, items: ItemSet, hyper: Hyper, draws: Float[Array, "m d"]
) -> Float[Array, " n"]:
    """p_i of mode (G) by common random numbers: beta mean_m 1{y_o,m correct} + (1 - beta) mean_m
    1{y_n,m correct}, y_c,m = m_c + s_c z_m (module doc)."""
    origin = jnp.mean(items.candidates, axis=(0, 1))
    ys = jnp.stack([q.old_mean + q.old_scale * draws, q.new_mean + q.new_scale * draws]) - origin  # (2, m, d)
    a = items.candidates - origin  # (n, k, d)
    sq = (
        jnp.sum(a**2, axis=-1)[:, :, None, None]
        - 2 * jnp.einsum("nkd,cmd->nkcm", a, ys)
        + jnp.sum(ys**2, axis=-1)[None, None]
    )
    nearest = jnp.argmin(sq, axis=1)  # (n, 2, m)
    best = jnp.min(sq, axis=1)
    r = _radius(items, hyper)
    hit = (nearest == items.correct[:, None, None]) & (best <= r**2)
    share = jnp.mean(hit.astype(draws.dtype), axis=-1)  # (n, 2)
    return q.old_weight * share[:, 0] + (1 - q.old_weight) * share[:, 1]


def likelihood_correctness(q: Mixture, items: ItemSet, hyper: Hyper) -> Float[Array, " n"]:
    """p_i of mode (L): softmax_j(log q(a_ij) / T) at j*_i; the greedy indicator at T = 0."""
    logq = q.log_prob(items.candidates)  # (n, k)
    t = hyper.samplewise_temperature
    soft = jax.nn.softmax(logq / jnp.where(t > 0, t, 1), axis=-1)
    soft_correct = jnp.take_along_axis(soft, items.correct[:, None], axis=1)[:, 0]
    greedy = (jnp.argmax(logq, axis=-1) == items.correct).astype(logq.dtype)
    return jnp.where(t > 0, soft_correct, greedy)


def correctness(q: Mixture, items: ItemSet, hyper: Hyper, setup: Setup) -> Float[Array, " n"]:
    """p_i(theta) of the configured answering mode (module doc)."""
    if setup.samplewise_answer == "likelihood":
        return likelihood_correctness(q, items, hyper)
    if setup.dim == 1:
        return generative_correctness_1d(q, items, hyper)
    return generative_correctness_draws(q, items, hyper, generative_draws(hyper, setup))


class Reference(eqx.Module):
    """What the loop keeps of theta(0): the two item sets and the old-task p_i^pre."""

    old: ItemSet
    new: ItemSet
    p_before: Float[Array, " n"]


def item_probabilities(params: LearnerParams, hyper: Hyper, setup: Setup, sets=None):
    """(p_old, p_new): per-item correctness probabilities of theta on the old- and new-task items."""
    old, new = item_sets(hyper, setup) if sets is None else sets
    q = learner_mixture(params, setup)
    return correctness(q, old, hyper, setup), correctness(q, new, hyper, setup)


def reference(params: LearnerParams, hyper: Hyper, setup: Setup) -> Reference | None:
    """The before side (theta(0)) of the sample-wise metrics; None when they are off (N = 0)."""
    if setup.samplewise_items == 0:
        return None
    old, new = item_sets(hyper, setup)
    return Reference(old, new, correctness(learner_mixture(params, setup), old, hyper, setup))


def expected_metrics(p_before, p_old, p_new, k) -> dict[str, Array]:
    """The store variables (SAMPLEWISE_METRICS) from p^pre, p^post on the old items and p on the
    new items: samplewise.expected_transitions, the new-task accuracy and samplewise.noise_floor."""
    e = samplewise.expected_transitions(p_before, p_old, k)
    return dict(
        forgetting=e["forgetting"],
        backward_transfer=e["backward_transfer"],
        forgetting_true=e["forgetting_true"],
        backward_transfer_true=e["backward_transfer_true"],
        old_task_accuracy=e["acc_after"],
        new_task_accuracy=jnp.mean(p_new, axis=-1),
        forgetting_noise_floor=samplewise.noise_floor(p_old),
    )


def measure(params: LearnerParams, ref: Reference | None, hyper: Hyper, setup: Setup) -> dict[str, Array]:
    """The sample-wise store variables of theta against theta(0) (`reference`); NaN when off."""
    if ref is None:
        nan = jnp.asarray(jnp.nan, setup.dtype)
        return dict.fromkeys(SAMPLEWISE_METRICS, nan)
    p_old, p_new = item_probabilities(params, hyper, setup, (ref.old, ref.new))
    return expected_metrics(ref.p_before, p_old, p_new, setup.samplewise_choices)


def sampled_transitions(key: PRNGKeyArray, p_before, p_after, k, seeds: int = 3) -> dict[str, Array]:
    """Per-seed sampled metrics (methods.md E, "Translation" 2): for each of `seeds` seeds draw
    a_i^pre ~ Bern(p_i^pre) and a_i^post ~ Bern(p_i^post) with independent keys and return
    samplewise.transitions per seed (every column with a leading seed axis; items on the last axis
    of p, any leading axes broadcast after the seed axis)."""
    p, q = jnp.asarray(p_before), jnp.asarray(p_after)
    shape = (seeds, *jnp.broadcast_shapes(p.shape, q.shape))
    k_pre, k_post = jax.random.split(key)
    before = jax.random.uniform(k_pre, shape, p.dtype) < p
    after = jax.random.uniform(k_post, shape, q.dtype) < q
    return samplewise.transitions(before, after, k)
