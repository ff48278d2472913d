"""Sample-wise forgetting and backward transfer (docs/science/methods.md E; Harmon et al., "Mapping
Post-Training Forgetting in Language Models at Scale", ICLR 2026).

For N items with correctness a_i^pre, a_i^post in {0, 1} before and after a post-training stage:

    n_ab = #{i : a_i^pre = a, a_i^post = b},   F = n_10 / N (1 -> 0),   BT = n_01 / N (0 -> 1),

normalised by N as the paper does. Chance adjustment for k-choice items (uniform guessing when the
answer is unknown, independent guesses before and after):

    chance = (1 - a_pre)(1 - a_post) / (k - 1),
    F_true = max(F - chance, 0),         BT_true = max(BT - chance, 0),
    F_max = max((k a_pre - 1)/(k - 1), 0),   BT_max = max((k a_post - 1)/(k - 1), 0),

with a_pre, a_post the accuracies. Free-form items (k = 0) use the raw values (chance = 0,
ceilings = the accuracies, the k -> infinity limit). Relative variants: n_10 / (N a_pre) (the
fraction of previously correct items lost) and n_01 / (N (1 - a_pre)) (the fraction of previously
wrong items gained; the published code divides by N a_pre, which methods.md E flags as a bug).

Every function is pure JAX, accepts NumPy arrays, and is vectorised: items on the last axis, any
leading axes (tasks, seeds, configurations, steps) broadcast.
"""

from __future__ import annotations

import jax.numpy as jnp

from ._types import Array, Float

#: The columns of one transitions row, in the order of `forget-jax transitions` output.
COLUMNS = (
    "n",
    "acc_before",
    "acc_after",
    "n_00",
    "n_01",
    "n_10",
    "n_11",
    "forgetting",
    "backward_transfer",
    "chance",
    "forgetting_true",
    "backward_transfer_true",
    "forgetting_max",
    "backward_transfer_max",
    "relative_forgetting",
    "relative_transfer",
)


def _as_float(x) -> Array:
    x = jnp.asarray(x)
    return x.astype(jnp.result_type(float)) if not jnp.issubdtype(x.dtype, jnp.floating) else x


def _ratio(num: Array, den: Array) -> Array:
    """num / den, NaN where den = 0 (an empty denominator has no rate)."""
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1), jnp.nan)


def chance_level(acc_before: Float[Array, " ..."], acc_after: Float[Array, " ..."], k) -> Float[Array, " ..."]:
    r"""(1 - a_pre)(1 - a_post) / (k - 1): the share of 1 -> 0 (and, identically, 0 -> 1)
    transitions that independent uniform guesses over k choices produce; 0 for free-form (k = 0)."""
    a, b = _as_float(acc_before), _as_float(acc_after)
    k = jnp.asarray(k, a.dtype)
    return jnp.where(k >= 2, (1 - a) * (1 - b) / jnp.where(k >= 2, k - 1, 1), 0.0)


def knowledge_ceiling(accuracy: Float[Array, " ..."], k) -> Float[Array, " ..."]:
    r"""max((k a - 1)/(k - 1), 0): the accuracy without its chance part, a_true = (k a - 1)/(k - 1)
    (from 1 - a = (1 - a_true)(k - 1)/k); the accuracy itself for free-form (k = 0)."""
    a = _as_float(accuracy)
    k = jnp.asarray(k, a.dtype)
    return jnp.where(k >= 2, jnp.maximum((k * a - 1) / jnp.where(k >= 2, k - 1, 1), 0.0), a)


def adjust(
    forgetting: Float[Array, " ..."],
    backward_transfer: Float[Array, " ..."],
    acc_before: Float[Array, " ..."],
    acc_after: Float[Array, " ..."],
    k,
) -> dict[str, Array]:
    """Chance-adjusted rates and their ceilings from raw rates and accuracies (module doc).

    Returns:
        dict with `chance`, `forgetting_true`, `backward_transfer_true`, `forgetting_max`,
        `backward_transfer_max`.
    """
    chance = chance_level(acc_before, acc_after, k)
    return {
        "chance": chance,
        "forgetting_true": jnp.maximum(_as_float(forgetting) - chance, 0.0),
        "backward_transfer_true": jnp.maximum(_as_float(backward_transfer) - chance, 0.0),
        "forgetting_max": knowledge_ceiling(acc_before, k),
        "backward_transfer_max": knowledge_ceiling(acc_after, k),
    }


def transition_counts(before, after, valid=None) -> dict[str, Array]:
    """n, n_00, n_01, n_10, n_11 over the last (item) axis; `valid` masks items out (padding)."""
    a = jnp.asarray(before).astype(bool)
    b = jnp.asarray(after).astype(bool)
    v = jnp.ones(jnp.broadcast_shapes(a.shape, b.shape), bool) if valid is None else jnp.asarray(valid).astype(bool)

    def count(mask):
        return jnp.sum(mask & v, axis=-1)

    return {
        "n": count(jnp.ones_like(v)),
        "n_00": count(~a & ~b),
        "n_01": count(~a & b),
        "n_10": count(a & ~b),
        "n_11": count(a & b),
    }


def rates_from_counts(n_00, n_01, n_10, n_11, k) -> dict[str, Array]:
    """Every column of `COLUMNS` from the four transition counts (any leading shape) and k."""
    n00, n01, n10, n11 = (_as_float(c) for c in (n_00, n_01, n_10, n_11))
    n = n00 + n01 + n10 + n11
    acc_before = _ratio(n10 + n11, n)
    acc_after = _ratio(n01 + n11, n)
    forgetting = _ratio(n10, n)
    backward_transfer = _ratio(n01, n)
    out = {
        "n": n,
        "acc_before": acc_before,
        "acc_after": acc_after,
        "n_00": n00,
        "n_01": n01,
        "n_10": n10,
        "n_11": n11,
        "forgetting": forgetting,
        "backward_transfer": backward_transfer,
        **adjust(forgetting, backward_transfer, acc_before, acc_after, k),
        "relative_forgetting": _ratio(n10, n10 + n11),
        "relative_transfer": _ratio(n01, n00 + n01),
    }
    return {name: out[name] for name in COLUMNS}


def transitions(before, after, k=0, valid=None) -> dict[str, Array]:
    """Sample-wise metrics of one before / after pair of correctness arrays (items on the last axis).

    Args:
        before, after: correctness per item, 0/1 or bool, broadcastable, items last.
        k: number of choices (0 = free-form), scalar or broadcastable to the leading shape.
        valid: optional mask of real items (for padded batches of item sets).

    Returns:
        dict over `COLUMNS` with the leading shape.
    """
    c = transition_counts(before, after, valid)
    return rates_from_counts(c["n_00"], c["n_01"], c["n_10"], c["n_11"], k)


def expected_transitions(p_before, p_after, k=0) -> dict[str, Array]:
    r"""Exact expected metrics for independent Bernoulli correctness with per-item probabilities
    p^pre, p^post (docs/science/methods.md E, "Translation" 3):

        E[n_10]/N = mean_i p_i^pre (1 - p_i^post),   E[n_01]/N = mean_i (1 - p_i^pre) p_i^post,

    and likewise n_00, n_11; the chance adjustment is applied to the expected rates and accuracies.
    Items on the last axis. Returns the same dict as `transitions` (counts as expected counts)."""
    p, q = _as_float(p_before), _as_float(p_after)
    n_00 = jnp.sum((1 - p) * (1 - q), axis=-1)
    n_01 = jnp.sum((1 - p) * q, axis=-1)
    n_10 = jnp.sum(p * (1 - q), axis=-1)
    n_11 = jnp.sum(p * q, axis=-1)
    return rates_from_counts(n_00, n_01, n_10, n_11, k)


def noise_floor(p) -> Array:
    r"""Same-model forgetting F(theta, theta) = mean_i p_i (1 - p_i): what an unchanged model with
    stochastic answers shows as 1 -> 0 transitions between two evaluations."""
    p = _as_float(p)
    return jnp.mean(p * (1 - p), axis=-1)
