"""Sample-wise forgetting formulas (forget_jax/samplewise.py) against hand-computed examples and
against the statistics of independent Bernoulli answers (docs/science/methods.md E).

Hand examples write the items (or the four counts) out literally; the expected numbers are worked
by hand from the definitions in methods.md E and written as fractions. Random tests draw their
answers with NumPy, independently of the code under test, and compare with a derived expectation
within 4 standard errors (a false alarm rate of ~6e-5 per comparison).
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from forget_jax import samplewise as sw

# float32 results of sums of a few ratios of small integers: a few ulps at 1
TIGHT = 1e-6


def close(x, y, tol=TIGHT):
    return np.allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), atol=tol, rtol=0)


# Ten items written out: (before, after) = 11, 10, 11, 01, 00, 10, 00, 11, 11, 01
BEFORE = [1, 1, 1, 0, 0, 1, 0, 1, 1, 0]
AFTER = [1, 0, 1, 1, 0, 0, 0, 1, 1, 1]
# counted by hand: n_11 = 4 (items 1, 3, 8, 9), n_10 = 2 (2, 6), n_01 = 2 (4, 10), n_00 = 2 (5, 7)


def test_hand_counted_items_k4():
    r = sw.transitions(BEFORE, AFTER, k=4)
    assert [int(r[c]) for c in ("n", "n_00", "n_01", "n_10", "n_11")] == [10, 2, 2, 2, 4]
    # a_pre = (n_10 + n_11)/N = 6/10, a_post = (n_01 + n_11)/N = 6/10, F = 2/10, BT = 2/10
    assert close(r["acc_before"], 0.6) and close(r["acc_after"], 0.6)
    assert close(r["forgetting"], 0.2) and close(r["backward_transfer"], 0.2)
    # chance = (4/10)(4/10)/3 = 16/300; F_true = BT_true = 2/10 - 16/300 = 44/300
    assert close(r["chance"], 16 / 300)
    assert close(r["forgetting_true"], 44 / 300) and close(r["backward_transfer_true"], 44 / 300)
    # ceilings (4 * 6/10 - 1)/3 = 14/30
    assert close(r["forgetting_max"], 14 / 30) and close(r["backward_transfer_max"], 14 / 30)
    # relative: lost 2 of the 6 previously correct; gained 2 of the 4 previously wrong
    # (the published code divides the gain by N a_pre = 6 as well and would give 1/3)
    assert close(r["relative_forgetting"], 1 / 3)
    assert close(r["relative_transfer"], 1 / 2)
    assert tuple(r) == sw.COLUMNS


def test_paper_worked_example_by_its_formula():
    """Paper: 80% -> 70% on 4-option MCQ, raw forgetting 10%. N = 100 items: n_10 = 10 (F = 0.10),
    n_11 = 70 (a_pre = 0.80), n_01 = 0 (a_post = 0.70), n_00 = 20. By the paper's own formula
    chance = (0.2/3) * 0.3 = 0.02 and F_true = 0.08; the paper's text says "approximately 6%",
    which does not follow from its formula (methods.md E); forget-jax follows the formula."""
    r = sw.rates_from_counts(n_00=20, n_01=0, n_10=10, n_11=70, k=4)
    assert close(r["acc_before"], 0.8) and close(r["acc_after"], 0.7)
    assert close(r["forgetting"], 0.10)
    assert close(r["chance"], 0.02)
    assert close(r["forgetting_true"], 0.08)
    assert abs(float(r["forgetting_true"]) - 0.06) > 0.01  # not the paper's "≈ 6%"
    assert close(r["backward_transfer"], 0.0) and close(r["backward_transfer_true"], 0.0)  # clipped at 0
    # ceilings (4 * 0.8 - 1)/3 = 2.2/3, (4 * 0.7 - 1)/3 = 1.8/3
    assert close(r["forgetting_max"], 2.2 / 3) and close(r["backward_transfer_max"], 0.6)
    assert float(r["forgetting_true"]) <= float(r["forgetting_max"])


def test_clipping_below_chance_k2():
    # N = 10: n_00 = 8, n_01 = 1, n_11 = 1; a_pre = 1/10, a_post = 2/10; chance = (9/10)(8/10)/1 = 0.72
    r = sw.rates_from_counts(8, 1, 0, 1, k=2)
    assert close(r["chance"], 0.72)
    assert close(r["forgetting_true"], 0.0) and close(r["backward_transfer_true"], 0.0)
    # ceilings (2 * 0.1 - 1)/1 < 0 -> 0 and (2 * 0.2 - 1) < 0 -> 0: below chance accuracy, no knowledge
    assert close(r["forgetting_max"], 0.0) and close(r["backward_transfer_max"], 0.0)


@pytest.mark.parametrize(
    ("accuracy", "k", "ceiling"),
    [
        (0.25, 4, 0.0),  # exactly chance: no knowledge
        (0.10, 4, 0.0),  # below chance: clipped
        (1.00, 4, 1.0),  # perfect
        (0.50, 2, 0.0),  # chance for k = 2
        (0.75, 2, 0.5),  # (2 * 3/4 - 1)/1
        (0.60, 5, 0.5),  # (5 * 3/5 - 1)/4 = 2/4
        (0.37, 0, 0.37),  # free-form: the accuracy itself
    ],
)
def test_knowledge_ceiling_hand_values(accuracy, k, ceiling):
    assert close(sw.knowledge_ceiling(accuracy, k), ceiling)


def test_free_form_uses_raw_rates():
    r = sw.transitions(BEFORE, AFTER, k=0)
    assert close(r["chance"], 0.0)
    assert close(r["forgetting_true"], 0.2) and close(r["backward_transfer_true"], 0.2)
    assert close(r["forgetting_max"], 0.6) and close(r["backward_transfer_max"], 0.6)


def test_chance_is_the_same_for_forgetting_and_transfer():
    # F_chance = [(1 - a)/(k - 1)](1 - b), BT_chance = (1 - a)[(1 - b)/(k - 1)]: one term, hand values
    assert close(sw.chance_level(0.5, 0.25, 4), 0.5 * 0.75 / 3)
    assert close(sw.chance_level(0.25, 0.5, 4), 0.75 * 0.5 / 3)
    assert close(sw.chance_level(0.5, 0.25, 0), 0.0)


def test_empty_item_set_has_nan_rates():
    r = sw.rates_from_counts(0, 0, 0, 0, k=4)
    assert int(r["n"]) == 0 and np.isnan(float(r["forgetting"])) and np.isnan(float(r["acc_before"]))


def test_valid_mask_drops_padding():
    # padding the ten items with two (1, 0) items masked out leaves the counts unchanged
    r = sw.transitions([*BEFORE, 1, 1], [*AFTER, 0, 0], k=4, valid=[1] * 10 + [0, 0])
    assert [int(r[c]) for c in ("n", "n_00", "n_01", "n_10", "n_11")] == [10, 2, 2, 2, 4]


def _numpy_counts(before, after):
    """Independent reference: the four counts by a Python loop over the items."""
    c = {"n_00": 0, "n_01": 0, "n_10": 0, "n_11": 0}
    for a, b in zip(before, after):
        c[f"n_{int(a)}{int(b)}"] += 1
    return c


def test_vectorised_over_tasks_and_seeds_with_numpy_input():
    rng = np.random.default_rng(0)
    tasks, seeds, n = 2, 3, 17
    before = rng.random((tasks, seeds, n)) < 0.7  # NumPy bool input
    after = rng.random((tasks, seeds, n)) < 0.5
    k = np.array([[2], [4]])  # per task, broadcast over seeds
    r = sw.transitions(before, after, k=k)
    assert r["forgetting"].shape == (tasks, seeds) and r["forgetting"].dtype == jnp.float32
    for t, s in itertools.product(range(tasks), range(seeds)):
        ref = _numpy_counts(before[t, s], after[t, s])
        for name, value in ref.items():
            assert int(r[name][t, s]) == value
        one = sw.transitions(before[t, s].astype(np.int32), after[t, s].astype(np.int32), k=int(k[t, 0]))
        for name in sw.COLUMNS:
            assert close(r[name][t, s], one[name]), name


def test_two_independent_random_guessers_have_zero_adjusted_forgetting():
    r"""Two models that know nothing guess uniformly over k choices, independently before and after.

    Derivation: each item is correct with p = 1/k, independently. E[F] = E[n_10]/N = p (1 - p). The
    accuracies a, b are independent, so E[(1 - a)(1 - b)] = (1 - p)^2 and
    E[chance] = (1 - p)^2/(k - 1) = ((k - 1)/k)^2/(k - 1) = (k - 1)/k^2 = p (1 - p) = E[F]:
    E[F - chance] = 0 exactly at any N. Check: the mean of F - chance over R draws within 4 standard
    errors of 0. The clipped F_true = max(X, 0) with E[X] = 0 has E[F_true] = E|X|/2 <= sd(X)/2.
    """
    rng = np.random.default_rng(1)
    k, n, reps = 4, 200, 2000
    before = rng.integers(0, k, (reps, n)) == 0  # the correct answer is choice 0
    after = rng.integers(0, k, (reps, n)) == 0
    r = sw.transitions(before, after, k=k)
    x = np.asarray(r["forgetting"], np.float64) - np.asarray(r["chance"], np.float64)
    se = x.std(ddof=1) / np.sqrt(reps)
    assert abs(x.mean()) < 4 * se, (x.mean(), se)
    y = np.asarray(r["backward_transfer"], np.float64) - np.asarray(r["chance"], np.float64)
    assert abs(y.mean()) < 4 * y.std(ddof=1) / np.sqrt(reps)
    f_true = np.asarray(r["forgetting_true"], np.float64)
    assert f_true.mean() <= x.std(ddof=1) / 2 + 4 * f_true.std(ddof=1) / np.sqrt(reps)
    # and they score 1/k: the mean accuracy within 4 standard errors of 1/k
    acc = np.asarray(r["acc_before"], np.float64)
    assert abs(acc.mean() - 1 / k) < 4 * acc.std(ddof=1) / np.sqrt(reps)


def _z_ok(samples, expected, z=4.0):
    samples = np.asarray(samples, np.float64)
    se = samples.std(axis=0, ddof=1) / np.sqrt(samples.shape[0])
    return np.all(np.abs(samples.mean(axis=0) - np.asarray(expected, np.float64)) < z * se + 1e-7)


def test_expected_transitions_is_the_mean_of_sampled_ones():
    rng = np.random.default_rng(2)
    n, reps = 40, 4000
    p = rng.uniform(0.05, 0.95, n)
    q = rng.uniform(0.05, 0.95, n)
    before = rng.random((reps, n)) < p
    after = rng.random((reps, n)) < q
    sampled = sw.transitions(before, after, k=4)
    expected = sw.expected_transitions(p.astype(np.float32), q.astype(np.float32), k=4)
    for name in ("n_00", "n_01", "n_10", "n_11", "acc_before", "acc_after", "forgetting", "backward_transfer"):
        assert _z_ok(sampled[name], expected[name]), name


def test_noise_floor_is_the_forgetting_of_two_draws_of_one_model():
    rng = np.random.default_rng(3)
    n, reps = 40, 4000
    p = rng.uniform(0.0, 1.0, n)
    first = rng.random((reps, n)) < p
    second = rng.random((reps, n)) < p
    sampled = sw.transitions(first, second)
    floor = sw.noise_floor(p.astype(np.float32))
    assert _z_ok(sampled["forgetting"], floor)
    assert _z_ok(sampled["backward_transfer"], floor)  # symmetric: same model both times
    # a deterministic model (p in {0, 1}) has no floor
    assert close(sw.noise_floor(np.array([0.0, 1.0, 1.0], np.float32)), 0.0)
