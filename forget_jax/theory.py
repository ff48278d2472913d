"""Closed forms and predictions of the science pages (docs/science/model.md, claims.md,
methods.md): pure formulas that the simulation is checked against, never the reverse.

This module is a leaf: it is built on the shared primitives (gaussian.py, divergence.py) and
imports no objective, no training loop and nothing engine-derived. Quantities obtained by
differentiating the engine's own objectives (the Hessian of the simulated reverse KL, the
engine's adaptive-eta solver) live in analysis.py. `hard_misassignment` (D4) is the gaussian.py
primitive that the metrics use too, re-exported here.

Every function accepts JAX arrays or Python floats and is jit/vmap-compatible unless noted.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ._types import Array, Float, Int, Scalar
from .divergence import soft_misassignment as _soft
from .gaussian import LOG_2PI, bhattacharyya_coefficient, hard_misassignment, log_normal, logit
from .model import Mixture

#: An input of any broadcastable shape: a JAX or NumPy array, or a Python float.
FloatLike = Float[Array | np.ndarray, "..."] | float
#: An input that must be a single value (vmap the function over a batch).
ScalarLike = Float[Array | np.ndarray, ""] | float
#: Points of R^d, optionally batched (..., d), or a Python float for d = 1 (`jnp.atleast_1d`).
PointsLike = Float[Array | np.ndarray, "... d"] | float
#: Integer counts (batch or group sizes) of any broadcastable shape.
IntLike = Int[Array | np.ndarray, "..."] | int


def _float(x: IntLike | FloatLike) -> Float[Array, " ..."]:
    """A step count or other number as a float array of the default float dtype (strict dtype
    promotion does not mix integer arrays with floats)."""
    return jnp.asarray(x, jnp.result_type(float))


# ---------------------------------------------------------------------------------------------
# D3: overlap


def bhattacharyya(separation: FloatLike) -> Float[Array, " ..."]:
    r"""BC of two equal-covariance Gaussians at Mahalanobis distance Delta: exp(-Delta^2 / 8) (D3)."""
    sep = jnp.asarray(separation)
    return bhattacharyya_coefficient(sep[..., None], jnp.zeros_like(sep)[..., None], 1.0)


# ---------------------------------------------------------------------------------------------
# D4: misassignment


def misassignment_old_to_new(old_weight: FloatLike, separation: ScalarLike) -> Float[Array, " ..."]:
    r"""epsilon_{o->n} = Phi_bar(Delta/2 + ln(beta/(1-beta))/Delta) (D4), via `hard_misassignment`."""
    sep = jnp.asarray(separation, dtype=jnp.result_type(float))
    zero = jnp.zeros((1,), sep.dtype)
    return hard_misassignment(zero, 1.0, zero, sep[None], old_weight, 1.0)


def misassignment_new_to_old(old_weight: FloatLike, separation: ScalarLike) -> Float[Array, " ..."]:
    r"""epsilon_{n->o} = Phi_bar(Delta/2 - ln(beta/(1-beta))/Delta) (D4)."""
    sep = jnp.asarray(separation, dtype=jnp.result_type(float))
    zero = jnp.zeros((1,), sep.dtype)
    return 1.0 - hard_misassignment(sep[None], 1.0, zero, sep[None], old_weight, 1.0)


def soft_misassignment(old_weight: ScalarLike, separation: ScalarLike, order: int = 96) -> Scalar:
    r"""epsilon~_{o->n} = E_{N_o}[w_n(x)] by quadrature (D4), with the divergence.py primitive."""
    sep = jnp.asarray(separation, dtype=jnp.result_type(float))
    zero = jnp.zeros((1,), sep.dtype)
    one = jnp.ones((), sep.dtype)
    mixture = Mixture(jnp.asarray(old_weight, sep.dtype), zero, sep[None], one, one)
    return _soft(mixture, mixture, order)


def hard_misassignment_bound(old_weight: FloatLike, separation: FloatLike) -> Float[Array, " ..."]:
    r"""epsilon_{o->n} <= sqrt((1-beta)/beta) BC (D4)."""
    return jnp.sqrt((1 - old_weight) / old_weight) * bhattacharyya(separation)


def soft_misassignment_bound(old_weight: FloatLike, separation: FloatLike) -> Float[Array, " ..."]:
    r"""epsilon~_{o->n} <= (1/2) sqrt((1-beta)/beta) BC (D4)."""
    return 0.5 * hard_misassignment_bound(old_weight, separation)


def bayes_error_bound(old_weight: FloatLike, separation: FloatLike) -> Float[Array, " ..."]:
    r"""beta eps_{o->n} + (1-beta) eps_{n->o} <= sqrt(beta(1-beta)) BC (D4)."""
    return jnp.sqrt(old_weight * (1 - old_weight)) * bhattacharyya(separation)


# ---------------------------------------------------------------------------------------------
# T2: forward KL with replay; T6 / D6: starvation


def fkl_replay_optimum(replay_ratio: FloatLike) -> Float[Array, " ..."]:
    """Population minimiser of KL(p_lambda || q_theta): beta = lambda, means at truth (T2)."""
    return jnp.asarray(replay_ratio)


def starvation_probability(
    old_weight: FloatLike, replay_ratio: FloatLike, batch_size: IntLike | FloatLike
) -> Float[Array, " ..."]:
    r"""P(no old-mode sample in a batch) = ((1 - lambda)(1 - beta))^B (D6, T6)."""
    base = (1 - jnp.asarray(replay_ratio)) * (1 - jnp.asarray(old_weight))
    return jnp.power(base, jnp.asarray(batch_size, base.dtype))


def batch_size_for_starvation(old_weight: float, replay_ratio: float, delta: float) -> int:
    r"""Smallest B with ((1-lambda)(1-beta))^B <= delta: B = ceil(ln(1/delta) / -ln((1-lambda)(1-beta))) (T6)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta={delta!r} must lie in (0, 1)")
    rate = -math.log((1 - replay_ratio) * (1 - old_weight))
    return max(1, math.ceil(math.log(1 / delta) / rate - 1e-12))


def old_sample_probability(old_weight: FloatLike, replay_ratio: FloatLike) -> Float[Array, " ..."]:
    r"""Probability that one draw of the replay proposal m_lambda = (1 - lambda) q + lambda p_old is an
    old-mode sample: p_old = (1 - lambda) beta + lambda (D6, T6); P(starved) = (1 - p_old)^B."""
    lam = jnp.asarray(replay_ratio)
    return (1 - lam) * jnp.asarray(old_weight) + lam


def replay_old_mean_noise_factor(old_weight: FloatLike, replay_ratio: FloatLike) -> Float[Array, " ..."]:
    r"""Var_lambda / Var_0 of the score estimator's old-mean gradient (T6, separated limit):
    beta / ((1 - lambda) beta + lambda) = beta / p_old.

    Why: the old-mean score f(x) = (log q - log p* - b) w_o(x) Sigma^{-1}(x - m_o) lives on the old
    mode, where the weight omega = q / m_lambda is beta N_o / ((1 - lambda) beta N_o + lambda N_o)
    = beta / p_old (p_old = N(mu_o*, Sigma) ~ N_o near mu_o*). Per sample, E_m[omega^2 f^2] =
    E_q[omega f^2] = (beta / p_old) E_q[f^2], and the mean E_q[f] is unchanged (unbiased), so
    the noise variance falls by beta / p_old: one over the gain in old-mode samples. Propagated
    through the same (lambda-independent) mean dynamics, the seed variance of m_o falls by the
    same factor while the noise is small (linear response)."""
    return jnp.asarray(old_weight) / old_sample_probability(old_weight, replay_ratio)


def replay_weight_bound(replay_ratio: FloatLike) -> Float[Array, " ..."]:
    """omega = q / ((1-lambda) q + lambda r) <= 1 / (1 - lambda) (D5, T6)."""
    return 1.0 / (1.0 - jnp.asarray(replay_ratio))


# ---------------------------------------------------------------------------------------------
# T1: forward-KL time courses (new data only, separated limit, means fixed)


def fkl_weight_euclidean(
    t: IntLike | FloatLike, initial_weight: FloatLike, learning_rate: FloatLike
) -> Float[Array, " ..."]:
    r"""(a) direct GD, d beta/dt = -1/(1-beta): (1-beta)^2 = (1-beta_0)^2 + 2 eta t, beta = 0 after
    t* = beta_0 (2 - beta_0) / (2 eta) (T1)."""
    value = 1.0 - jnp.sqrt((1 - initial_weight) ** 2 + 2 * learning_rate * _float(t))
    return jnp.maximum(value, 0.0)


def fkl_weight_logit(
    t: IntLike | FloatLike, initial_weight: FloatLike, learning_rate: FloatLike
) -> Float[Array, " ..."]:
    r"""(b) logit GD, d beta/dt ~ -beta^2: beta(t) ~ 1 / (1/beta_0 + eta t) = Theta(1/t) (T1)."""
    # NumPy's stubs type ndarray + Array as ndarray; at run time jax's __array_priority__ makes it an Array.
    return 1.0 / (1.0 / initial_weight + learning_rate * _float(t))  # type: ignore[return-value]


def fkl_weight_replicator(
    t: IntLike | FloatLike, initial_weight: FloatLike, learning_rate: FloatLike
) -> Float[Array, " ..."]:
    r"""(c) replicator, d beta/dt ~ -beta: beta(t) = beta_0 exp(-eta t) (T1)."""
    return initial_weight * jnp.exp(-learning_rate * _float(t))  # type: ignore[return-value]  # as above


def fkl_weight_zero_time(initial_weight: FloatLike, learning_rate: FloatLike) -> FloatLike:
    """t* = beta_0 (2 - beta_0) / (2 eta): steps until direct GD hits beta = 0 (T1 (a))."""
    return initial_weight * (2 - initial_weight) / (2 * learning_rate)


def fkl_weight_gradient(old_weight: FloatLike, separation: FloatLike, order: int = 192) -> Float[Array, " ..."]:
    r"""dL_F/dbeta at finite separation, means fixed at the truth, p_train = p_new (T1 item 1):

        dL_F/dbeta = -E_{N_n}[(N_o - N_n) / q] = (1 - E_{N_n}[N_o / q]) / (1 - beta),

    q = beta N_o + (1 - beta) N_n. In the coordinate z = x - mu_n* (along the mean difference),
    log N_n - log N_o = Delta^2 / 2 - Delta z, so N_o / q = exp(-logaddexp(log beta,
    log(1 - beta) + Delta^2 / 2 - Delta z)), bounded by 1 / beta; E_{z ~ N(0, 1)} by
    Gauss-Hermite (`order` nodes; the integrand is a smooth step of width 1/Delta). It is < 1/(1 - beta)
    (the separated limit, T1 item 6) at every finite Delta: 1/(1 - beta) - dL_F/dbeta =
    E_{N_n}[N_o/q] / (1 - beta) > 0, so every update rule decays more slowly than its separated-limit law.
    """
    b = jnp.asarray(old_weight)
    sep = jnp.asarray(separation, dtype=b.dtype)
    z, w = np.polynomial.hermite.hermgauss(order)
    nodes = jnp.asarray(z * math.sqrt(2.0), dtype=b.dtype)
    weights = jnp.asarray(w / math.sqrt(math.pi), dtype=b.dtype)
    b_, s_ = b[..., None], sep[..., None]
    log_ratio = 0.5 * s_**2 - s_ * nodes  # log N_n - log N_o at x = mu_n* + z
    ratio = jnp.exp(-jnp.logaddexp(jnp.log(b_), jnp.log1p(-b_) + log_ratio))  # N_o / q
    return (1.0 - jnp.sum(weights * ratio, axis=-1)) / (1.0 - b)


def fkl_weight_course(
    steps: int,
    initial_weight: FloatLike,
    learning_rate: FloatLike,
    separation: FloatLike,
    weight_param: str = "logit",
    weight_clip: float = 1e-3,
    order: int = 192,
) -> Float[Array, "T ..."]:
    r"""beta(t), t = 0..steps, of forward KL on new data only with both means fixed at the truth, at
    finite separation (T1 items 1-6, without the separated-limit approximation of (a)-(c)), under
    the discrete update rules of docs/science/model.md section 1 with g = `fkl_weight_gradient`:

        direct:     beta <- clip(beta - eta g(beta), eps, 1 - eps)
        logit:      a <- a - eta beta (1 - beta) g(beta),  beta = sigmoid(a)
        replicator: beta <- clip(beta - eta beta (1 - beta) g(beta), eps, 1 - eps)

    (beta (1 - beta) g = beta (1 - E_{N_n}[N_o/q]) = -(E_p[N_o/q] - 1) beta: the replicator
    flow of T1 (c)). As Delta grows it tends to `fkl_weight_euclidean` / `fkl_weight_logit`'s exact
    separated solution / `fkl_weight_replicator`'s discrete beta0 (1 - eta)^t.

    Returns beta of shape (steps + 1, *batch), batch the broadcast shape of the initial weight,
    learning rate and separation (one scan for a whole batch of courses).
    """
    if weight_param not in ("direct", "logit", "replicator"):
        raise ValueError(f"weight_param={weight_param!r}: choose direct, logit or replicator")
    dtype = jnp.result_type(float)
    b0, eta, sep = jnp.broadcast_arrays(
        jnp.asarray(initial_weight, dtype), jnp.asarray(learning_rate, dtype), jnp.asarray(separation, dtype)
    )

    def step(beta, _):
        g = fkl_weight_gradient(beta, sep, order)
        if weight_param == "direct":
            nxt = jnp.clip(beta - eta * g, weight_clip, 1.0 - weight_clip)
        elif weight_param == "logit":
            nxt = jax.nn.sigmoid(logit(beta) - eta * beta * (1.0 - beta) * g)
        else:
            nxt = jnp.clip(beta - eta * beta * (1.0 - beta) * g, weight_clip, 1.0 - weight_clip)
        return nxt, nxt

    _, course = jax.lax.scan(step, b0, None, length=steps)
    return jnp.concatenate([b0[None], course])


# ---------------------------------------------------------------------------------------------
# T5: local geometry of reverse KL


def predicted_contraction(hessian: Float[Array | np.ndarray, "p p"], learning_rate: ScalarLike) -> Scalar:
    r"""Per-step contraction of GD near theta*: spectral radius of I - eta H; equals 1 - eta mu with
    mu = lambda_min(H) when eta <= 1 / lambda_max (T5)."""
    eigs = jnp.linalg.eigvalsh(hessian)
    return jnp.max(jnp.abs(1.0 - learning_rate * eigs))


def contraction_rate(hessian: Float[Array | np.ndarray, "p p"], learning_rate: ScalarLike) -> Scalar:
    r"""Per-step rate -ln rho of ||theta(t) - theta*|| near theta*, rho = max_i |1 - eta lambda_i(H)|
    the spectral radius of the linearised GD map (T5): -ln(1 - eta lambda_min) for
    eta <= 2 / (lambda_min + lambda_max), -ln(eta lambda_max - 1) above, <= 0 (no contraction)
    for eta >= 2 / lambda_max."""
    return -jnp.log(predicted_contraction(hessian, learning_rate))


def slow_mode_step_limit(hessian: Float[Array | np.ndarray, "p p"]) -> Scalar:
    r"""2 / (lambda_min + lambda_max): the largest step at which the spectral radius of I - eta H is
    set by the slowest mode, rho = 1 - eta lambda_min (T5); above it rho = eta lambda_max - 1."""
    eigs = jnp.linalg.eigvalsh(hessian)
    return 2.0 / (eigs[0] + eigs[-1])


def stability_step_limit(hessian: Float[Array | np.ndarray, "p p"]) -> Scalar:
    r"""2 / lambda_max(H): GD near theta* contracts iff 0 < eta < 2 / lambda_max (T5)."""
    return 2.0 / jnp.linalg.eigvalsh(hessian)[-1]


def linear_error_bound(
    initial_error: FloatLike, contraction: FloatLike, steps: IntLike | FloatLike
) -> Float[Array, " ..."]:
    r"""||theta(t) - theta*|| <= rho^t ||theta(0) - theta*|| for the linearised map
    e -> (I - eta H) e (T5 with kappa = 1: I - eta H is symmetric, so its operator norm is its
    spectral radius rho). Every coordinate of theta - theta*, e.g. the old-mean drift delta (sigma = 1),
    obeys the same bound."""
    return jnp.asarray(initial_error) * jnp.power(jnp.asarray(contraction), _float(steps))


def steps_to_tolerance(initial_error: FloatLike, tolerance: FloatLike, contraction: FloatLike) -> Float[Array, " ..."]:
    r"""Steps until the linearised bound rho^t ||theta(0) - theta*|| falls to `tolerance`:
    ln(||theta(0) - theta*|| / eps) / (-ln rho) (T5)."""
    return jnp.log(jnp.asarray(initial_error) / tolerance) / -jnp.log(jnp.asarray(contraction))


def smallest_eigenvalue(hessian: Float[Array | np.ndarray, "p p"]) -> Scalar:
    """mu = lambda_min(I(theta*)), the predicted local rate of gradient flow (T5)."""
    return jnp.linalg.eigvalsh(hessian)[0]


def separated_limit_fisher(target_old_weight: ScalarLike, weight_param: str = "logit") -> Float[Array, "3 3"]:
    r"""I(theta*) in the separated limit, d = 1: diag(beta*(1-beta*) [logit] or 1/(beta*(1-beta*))
    [direct], beta*, 1 - beta*) (T5)."""
    b = jnp.asarray(target_old_weight)
    w = b * (1 - b) if weight_param == "logit" else 1 / (b * (1 - b))
    return jnp.diag(jnp.stack([w, b, 1 - b]))


def rkl_drift_envelope(min_separation: FloatLike) -> Float[Array, " ..."]:
    r"""exp(-Delta_min^2 / 8): the overlap scale of the reverse-KL old-mean drift (T4)."""
    return bhattacharyya(min_separation)


# ---------------------------------------------------------------------------------------------
# T7-T9: SDFT, TTT-Discover and OAPL in the mixture lens (docs/science/methods.md sections 0, A-D [PROPOSAL]).
# Conventions: component N(m, s^2 I_d); weights are old weights beta; logit = log(beta/(1-beta)).
# "Separated limit": the components of every mixture involved coincide (or are far apart), so
# KL between two such mixtures reduces to the KL of their weights (overlap corrections O(BC)).


# --- tilts and their mass factors (docs/science/methods.md section 0) -------------------------------------


def log_mass_factor_quadratic(
    mean: PointsLike, center: PointsLike, width: FloatLike, eta: FloatLike, scale: FloatLike
) -> Float[Array, " ..."]:
    r"""log M = log E_{y ~ N(m, s^2 I_d)}[e^{eta R(y)}] for R(y) = -|y - mu|^2 / (2 rho^2)
    (docs/science/methods.md section 0 with alpha = 1 / (2 rho^2), a = eta alpha):
    M = (1 + 2 a s^2)^{-d/2} exp(-a |m - mu|^2 / (1 + 2 a s^2))."""
    m, mu = jnp.atleast_1d(jnp.asarray(mean)), jnp.atleast_1d(jnp.asarray(center))
    d = m.shape[-1]
    a = jnp.asarray(eta) / (2 * jnp.square(width))
    c = 1 + 2 * a * jnp.square(scale)
    return -0.5 * d * jnp.log(c) - a * jnp.sum(jnp.square(m - mu), axis=-1) / c


def log_mass_factor_linear(
    mean: PointsLike, slope: PointsLike, eta: FloatLike, scale: FloatLike
) -> Float[Array, " ..."]:
    r"""log M = log E_{N(m, s^2 I)}[e^{eta w . y}] = eta w . m + eta^2 s^2 |w|^2 / 2 (docs/science/methods.md section 0)."""
    m, w = jnp.atleast_1d(jnp.asarray(mean)), jnp.atleast_1d(jnp.asarray(slope))
    eta = jnp.asarray(eta)
    return eta * jnp.sum(w * m, axis=-1) + 0.5 * jnp.square(eta * scale) * jnp.sum(jnp.square(w), axis=-1)


def log_mass_factor_log_new(
    mean: PointsLike, new_mean: PointsLike, new_scale: FloatLike, eta: FloatLike, scale: FloatLike
) -> Float[Array, " ..."]:
    r"""log M for R = log N(y; mu_n*, s_n^2 I) = -|y - mu_n*|^2 / (2 s_n^2) - d log(s_n sqrt(2 pi)):
    the quadratic factor with rho = s_n times e^{-eta d log(s_n sqrt(2 pi))}."""
    d = jnp.atleast_1d(jnp.asarray(mean)).shape[-1]
    const = -d * (jnp.log(new_scale) + 0.5 * LOG_2PI)
    return jnp.asarray(eta) * const + log_mass_factor_quadratic(mean, new_mean, new_scale, eta, scale)


def tilted_mean_quadratic(
    mean: PointsLike, center: PointsLike, width: FloatLike, eta: FloatLike, scale: FloatLike
) -> Float[Array, " ..."]:
    r"""Mean of N(m, s^2 I) e^{eta R} / M for the quadratic reward: (m + 2 a s^2 mu) / (1 + 2 a s^2)
    (variance s^2 / (1 + 2 a s^2): the tilt leaves the fixed-scale family)."""
    a = jnp.asarray(eta) / (2 * jnp.square(width))
    c = 1 + 2 * a * jnp.square(scale)
    return (jnp.asarray(mean) + 2 * a * jnp.square(scale) * jnp.asarray(center)) / c


def tilted_mean_linear(mean: PointsLike, slope: PointsLike, eta: FloatLike, scale: FloatLike) -> Float[Array, " ..."]:
    r"""Mean of N(m, s^2 I) e^{eta w . y} / M: m + eta s^2 w (same variance: the tilt is realisable)."""
    return jnp.asarray(mean) + jnp.asarray(eta) * jnp.square(scale) * jnp.asarray(slope)


def tilt_logit(logit_weight: FloatLike, log_m_old: FloatLike, log_m_new: FloatLike) -> Float[Array, " ..."]:
    r"""Mixture tilt q e^{eta R} / Z: logit beta' = logit beta + log(M_o / M_n) (docs/science/methods.md section 0;
    T8 per step, T9 per sync with eta = 1 / beta, SDFT `bayes_icl` with M_k = rho_k)."""
    return jnp.asarray(logit_weight) + jnp.asarray(log_m_old) - jnp.asarray(log_m_new)


def tilt_weight(old_weight: FloatLike, log_m_old: FloatLike, log_m_new: FloatLike) -> Float[Array, " ..."]:
    r"""beta' = beta M_o / (beta M_o + (1 - beta) M_n), the tilt of `tilt_logit` as a weight."""
    return jax.nn.sigmoid(tilt_logit(logit(old_weight), log_m_old, log_m_new))


def tilt_recursion(
    init_weight: ScalarLike, log_m_old: ScalarLike, log_m_new: ScalarLike, rounds: int
) -> Float[Array, " k"]:
    r"""beta_k for k = 0..rounds of the repeated tilt with constant mass factors:
    logit beta_k = logit beta_0 + k log(M_o / M_n) (T8 per step; T9 per sync; mass forgetting iff
    the cumulative tilt is unbounded, i.e. M_n > M_o)."""
    k = jnp.arange(rounds + 1, dtype=jnp.result_type(float))
    return jax.nn.sigmoid(logit(init_weight) + k * (jnp.asarray(log_m_old) - jnp.asarray(log_m_new)))


def entropic_logit_gradient(old_weight: FloatLike, log_m_old: FloatLike, log_m_new: FloatLike) -> Float[Array, " ..."]:
    r"""d J / d logit beta for J = log E_q[e^{eta R}] = log(beta M_o + (1 - beta) M_n) at fixed
    components: beta_tilt - beta (exact, any overlap). One logit-GD step of TTT-Discover (population,
    lambda = 0) moves logit beta by lr (beta_tilt - beta), *toward* the tilt, not to it."""
    return tilt_weight(old_weight, log_m_old, log_m_new) - jnp.asarray(old_weight)


def kl_anchored_fixed_point(
    reference_weight: FloatLike, log_m_old: FloatLike, log_m_new: FloatLike
) -> Float[Array, " ..."]:
    r"""docs/science/claims.md T8: the maximiser of E_q[R] - (1/eta) KL(q || q_ref) is q_ref e^{eta R} / Z, so
    beta_inf = beta_ref M_o / (beta_ref M_o + (1 - beta_ref) M_n) (M_k under q_ref's components).
    With a constant reward gap dR = R_n - R_o: beta_ref / (beta_ref + (1 - beta_ref) e^{eta dR})."""
    return tilt_weight(reference_weight, log_m_old, log_m_new)


def entropic_kl_fixed_point(
    reference_weight: FloatLike,
    log_m_old: FloatLike,
    log_m_new: FloatLike,
    kl_penalty: FloatLike,
    iterations: int = 200,
) -> Float[Array, " ..."]:
    r"""Stationary old weight of TTT-Discover's actual objective J - lambda KL(q || q_ref),
    J = log E_q[e^{eta R}] (docs/science/methods.md B step 4; lambda not scaled by 1/eta), at fixed components
    equal to q_ref's, separated limit [R, derived here]:

        d J / d logit beta = beta (1 - beta) (M_o - M_n) / (beta M_o + (1 - beta) M_n),
        d KL / d logit beta = beta (1 - beta) (logit beta - logit beta_ref),

    so the fixed point solves (r - 1) / (beta (r - 1) + 1) = lambda (logit beta - logit beta_ref),
    r = M_o / M_n (left side decreasing, right side increasing in logit beta: unique; bisection).
    It is NOT the Gibbs point `kl_anchored_fixed_point`: the left side is bounded by
    [1 - 1/r, r - 1], so for a large gap (r -> 0) logit beta_inf -> logit beta_ref - 1/(lambda (1 - beta)),
    not logit beta_ref + log r. They agree to first order in log r when lambda = 1. Needs
    lambda > 0 (without the anchor beta -> 0 whenever M_n > M_o: `tilt_recursion`).
    """
    r = jnp.exp(jnp.asarray(log_m_old) - jnp.asarray(log_m_new))
    a_ref = logit(reference_weight)
    lam = jnp.asarray(kl_penalty)
    lo = a_ref + jnp.minimum(jnp.minimum(r - 1, 1 - 1 / r), 0.0) / lam - 1.0
    hi = a_ref + jnp.maximum(jnp.maximum(r - 1, 1 - 1 / r), 0.0) / lam + 1.0

    def h(a):
        b = jax.nn.sigmoid(a)
        return (r - 1) / (b * (r - 1) + 1) - lam * (a - a_ref)

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        positive = h(mid) > 0
        return jnp.where(positive, mid, lo), jnp.where(positive, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iterations, body, (lo, hi))
    return jax.nn.sigmoid(0.5 * (lo + hi))


# --- starvation per group (T9) ----------------------------------------------------------------


def group_starvation_probability(lagged_weight: FloatLike, group_size: IntLike | FloatLike) -> Float[Array, " ..."]:
    r"""P(a group of G draws from q_lag holds no old-mode sample) = (1 - beta_lag)^G (T9; D6 with
    lambda = 0)."""
    return starvation_probability(lagged_weight, 0.0, group_size)


# --- OAPL (T9) -------------------------------------------------------------------------------


def oapl_sync_logit(lagged_logit: FloatLike, log_m_old: FloatLike, log_m_new: FloatLike) -> Float[Array, " ..."]:
    r"""T9: sync k moves the target to q_lag,k e^{r / beta} / Z, so (with beta_1 = beta_2 = beta, a
    realisable tilt and convergence within the lag) logit beta_{k+1} = logit beta_k + log(M_o / M_n),
    M_z = E_{N_z(theta_lag,k)}[e^{r / beta}] (use the log_mass_factor_* with eta = 1 / beta)."""
    return tilt_logit(lagged_logit, log_m_old, log_m_new)


# --- SDFT (T7) -------------------------------------------------------------------------------


def sdft_anchor_density_weight(
    teacher_weight: FloatLike, anchor: FloatLike, demo_old_weight: FloatLike = 0.0
) -> Float[Array, " ..."]:
    r"""Old weight of T = (1 - a) q_phi + a p_c in the separated limit (p_c's components at q_phi's):
    beta_T = (1 - a) beta_phi + a beta_c, beta_c = 0 for p_new*, beta* for p* (T7 Examples A, B)."""
    a = jnp.asarray(anchor)
    return (1 - a) * jnp.asarray(teacher_weight) + a * jnp.asarray(demo_old_weight)


def sdft_bayes_icl_log_odds(
    demo: PointsLike,
    old_mean: PointsLike,
    new_mean: PointsLike,
    old_scale: FloatLike,
    new_scale: FloatLike,
    demo_scale: FloatLike,
) -> Float[Array, " ..."]:
    r"""log(rho_o / rho_n), rho_k = N(c; m_k, (s_k^2 + tau_c^2) I) (T7 Example C; docs/science/methods.md A op. 4):
    logit beta_T = logit beta_phi + log(rho_o / rho_n)."""
    c = jnp.atleast_1d(jnp.asarray(demo))
    tau2 = jnp.square(demo_scale)
    return log_normal(c, jnp.atleast_1d(jnp.asarray(old_mean)), jnp.sqrt(jnp.square(old_scale) + tau2)) - log_normal(
        c, jnp.atleast_1d(jnp.asarray(new_mean)), jnp.sqrt(jnp.square(new_scale) + tau2)
    )


def sdft_bayes_icl_weight(teacher_weight: FloatLike, log_odds: FloatLike) -> Float[Array, " ..."]:
    r"""beta_T = beta_phi rho_o / (beta_phi rho_o + (1 - beta_phi) rho_n), log_odds = log(rho_o / rho_n)
    from `sdft_bayes_icl_log_odds` (the tilt of `tilt_weight` with M_k = rho_k)."""
    return tilt_weight(teacher_weight, log_odds, 0.0)


def sdft_refresh_weights(
    init_weight: ScalarLike, anchor: ScalarLike, refreshes: int, demo_old_weight: ScalarLike = 0.0
) -> Float[Array, " k"]:
    r"""Evolving teacher T_k = (1 - a) q_k + a p_c with the student fully converged to T_k before the
    next refresh (T7 Example A): beta_{k+1} = (1 - a) beta_k + a beta_c, i.e.
    beta_k = beta_c + (1 - a)^k (beta_0 - beta_c); geometric mass forgetting for p_c = p_new*."""
    k = jnp.arange(refreshes + 1, dtype=jnp.result_type(float))
    b_c = jnp.asarray(demo_old_weight)
    return b_c + jnp.power(1 - jnp.asarray(anchor), k) * (jnp.asarray(init_weight) - b_c)


def sdft_anchored_weight(
    init_weight: FloatLike, anchor: FloatLike, demo_old_weight: FloatLike = 0.0
) -> Float[Array, " ..."]:
    r"""Anchored (frozen) teacher T = (1 - a) q_0 + a p_c: beta_inf = (1 - a) beta_0 + a beta_c (T7 Example B)."""
    return sdft_anchor_density_weight(init_weight, anchor, demo_old_weight)


def sdft_ema_weights(
    steps: int,
    init_weight: ScalarLike,
    learning_rate: ScalarLike,
    ema: ScalarLike,
    teacher_map: Callable[[Scalar], ScalarLike],
    direction: str = "reverse",
) -> Float[Array, " T"]:
    r"""beta_theta(t), t = 0..steps, of SDFT's coupled student / EMA-teacher dynamics in the separated
    limit with the components of student, teacher and demo coinciding (means at truth), logit GD
    and the EMA in logit space (docs/science/methods.md A):

        a_{t+1}   = a_t - lr g(a_t, logit beta_T(sigmoid(phi_t))),   phi_{t+1} = (1 - alpha) phi_t + alpha a_{t+1},

    with g = d KL / d a: beta (1 - beta)(a - a_T) for `reverse` KL(q || T), beta - beta_T for
    `forward` KL(T || q). `teacher_map`: beta_phi -> beta_T (sdft_anchor_density_weight, the
    bayes_icl tilt, or identity for anchor_component). For a fast student (lr >> alpha) beta
    tracks beta_T and the teacher logit moves by alpha (logit beta_T - phi) per step: one
    effective refresh of `sdft_refresh_weights` per 1 / alpha steps.
    """
    a0 = logit(init_weight)

    def step(carry, _):
        a, phi = carry
        beta = jax.nn.sigmoid(a)
        beta_t = teacher_map(jax.nn.sigmoid(phi))
        grad = beta * (1 - beta) * (a - logit(beta_t)) if direction == "reverse" else beta - beta_t
        a = a - learning_rate * grad
        phi = (1 - ema) * phi + ema * a
        return (a, phi), jax.nn.sigmoid(a)

    _, betas = jax.lax.scan(step, (a0, a0), None, length=steps)
    return jnp.concatenate([jnp.atleast_1d(jax.nn.sigmoid(a0)), betas])


# --- pipelines (docs/science/pipelines.md) ------------------------------------------------------
# K-mode stage optima (P1), the separated-limit reverse-KL recovery of a starved old weight (P2)
# and per-mode starvation (P3). Weights are float inputs; the recovery times run in float64 NumPy /
# SciPy (not jit-compatible); the rest is jax.numpy.

_WEIGHT_PARAMS = ("direct", "logit", "replicator")


def _check_weight_param(weight_param: str) -> None:
    if weight_param not in _WEIGHT_PARAMS:
        raise ValueError(f"weight_param={weight_param!r}: choose direct, logit or replicator")


def fkl_stage_weights(
    num_modes: int,
    task: int,
    replay_ratio: float,
    earlier: tuple[int, ...] | list[int],
    shares: tuple[float, ...] | list[float] | np.ndarray | None = None,
) -> np.ndarray:
    r"""Population optimum of the K weights after an FKL stage on `task` with replay (P1, separated
    modes, means free or at the truth):

        w_task = 1 - lambda,   w_j = lambda share_j (j in earlier),   w_k = 0 otherwise,

    the weights of p_train = (1 - lambda) N(mu_task*) + lambda sum_j share_j N(mu_j*): KL(p_train || q)
    >= 0 with equality iff q = p_train, which the K-mode family realises (T2 with K modes;
    `fkl_replay_optimum` is K = 2, task 1, earlier (0,)). Without replay (lambda = 0) every earlier
    mode loses all its mass.

    Args:
        num_modes: K >= 2.
        task: the stage's task index in [0, K).
        replay_ratio: lambda in [0, 1].
        earlier: the replayed tasks (task 0 and the tasks of earlier stages, without `task`),
            distinct indices in [0, K); may be empty only when lambda = 0.
        shares: the replay share of each earlier task (non-negative, sum 1); None = uniform.

    Returns:
        The (K,) float64 weights, summing to 1.
    """
    earlier = [int(j) for j in earlier]
    if num_modes < 2:
        raise ValueError(f"num_modes={num_modes!r} must be >= 2")
    if not 0 <= task < num_modes:
        raise ValueError(f"task={task!r} is not a mode of a {num_modes}-mode mixture")
    if not 0.0 <= replay_ratio <= 1.0:
        raise ValueError(f"replay_ratio={replay_ratio!r} must lie in [0, 1]")
    if len(set(earlier)) != len(earlier) or any(not 0 <= j < num_modes or j == task for j in earlier):
        raise ValueError(f"earlier={earlier!r}: distinct tasks in [0, {num_modes}) other than task {task}")
    if replay_ratio > 0 and not earlier:
        raise ValueError(f"replay_ratio={replay_ratio!r} > 0 needs an earlier task to replay")
    if shares is None:
        share = np.full(len(earlier), 1.0 / max(len(earlier), 1))
    else:
        share = np.asarray(shares, dtype=np.float64)
        if share.shape != (len(earlier),) or np.any(share < 0) or not math.isclose(share.sum(), 1.0, abs_tol=1e-9):
            raise ValueError(f"shares={shares!r}: one non-negative share per earlier task, summing to 1")
    weights = np.zeros(num_modes)
    weights[task] = 1.0 - replay_ratio
    weights[earlier] = replay_ratio * share
    return weights


def rkl_weight_velocity(
    old_weight: FloatLike, target_old_weight: FloatLike, learning_rate: FloatLike, weight_param: str
) -> Float[Array, " ..."]:
    r"""Exact separated-limit population velocity d beta / dt of reverse KL, K = 2, means and
    scales at their targets (P2; time in steps, eta inside):

        L(beta) = beta log(beta / beta*) + (1 - beta) log((1 - beta) / (1 - beta*)),
        L'(beta) = logit beta - logit beta*,
        logit:      d beta/dt = -eta beta^2 (1 - beta)^2 L'(beta)   (da/dt = -eta beta (1 - beta) L')
        direct:     d beta/dt = -eta L'(beta)
        replicator: d beta/dt = -eta beta (1 - beta) L'(beta)

    Near beta -> 0, -L' = log(c / beta) + log(1 - beta) ~ log(c / beta) with c = beta* / (1 - beta*):
    eta beta^2 log(c / beta) (logit), eta log(c / beta) (direct), eta beta log(c / beta) (replicator:
    one power of beta, its metric is beta (1 - beta)).

    Args:
        old_weight: beta in (0, 1).
        target_old_weight: beta* in (0, 1).
        learning_rate: eta.
        weight_param: "logit", "direct" or "replicator" (docs/science/model.md section 1).

    Returns:
        d beta / dt per step, broadcast over the inputs.
    """
    _check_weight_param(weight_param)
    b = jnp.asarray(old_weight)
    grad = logit(b) - logit(jnp.asarray(target_old_weight, b.dtype))
    if weight_param == "logit":
        metric = jnp.square(b * (1.0 - b))
    elif weight_param == "direct":
        metric = jnp.ones_like(b)
    else:
        metric = b * (1.0 - b)
    return -jnp.asarray(learning_rate, b.dtype) * metric * grad


def rkl_weight_step(
    old_weight: FloatLike,
    target_old_weight: FloatLike,
    learning_rate: FloatLike,
    weight_param: str,
    weight_clip: float = 1e-6,
) -> Float[Array, " ..."]:
    r"""One discrete SGD step of the separated-limit population reverse KL on beta (P2), in the
    parameter the engine updates (docs/science/model.md section 1, L' = logit beta - logit beta*):

        logit:      a <- a - eta beta (1 - beta) L'(beta),  beta = sigmoid(a)
        direct:     beta <- clip(beta - eta L'(beta), eps, 1 - eps)
        replicator: beta <- clip(beta - eta beta (1 - beta) L'(beta), eps, 1 - eps)

    Args:
        old_weight: beta in (0, 1).
        target_old_weight: beta*.
        learning_rate: eta.
        weight_param: "logit", "direct" or "replicator".
        weight_clip: eps of direct / replicator (the engine's `weight_clip`).

    Returns:
        beta after one step.
    """
    _check_weight_param(weight_param)
    b = jnp.asarray(old_weight)
    eta = jnp.asarray(learning_rate, b.dtype)
    grad = logit(b) - logit(jnp.asarray(target_old_weight, b.dtype))
    if weight_param == "logit":
        return jax.nn.sigmoid(logit(b) - eta * b * (1.0 - b) * grad)
    metric = 1.0 if weight_param == "direct" else b * (1.0 - b)
    return jnp.clip(b - eta * metric * grad, weight_clip, 1.0 - weight_clip)


def rkl_recovery_steps(
    initial_weight: FloatLike,
    final_weight: FloatLike,
    target_old_weight: FloatLike,
    learning_rate: FloatLike,
    weight_param: str,
    max_steps: int = 10**7,
    weight_clip: float = 1e-6,
    dtype: type = np.float64,
) -> np.ndarray:
    r"""Number of discrete steps of `rkl_weight_step` from beta_0 until beta >= beta_end (P2):
    the smallest n with beta_n >= beta_end (0 if beta_0 >= beta_end), np.inf if that does not
    happen within `max_steps` or the map stops moving (beta_end >= beta*, or a step below the
    rounding of `dtype`).

    Iterates the map in NumPy over the whole broadcast batch at once (the logit rule in a, as the
    engine); about 1e5 steps per second. dtype=np.float32 rounds every operation in float32, as
    a float32 engine would (to within an ulp per step: the engine's gradient is computed by other
    operations); in float32 a logit step stalls once eta beta log(c / beta) < ulp(a) / 2.

    Args:
        initial_weight: beta_0.
        final_weight: beta_end.
        target_old_weight: beta*.
        learning_rate: eta.
        weight_param: "logit", "direct" or "replicator".
        max_steps: the horizon.
        weight_clip: eps of direct / replicator.
        dtype: the float type of the iteration.

    Returns:
        Steps (float array, np.inf where never), shape of the broadcast inputs.
    """
    _check_weight_param(weight_param)
    arrays = np.broadcast_arrays(
        *(np.asarray(v, dtype) for v in (initial_weight, final_weight, target_old_weight, learning_rate))
    )
    shape = arrays[0].shape
    flat: list[np.ndarray] = [np.array(v, dtype).ravel() for v in arrays]
    b0, b1, bstar, eta = flat
    one = dtype(1.0)
    clip_lo, clip_hi = dtype(weight_clip), one - dtype(weight_clip)
    astar = np.log(bstar) - np.log1p(-bstar)
    steps = np.full(b0.shape, np.inf)
    steps[b0 >= b1] = 0.0
    idx = np.flatnonzero((b0 < b1) & (b1 < bstar))
    x = np.log(b0[idx]) - np.log1p(-b0[idx]) if weight_param == "logit" else b0[idx].copy()
    b1, astar, eta = b1[idx], astar[idx], eta[idx]
    n = 0
    while idx.size and n < max_steps:
        n += 1
        if weight_param == "logit":
            b = one / (one + np.exp(-x))
            new = x - eta * b * (one - b) * (x - astar)
            beta = one / (one + np.exp(-new))
        else:
            grad = np.log(x) - np.log1p(-x) - astar
            metric = one if weight_param == "direct" else x * (one - x)
            new = np.clip(x - eta * metric * grad, clip_lo, clip_hi)
            beta = new
        reached = beta >= b1
        steps[idx[reached]] = n
        keep = ~reached & (new != x)  # a map that stops moving never moves again
        idx, x, b1, astar, eta = idx[keep], new[keep], b1[keep], astar[keep], eta[keep]
    return steps.reshape(shape)


def _recovery_time_one(b0: float, b1: float, bstar: float, eta: float, weight_param: str) -> float:
    """`rkl_recovery_time` of one input, by quadrature in u = logit beta* - logit beta."""
    from scipy import integrate

    if b0 >= b1:
        return 0.0
    if b1 >= bstar:
        return math.inf
    astar = math.log(bstar) - math.log1p(-bstar)
    u0 = astar - (math.log(b0) - math.log1p(-b0))
    u1 = astar - (math.log(b1) - math.log1p(-b1))
    if weight_param == "replicator":  # da/dt = -eta (a - a*): exact
        return math.log(u0 / u1) / eta
    if weight_param == "direct":  # da/dt = -eta (a - a*) / (beta (1 - beta))

        def f(u: float) -> float:
            a = astar - u
            return 1.0 / ((2.0 + math.exp(a) + math.exp(-a)) * u)

        value, _ = integrate.quad(f, u1, u0, epsabs=0.0, epsrel=1e-11, limit=400)
        return value / eta

    # logit: da/dt = -eta beta (1 - beta) (a - a*); 1 / (beta (1 - beta)) = e^{u - a*} (1 + e^{a* - u})^2,
    # integrated as e^{u0 - a*} * int e^{u - u0} (1 + e^{a* - u})^2 / u du (bounded integrand)
    def g(u: float) -> float:
        return math.exp(u - u0) * (1.0 + math.exp(astar - u)) ** 2 / u

    split = max(u1, u0 - 60.0)
    value = integrate.quad(g, split, u0, epsabs=0.0, epsrel=1e-11, limit=400)[0]
    if split > u1:
        value += integrate.quad(g, u1, split, epsabs=0.0, epsrel=1e-11, limit=400)[0]
    return math.exp(u0 - astar) * value / eta


def rkl_recovery_time(
    initial_weight: FloatLike,
    final_weight: FloatLike,
    target_old_weight: FloatLike,
    learning_rate: FloatLike,
    weight_param: str,
) -> np.ndarray:
    r"""Continuous-time recovery time of the separated-limit population reverse KL (P2), in steps:

        T = int_{beta_0}^{beta_end} d beta / v(beta),   v = `rkl_weight_velocity`,

    written in u = logit beta* - logit beta, where da/dt = -eta m(beta) (a - a*) with m = beta (1 - beta)
    (logit), 1 / (beta (1 - beta)) (direct), 1 (replicator):

        T = (1 / eta) int_{u_end}^{u_0} du / (u m),

    in closed form for the replicator, T = ln(u_0 / u_end) / eta (a relaxes exponentially to a*),
    by adaptive quadrature (scipy.integrate.quad, relative tolerance 1e-11) otherwise. 0 when
    beta_0 >= beta_end; inf when beta_end >= beta* (never reached).

    Args:
        initial_weight: beta_0 in (0, 1).
        final_weight: beta_end.
        target_old_weight: beta*.
        learning_rate: eta.
        weight_param: "logit", "direct" or "replicator".

    Returns:
        T (float64 array, shape of the broadcast inputs).
    """
    _check_weight_param(weight_param)
    one = np.vectorize(_recovery_time_one, otypes=[np.float64], excluded={4})
    return np.asarray(
        one(
            np.asarray(initial_weight, np.float64),
            np.asarray(final_weight, np.float64),
            np.asarray(target_old_weight, np.float64),
            np.asarray(learning_rate, np.float64),
            weight_param,
        )
    )


def rkl_k_mode_time_factor(target_weights) -> float:
    r"""How much longer an RKL recovery of the old weight takes with K modes than with two (P2,
    "K > 2"; separated limit, K softmax logits each stepped at eta / 2, the other modes in their
    target ratio): 2 / (1 + rho) with $\rho = \sum_{j \ge 1} (w^*_j / (1 - w^*_0))^2$.

    With the others in ratio, $dw_0/dt = \eta w_0^2 (1 - w_0)^2 \log(c (1 - w_0)/w_0) (1 + \rho)/2$:
    the K = 2 law at the rate eta (1 + rho) / 2, so every time of `rkl_recovery_time` is multiplied
    by this factor (1 for K = 2, 4/3 for two new tasks of equal target weight).

    Args:
        target_weights: the K target weights w* (mode 0 the old task), summing to 1.

    Returns:
        The factor 2 / (1 + rho), in [1, 2).
    """
    w = np.asarray(target_weights, dtype=np.float64)
    rho = float(np.sum((w[1:] / (1.0 - w[0])) ** 2))
    return 2.0 / (1.0 + rho)


def rkl_recovery_time_asymptotic(
    initial_weight: FloatLike,
    final_weight: FloatLike,
    target_old_weight: FloatLike,
    learning_rate: FloatLike,
    weight_param: str,
    terms: int | None = None,
) -> np.ndarray:
    r"""Recovery time under the small-weight law v ~ eta beta^p log(c / beta), c = beta* / (1 - beta*),
    p = 2 (logit), 0 (direct), 1 (replicator) (P2). With u = log(c / beta), beta = c e^{-u}:

        logit:      T = (1 / (eta c)) [Ei(u_0) - Ei(u_end)]
                      ~ (1 / (eta beta_0 u_0)) sum_{k < terms} k! / u_0^k            (beta_0 -> 0)
        direct:     T = (c / eta) [E1(u_end) - E1(u_0)]
                      ~ (c / eta) E1(u_end) - (beta_0 / (eta u_0)) sum_{k < terms} (-1)^k k! / u_0^k
        replicator: T = (1 / eta) ln(u_0 / u_end)

    (Ei and E1 the exponential integrals; c [E1(u_end) - E1(u_0)] = c [li(beta_0 / c) - li(beta_end / c)]
    with the logarithmic integral li.) Direct's T tends to the beta_0-independent (c / eta) E1(u_end)
    = O(beta* / eta); the replicator's grows only like ln(log(c / beta_0)) / eta. terms=None gives the closed
    forms; terms = n the n-term expansions in 1 / u_0 (logit drops the beta_0-independent Ei(u_end):
    relative O(beta_0 u_0 / (beta_end u_end))). The leading logit term 1 / (eta beta_0 log(c / beta_0))
    is low by the relative 1 / u_0 + 2 / u_0^2 + ...; against the exact `rkl_recovery_time` the
    closed forms are low by at most 1 / ((1 - beta_end)^{p'} (1 - eps)) - 1, eps = -log(1 - beta_end) /
    u_end, p' = 2, 0, 1 (docs/science/pipelines.md P2).

    Args:
        initial_weight: beta_0.
        final_weight: beta_end < beta*.
        target_old_weight: beta*.
        learning_rate: eta.
        weight_param: "logit", "direct" or "replicator".
        terms: None (closed form) or the number of terms of the expansion in 1 / u_0.

    Returns:
        T (float64 array, shape of the broadcast inputs).
    """
    from scipy import special

    _check_weight_param(weight_param)
    b0, b1, bstar, eta = np.broadcast_arrays(
        *(np.asarray(v, np.float64) for v in (initial_weight, final_weight, target_old_weight, learning_rate))
    )
    c = bstar / (1.0 - bstar)
    u0, u1 = np.log(c / b0), np.log(c / b1)
    if weight_param == "replicator":
        return np.log(u0 / u1) / eta
    k = np.arange(terms or 0, dtype=np.float64)[:, None] if terms else None
    if weight_param == "logit":
        if k is None:
            return (special.expi(u0) - special.expi(u1)) / (eta * c)
        series = np.sum(special.factorial(k) / u0.ravel() ** k, axis=0).reshape(u0.shape)
        return series / (eta * b0 * u0)
    if k is None:
        return c * (special.exp1(u1) - special.exp1(u0)) / eta
    series = np.sum((-1.0) ** k * special.factorial(k) / u0.ravel() ** k, axis=0).reshape(u0.shape)
    return c * special.exp1(u1) / eta - b0 * series / (eta * u0)


def rkl_weight_gradient(old_weight: float, target_old_weight: float, separation: float, points: int = 4001) -> float:
    r"""dL_R/dbeta of the two-mode reverse KL at finite separation, means and unit scales at their
    targets (P2, where the separated limit stops holding), by identity I4:

        dL_R/dbeta = int (N_o - N_n) log(q / p*) dx,   q = beta N_o + (1 - beta) N_n,
        p* = beta* N_o + (1 - beta*) N_n,  N_o = N(0, 1), N_n = N(Delta, 1),

    on a uniform grid over [-12, Delta + 12] (trapezoid rule; spectrally accurate for these smooth
    integrands: 2001 and 40001 points agree to 1e-15 at Delta = 5 and 12), float64.
    It tends to the separated logit beta - logit beta* as Delta grows; the gap is the misassignment
    term E_{N_o}[log(1 + (1 - beta) N_n / (beta N_o))] - (same at beta*) - (the same on N_n), of order
    the soft misassignment (D4) sqrt((1 - beta) / beta) BC at small beta.

    Args:
        old_weight: beta.
        target_old_weight: beta*.
        separation: Delta.
        points: grid points.

    Returns:
        dL_R / dbeta (a float).
    """
    x = np.linspace(-12.0, separation + 12.0, points)
    log_o = -0.5 * x**2 - 0.5 * math.log(2 * math.pi)
    log_n = -0.5 * (x - separation) ** 2 - 0.5 * math.log(2 * math.pi)
    log_q = np.logaddexp(math.log(old_weight) + log_o, math.log1p(-old_weight) + log_n)
    log_p = np.logaddexp(math.log(target_old_weight) + log_o, math.log1p(-target_old_weight) + log_n)
    return float(np.trapezoid((np.exp(log_o) - np.exp(log_n)) * (log_q - log_p), x))


def rkl_recovery_time_finite_separation(
    initial_weight: float,
    final_weight: float,
    target_old_weight: float,
    learning_rate: float,
    weight_param: str,
    separation: float,
    nodes: int = 161,
) -> float:
    r"""`rkl_recovery_time` at finite separation (P2, where the separated limit stops holding): the
    flow d beta/dt = -eta M(beta) dL_R/dbeta with M = beta^2 (1 - beta)^2, 1, beta (1 - beta) and the
    exact two-mode gradient `rkl_weight_gradient` (means and unit scales at their targets), timed as

        T_Delta = int_{log beta_0}^{log beta_end} beta / (eta M(beta) |dL_R/dbeta|) d log beta

    by Simpson's rule on `nodes` points (L_R is convex in beta with its minimum at beta*, so the
    gradient is negative below beta*). Needs beta_0 < beta_end < beta*; float64 NumPy.

    Args:
        initial_weight: beta_0.
        final_weight: beta_end.
        target_old_weight: beta*.
        learning_rate: eta.
        weight_param: "logit", "direct" or "replicator".
        separation: Delta.
        nodes: Simpson nodes in log beta (odd).

    Returns:
        T_Delta in steps (a float).
    """
    from scipy import integrate

    _check_weight_param(weight_param)
    if not 0 < initial_weight < final_weight < target_old_weight < 1:
        raise ValueError("needs 0 < initial_weight < final_weight < target_old_weight < 1")
    log_b = np.linspace(math.log(initial_weight), math.log(final_weight), nodes)
    b = np.exp(log_b)
    grad = np.array([rkl_weight_gradient(float(x), target_old_weight, separation) for x in b])
    metric = {"logit": (b * (1 - b)) ** 2, "direct": np.ones_like(b), "replicator": b * (1 - b)}[weight_param]
    return float(integrate.simpson(b / (learning_rate * metric * -grad), x=log_b))


def mode_starvation_probability(
    weights: Float[Array | np.ndarray, "... K"] | list[float], batch_size: IntLike | FloatLike
) -> Float[Array, "... K"]:
    r"""P(an ancestral batch of B samples of sum_k w_k N_k holds no sample of mode k) = (1 - w_k)^B
    per mode (P3; D6 over K modes).

    Args:
        weights: the (..., K) mixture weights the batch is drawn from.
        batch_size: B.

    Returns:
        (..., K) starvation probabilities.
    """
    w = jnp.asarray(weights)
    return jnp.power(1.0 - w, jnp.asarray(batch_size, w.dtype))


def replay_starvation_bound(
    replay_ratio: FloatLike, shares: Float[Array | np.ndarray, "... J"] | list[float], batch_size: IntLike | FloatLike
) -> Float[Array, "... J"]:
    r"""(1 - lambda share_j)^B for each replayed task j of a stage (P3): exactly the probability that
    an FKL stage's ancestral batch of p_train misses task j, and an upper bound on it for any
    proposal that mixes a replay fraction lambda split by the shares into its draws, e.g. reverse
    KL's m_lambda = (1 - lambda) q + lambda sum_j share_j N_j, where a draw hits j with probability
    (1 - lambda) w_j + lambda share_j >= lambda share_j.

    Args:
        replay_ratio: lambda.
        shares: the (..., J) replay shares of the earlier tasks.
        batch_size: B.

    Returns:
        (..., J) bounds.
    """
    s = jnp.asarray(shares)
    return jnp.power(1.0 - jnp.asarray(replay_ratio, s.dtype) * s, jnp.asarray(batch_size, s.dtype))
