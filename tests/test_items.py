"""Item sets and answering modes of the sample-wise metrics in simulation (forget_jax/items.py;
docs/science/methods.md E, "Translation into the mixture engine").

Every reference here is independent of the code under test: NumPy Monte Carlo of the answering
process (sample y, nearest candidate, invalid radius), a NumPy/SciPy softmax of mixture log
densities, binomial bands derived from symmetry, and z-tests of Bernoulli draws. Tolerances are
stated where they are used (z = 5 bands: a false alarm per comparison has probability < 1e-6).
"""

from __future__ import annotations

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from forget_jax import Setup, items, make_hyper, simulate
from forget_jax.model import LearnerParams, Mixture, init_params, learner_mixture, weight_parameter

Z = 5.0  # two-sided z band of every Monte Carlo comparison


def _np_items(item_set):
    return np.asarray(item_set.candidates, np.float64), np.asarray(item_set.correct)


def _far_model(setup, hyper):
    """All mass at mu_n* (both components), far from every old item: a model that knows nothing."""
    old, new = items.item_sets(hyper, setup)
    mu_n = jnp.mean(new.candidates, axis=(0, 1))  # ~ mu_n*; exact value irrelevant (far)
    one = jnp.ones((), setup.dtype)
    return Mixture(0.5 * one, mu_n, mu_n, one, one), old


# ---------------------------------------------------------------------------------------------
# a model that knows nothing scores 1/k


@pytest.mark.parametrize(
    ("dim", "k", "answer", "temperature"),
    [
        (1, 2, "generative", 0.0),
        (1, 2, "likelihood", 0.0),
        (3, 4, "likelihood", 0.0),
        (3, 4, "likelihood", 1.0),
        (2, 3, "generative", 0.0),
    ],
)
def test_model_that_knows_nothing_scores_one_over_k(dim, k, answer, temperature):
    """Symmetry (items.py module doc): a model far away at mu_n* answers item i by a function of
    its candidate frame only (nearest to mu_n*, or the softmax of densities that depend on the
    candidates' positions relative to mu_n*, which for Delta = 40 is the frame orientation), while
    the correct index argmin_j ||z_i + delta s R_i u_j|| with z_i ~ N(0, s^2 I) isotropic and
    independent of the frame is each vertex with probability 1/k (the k-gon's cyclic symmetry maps
    z_i's law to itself). So p_i is a draw with mean 1/k, and the accuracy over N items lies in
    1/k +- Z sqrt((1/k)(1 - 1/k) / N) (p_i in [0, 1] has variance <= E p (1 - E p))."""
    n = 4096
    setup = Setup(dim=dim, samplewise_choices=k, samplewise_items=n, samplewise_answer=answer)
    hyper = make_hyper(separation=40.0, samplewise_temperature=temperature)
    q, old = _far_model(setup, hyper)
    p = items.correctness(q, old, hyper, setup)
    band = Z * np.sqrt((1 / k) * (1 - 1 / k) / n)
    assert abs(float(jnp.mean(p)) - 1 / k) < band
    # the step of the argument: every vertex index is the correct one with probability 1/k
    share = np.bincount(np.asarray(old.correct), minlength=k) / n
    assert np.all(np.abs(share - 1 / k) < band), share


def test_model_at_the_old_mode_ranks_every_item_correctly():
    """Greedy likelihood ranking under q = the old target mode picks the candidate of highest old
    density, which is the correct one by definition: accuracy exactly 1 (d = 3, k = 5)."""
    setup = Setup(dim=3, samplewise_choices=5, samplewise_answer="likelihood")
    hyper = make_hyper(separation=4.0)
    old, _ = items.item_sets(hyper, setup)
    z = jnp.zeros((3,), jnp.float32)
    one = jnp.ones((), jnp.float32)
    p = items.correctness(Mixture(one, z, z + 4.0, one, one), old, hyper, setup)
    assert float(jnp.min(p)) == 1.0


# ---------------------------------------------------------------------------------------------
# answering modes against independent NumPy references

BETA, M_O, M_N, S_O, S_N = 0.3, 0.4, 2.5, 0.8, 1.3


def _np_generative(cands, weight, means, scales, radius, draws, rng):
    """NumPy Monte Carlo of mode (G): y ~ q (label ~ Bern(weight) then Gaussian), nearest candidate,
    invalid beyond `radius`; returns the answered index per (item, draw) (-1 = invalid)."""
    n, _, d = cands.shape
    label = rng.random((n, draws)) < weight
    mean = np.where(label[..., None], means[0], means[1])
    scale = np.where(label, scales[0], scales[1])[..., None]
    y = mean + scale * rng.standard_normal((n, draws, d))
    dist = np.linalg.norm(y[:, :, None, :] - cands[:, None, :, :], axis=-1)  # (n, draws, k)
    answer = np.argmin(dist, axis=-1)
    return np.where(np.min(dist, axis=-1) <= radius, answer, -1)


@pytest.mark.parametrize("radius", [0.0, 1.5])
def test_generative_1d_exact_against_numpy_monte_carlo(radius):
    setup = Setup(samplewise_items=64)
    hyper = make_hyper(separation=3.0, samplewise_spread=0.7, samplewise_invalid_radius=radius)
    old, _ = items.item_sets(hyper, setup)
    one = jnp.ones((), jnp.float32)
    q = Mixture(BETA * one, jnp.asarray([M_O], jnp.float32), jnp.asarray([M_N], jnp.float32), S_O * one, S_N * one)
    p = np.asarray(items.correctness(q, old, hyper, setup), np.float64)
    cands, correct = _np_items(old)
    draws = 20000
    r = np.inf if radius == 0 else radius * 1.0  # target_old_scale = 1
    ans = _np_generative(cands, BETA, np.array([[M_O], [M_N]]), (S_O, S_N), r, draws, np.random.default_rng(1))
    p_mc = np.mean(ans == correct[:, None], axis=1)
    tol = Z * np.sqrt(p * (1 - p) / draws) + 1e-4  # 1e-4: float32 CDF differences
    assert np.all(np.abs(p_mc - p) <= tol), np.max(np.abs(p_mc - p) - tol)
    assert np.std(p) > 0.05  # the items differ in difficulty (not a degenerate comparison)


def test_generative_draws_against_numpy_monte_carlo():
    """d = 3, k = 4, R_max = 2: the common-random-number estimator with M = 4096 draws against an
    independent NumPy simulation of 20000 draws per item. Per item both are unbiased; the CRN
    estimate beta X_o + (1 - beta) X_n has standard deviation <= 1/(2 sqrt(M)), the NumPy one
    <= 1/(2 sqrt(20000)), hence the band."""
    m = 4096
    setup = Setup(dim=3, samplewise_choices=4, samplewise_items=32, samplewise_draws=m)
    hyper = make_hyper(separation=3.0, samplewise_invalid_radius=2.0, samplewise_spread=1.2)
    old, _ = items.item_sets(hyper, setup)
    one = jnp.ones((), jnp.float32)
    e1 = jnp.asarray([1.0, 0.0, 0.0], jnp.float32)
    q = Mixture(BETA * one, M_O * e1 + 0.3, M_N * e1, S_O * one, S_N * one)
    p = np.asarray(items.correctness(q, old, hyper, setup), np.float64)
    cands, correct = _np_items(old)
    draws = 20000
    means = np.stack([np.asarray(q.old_mean, np.float64), np.asarray(q.new_mean, np.float64)])
    ans = _np_generative(cands, BETA, means, (S_O, S_N), 2.0, draws, np.random.default_rng(2))
    p_mc = np.mean(ans == correct[:, None], axis=1)
    tol = Z * 0.5 * np.sqrt(1 / m + 1 / draws)
    assert np.all(np.abs(p_mc - p) <= tol), np.max(np.abs(p_mc - p))
    assert np.std(p) > 0.05


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_likelihood_ranking_against_numpy_softmax(temperature):
    setup = Setup(dim=2, samplewise_choices=3, samplewise_items=128, samplewise_answer="likelihood")
    hyper = make_hyper(separation=3.0, samplewise_temperature=temperature)
    old, _ = items.item_sets(hyper, setup)
    one = jnp.ones((), jnp.float32)
    mo, mn = np.array([M_O, -0.2]), np.array([M_N, 0.5])
    q = Mixture(BETA * one, jnp.asarray(mo, jnp.float32), jnp.asarray(mn, jnp.float32), S_O * one, S_N * one)
    p = np.asarray(items.correctness(q, old, hyper, setup), np.float64)
    cands, correct = _np_items(old)

    def log_gauss(x, m, s):  # isotropic d = 2
        return -np.sum((x - m) ** 2, axis=-1) / (2 * s**2) - 2 * np.log(s) - np.log(2 * np.pi)

    logq = logsumexp(
        np.stack([np.log(BETA) + log_gauss(cands, mo, S_O), np.log(1 - BETA) + log_gauss(cands, mn, S_N)]), axis=0
    )
    if temperature == 0:
        ref = (np.argmax(logq, axis=-1) == correct).astype(float)
        np.testing.assert_array_equal(p, ref)
        assert 0.2 < ref.mean() < 1.0
    else:
        soft = np.exp(logq / temperature - logsumexp(logq / temperature, axis=-1, keepdims=True))
        np.testing.assert_allclose(p, soft[np.arange(len(correct)), correct], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# exact expected metrics vs sampled; noise floor


def test_exact_expected_metrics_agree_with_sampled():
    """E over Bernoulli draws of the sampled F, BT, accuracies and the unclipped F - chance equal
    the exact expected values (pre and post draws are independent, so E[chance] = chance of the
    expected accuracies). S = 4000 seeds; z-test on the seed mean."""
    setup = Setup(samplewise_items=256)
    hyper = make_hyper(separation=4.0, init_old_weight=0.9, samplewise_invalid_radius=2.5)
    theta0 = init_params(hyper, setup)
    theta = LearnerParams(
        weight=weight_parameter(jnp.asarray(0.2, jnp.float32), setup),
        old_mean=theta0.old_mean + 0.6,
        new_mean=theta0.new_mean,
        old_scale=theta0.old_scale,
        new_scale=theta0.new_scale,
    )
    p_pre, _ = items.item_probabilities(theta0, hyper, setup)
    p_post, p_new = items.item_probabilities(theta, hyper, setup)
    exact = items.expected_metrics(p_pre, p_post, p_new, 2)
    s = 4000
    sampled = items.sampled_transitions(jax.random.key(7), p_pre, p_post, 2, seeds=s)
    assert sampled["forgetting"].shape == (s,)
    pairs = {
        "forgetting": (sampled["forgetting"], exact["forgetting"]),
        "backward_transfer": (sampled["backward_transfer"], exact["backward_transfer"]),
        "old_task_accuracy": (sampled["acc_after"], exact["old_task_accuracy"]),
        "F - chance": (
            sampled["forgetting"] - sampled["chance"],
            exact["forgetting"] - (1 - jnp.mean(p_pre)) * (1 - jnp.mean(p_post)),
        ),
    }
    for name, (draws, value) in pairs.items():
        draws = np.asarray(draws, np.float64)
        se = draws.std(ddof=1) / np.sqrt(s)
        assert abs(draws.mean() - float(value)) < Z * se, name
    assert float(exact["forgetting_true"]) > 0.05  # the case has real forgetting


def _np_same_model_forgetting(cands, correct, q, radius, rounds, rng):
    """Two independent NumPy evaluations of one model q (mode G, d = 1), `rounds` times: the
    1 -> 0 share per round."""
    means = np.stack([np.asarray(q.old_mean, np.float64), np.asarray(q.new_mean, np.float64)])
    scales = (float(q.old_scale), float(q.new_scale))
    f = []
    for _ in range(rounds):
        a = [
            _np_generative(cands, float(q.old_weight), means, scales, radius, 1, rng)[:, 0] == correct for _ in range(2)
        ]
        f.append(np.mean(a[0] & ~a[1]))
    return np.array(f)


@pytest.fixture(scope="module")
def fkl_runs():
    """FKL without replay, Delta = 6, beta(0) = 0.95, R_max = 3 s: generative and likelihood runs."""
    out = {}
    for answer in ("generative", "likelihood"):
        setup = Setup(steps=400, log_every=100, samplewise_answer=answer)
        hyper = make_hyper(
            separation=[6.0],
            replay_ratio=0.0,
            init_old_weight=0.95,
            init_new_offset=0.0,
            learning_rate=0.1,
            samplewise_invalid_radius=3.0,
        )
        out[answer] = (setup, hyper, simulate(setup, hyper))
    return out


def test_theta0_forgetting_is_the_noise_floor_not_zero(fkl_runs):
    """At step 0 after = before = theta(0): E[F](theta0, theta0) = E[BT] = mean p (1 - p), the
    same-model noise floor, > 0 for stochastic (generative) answers, and it matches two independent
    NumPy evaluations of theta(0) (z-test over rounds); greedy ranking is deterministic: 0."""
    setup, hyper, out = fkl_runs["generative"]
    hyper = jax.tree.map(lambda x: x[0], hyper)
    f0, bt0, floor0 = (out[k][0, 0] for k in ("forgetting", "backward_transfer", "forgetting_noise_floor"))
    np.testing.assert_allclose([f0, bt0], [floor0, floor0], rtol=1e-6)
    assert floor0 > 0.05
    old, _ = items.item_sets(hyper, setup)
    cands, correct = _np_items(old)
    theta0 = learner_mixture(init_params(hyper, setup), setup)
    f = _np_same_model_forgetting(cands, correct, theta0, 3.0, 400, np.random.default_rng(3))
    assert abs(f.mean() - f0) < Z * f.std(ddof=1) / np.sqrt(len(f))
    assert fkl_runs["likelihood"][2]["forgetting_noise_floor"][0, 0] == 0.0


def test_mass_forgetting_shows_in_generative_not_likelihood(fkl_runs):
    """FKL without replay sends beta -> 0 with m_o kept at mu_o* (T1, mass forgetting). Generative
    answers on old items then come from the new mode, 6 s away, farther than R_max = 3 s from every
    old candidate: invalid, accuracy -> ~0, so F_true ~ a_pre - (1 - a_pre)(1 - a_post) is large.
    Likelihood ranking compares q at the candidates, where beta N(mu_o*) still beats the new
    mode's tail e^{-(6 - x)^2/2} unless beta < e^{-18}: its old accuracy barely moves."""
    gen, lik = fkl_runs["generative"][2], fkl_runs["likelihood"][2]
    assert gen["old_weight"][0, -1] < 0.1 and gen["old_drift"][0, -1] < 0.2  # mass forgetting, no drift
    assert gen["forgetting_true"][0, -1] > 0.3
    assert lik["forgetting_true"][0, -1] < 0.1
    assert gen["forgetting_true"][0, -1] > 4 * lik["forgetting_true"][0, -1]
    assert lik["old_task_accuracy"][0, -1] > 0.9 and gen["old_task_accuracy"][0, -1] < 0.1
    assert gen["new_task_accuracy"][0, -1] > gen["new_task_accuracy"][0, 0]  # the gain alongside


# ---------------------------------------------------------------------------------------------
# fields, items' independence, the store


def test_items_depend_on_item_seed_and_geometry_only():
    setup = Setup(samplewise_items=16)
    a, _ = items.item_sets(make_hyper(seed=0, replay_ratio=0.1), setup)
    b, _ = items.item_sets(make_hyper(seed=9, replay_ratio=0.4), setup)
    c, _ = items.item_sets(make_hyper(samplewise_item_seed=1.0), setup)
    np.testing.assert_array_equal(a.candidates, b.candidates)
    assert not np.allclose(a.candidates, c.candidates)
    with pytest.raises(ValueError, match="samplewise_choices"):
        Setup(samplewise_choices=4)


def test_store_of_a_small_sweep_has_the_samplewise_variables(tmp_path):
    from forget_jax.config import load_config
    from forget_jax.runner import run

    cfg = tmp_path / "sw.yaml"
    cfg.write_text(
        textwrap.dedent(
            """
            name: sw
            steps: 20
            log_every: 10
            seeds: 1
            grid:
              separation: [2.0, 5.0]
            """
        )
    )
    ds = run(load_config(str(cfg)), tmp_path / "sw.zarr", progress=False)
    names = list(items.SAMPLEWISE_METRICS)
    assert names == [
        "forgetting",
        "backward_transfer",
        "forgetting_true",
        "backward_transfer_true",
        "old_task_accuracy",
        "new_task_accuracy",
        "forgetting_noise_floor",
    ]
    for name in [*names, "old_weight"]:
        assert ds[name].dims == ("separation", "seed", "step"), name
        assert np.isfinite(ds[name].values).all(), name
    # step 0 compares theta(0) with itself: E[F] = E[BT] = the noise floor
    np.testing.assert_allclose(ds["forgetting"].isel(step=0), ds["forgetting_noise_floor"].isel(step=0), rtol=1e-6)
