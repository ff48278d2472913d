"""The K-mode Gaussian mixture of a pipeline: target p*, learner q_theta, task distributions
(docs/science/pipelines.md, "The K-mode model" and "The engine").

p* = sum_k w*_k N(mu_k*, s_k*^2 I), q_theta = sum_k w_k N(m_k, s_k^2 I), one mode per task: mode
0 is the old task (prior skills, weight w*_0 = `target_old_weight`, scale `target_old_scale`),
modes 1 .. K-1 the post-training tasks (equal shares of 1 - w*_0, scale `target_new_scale`).
The learner's weights (`weight`): K logits, w = softmax(a), every mode alike (the loop steps them
at eta / 2, so that for K = 2 the logit a_0 - a_1 = logit beta takes the two-mode `logit` step;
pipeline/loop.py), or the first K - 1 weights themselves (`replicator`, w_{K-1} = 1 - sum, a rule
that is the same for every mode; `direct` is K = 2 only). For K = 2 every quantity here is that
of model.py's two-mode mixture (tests/test_pipeline.py).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from .. import gaussian
from .._types import Array, Float, Scalar
from ..spec import Hyper, Setup


class Modes(eqx.Module):
    """An isotropic K-component Gaussian mixture: weights (K,), means (K, d), scales (K,)."""

    weights: Float[Array, " K"]
    means: Float[Array, "K d"]
    scales: Float[Array, " K"]

    def component_log_probs(self, x: Float[Array, "... d"]) -> Float[Array, "... K"]:
        """log N(x; m_k, s_k^2 I) for every k (gaussian.log_normal, vmapped over the modes)."""
        return jax.vmap(lambda m, s: gaussian.log_normal(x, m, s), out_axes=-1)(self.means, self.scales)

    def log_prob(self, x: Float[Array, "... d"]) -> Float[Array, " ..."]:
        r"""$\log q(x) = \operatorname{logsumexp}_k(\log w_k + \log N_k(x))$; a zero weight adds nothing."""
        return logsumexp(self.component_log_probs(x), axis=-1, b=self.weights)

    def responsibilities(self, x: Float[Array, "... d"]) -> Float[Array, "... K"]:
        r"""$r_k(x) = w_k N_k(x) / q(x)$."""
        logs = jnp.log(self.weights) + self.component_log_probs(x)
        return jnp.exp(logs - logsumexp(logs, axis=-1, keepdims=True))

    def project(self, basis: Float[Array, "d r"], origin: Float[Array, " d"]) -> Modes:
        """The mixture in the coordinates y = basis^T (x - origin) (exact when the span of `basis`
        holds every mean and the scales are equal, or d = r)."""
        return Modes(self.weights, (self.means - origin) @ basis, self.scales)


class ModeParams(eqx.Module):
    """Trainable theta of the K-mode learner: `weight` (K logits, or the first K - 1 weights under
    `direct` / `replicator`; module doc), `means` (K, d), `scales` (K,)."""

    weight: Float[Array, " P"]
    means: Float[Array, "K d"]
    scales: Float[Array, " K"]


def unit_positions(setup: Setup) -> np.ndarray:
    """(K, d) target mode offsets from mu_0* in units of Delta s_o* (`axis`, `simplex`) or of s_o*
    (`explicit`): a NumPy constant of the program (the placement is static; Delta is traced).

    * axis: u_k = k e_1;
    * simplex: a regular simplex of unit edge with u_0 = 0 and u_1 = e_1 (so K = 2 is the axis),
      built by Gram-Schmidt in the first K - 1 coordinates (needs d >= K - 1);
    * explicit: `mode_positions` (K numbers on e_1 or K points).
    """
    k, d = setup.modes, setup.dim
    if setup.mode_placement == "explicit":
        pos = np.asarray(setup.mode_positions, dtype=np.float64)
        if pos.ndim == 1:
            out = np.zeros((k, d))
            out[:, 0] = pos
            return out
        return pos.reshape(k, d)
    out = np.zeros((k, d))
    if setup.mode_placement == "axis" or k == 2:
        out[:, 0] = np.arange(k)
        return out
    # regular simplex: the standard basis of R^K shifted to vertex 0 has edges sqrt(2); an
    # orthonormal basis of its span (QR, first vector along e_1 - e_0) gives coordinates in R^(K-1)
    vertices = np.eye(k) / np.sqrt(2.0)
    offsets = vertices[1:] - vertices[0]
    q, _ = np.linalg.qr(offsets.T)  # (K, K - 1)
    coords = (vertices - vertices[0]) @ q  # (K, K - 1), coords[1] along the first axis
    coords = coords * np.sign(coords[1, 0])
    out[:, : k - 1] = coords
    return out


def frame(setup: Setup) -> np.ndarray:
    """(d, r) orthonormal basis of the span of the target means (r = their rank, >= 1): the frame
    of population quadrature and of the exact metrics (learner means stay in it under population
    dynamics: they start at target means plus offsets along e_1, which is in the span)."""
    u = unit_positions(setup)
    e1 = np.zeros(setup.dim)
    e1[0] = 1.0
    basis = [e1]
    for v in u[1:] - u[0]:  # Gram-Schmidt from e_1, in mode order (K = 2 on the axis: e_1 alone)
        residual = v - sum(np.dot(v, b) * b for b in basis)
        norm = np.linalg.norm(residual)
        if norm > 1e-9 * max(1.0, float(np.linalg.norm(v))):
            basis.append(residual / norm)
    return np.stack(basis, axis=1)


def _unit(setup: Setup, hyper: Hyper) -> Float[Array, "K d"]:
    """Target mode positions relative to mu_0*: Delta s_o* u_k (axis / simplex), s_o* u_k (explicit).
    For K = 2 on the axis: model.new_mode_position."""
    u = jnp.asarray(unit_positions(setup), setup.dtype)
    length = hyper.target_old_scale if setup.mode_placement == "explicit" else hyper.separation * hyper.target_old_scale
    return u * length


def task_scales(value_old: Scalar, value_new: Scalar, setup: Setup) -> Float[Array, " K"]:
    """(K,) scales: `value_old` for mode 0, `value_new` for the others."""
    return jnp.concatenate([value_old[None], jnp.broadcast_to(value_new, (setup.modes - 1,))]).astype(setup.dtype)


def shares(old: Scalar, setup: Setup) -> Float[Array, " K"]:
    """(K,) weights: `old` on mode 0 and (1 - old) / (K - 1) on each other mode."""
    rest = (1.0 - old) / (setup.modes - 1)
    return jnp.concatenate([old[None], jnp.broadcast_to(rest, (setup.modes - 1,))]).astype(setup.dtype)


def target_modes(hyper: Hyper, setup: Setup) -> Modes:
    """p*: mu_0* = target_old_mean e_1, mu_k* = mu_0* + offsets (`unit_positions`)."""
    e1 = jnp.zeros((setup.dim,), setup.dtype).at[0].set(1.0)
    means = hyper.target_old_mean * e1 + _unit(setup, hyper)
    return Modes(
        shares(hyper.target_old_weight, setup),
        means,
        task_scales(hyper.target_old_scale, hyper.target_new_scale, setup),
    )


def restricted(target: Modes, tasks: tuple[int, ...], setup: Setup) -> Modes:
    """p* restricted to some tasks and renormalised: w_k* / sum_{j in tasks} w_j* on them, 0 elsewhere."""
    mask = jnp.zeros((setup.modes,), setup.dtype).at[jnp.asarray(tasks)].set(1.0)
    w = target.weights * mask
    return Modes(w / jnp.sum(w), target.means, target.scales)


def training_modes(
    target: Modes, task: int, earlier: tuple[int, ...], shares_: tuple[float, ...] | None, replay_ratio, setup: Setup
) -> Modes:
    """FKL data of a stage: p_train = (1 - lambda) N_task + lambda sum_j share_j N_j over the earlier
    tasks (equal shares unless given). For K = 2, task 1 and earlier (0,): model.training_mixture."""
    w = jnp.zeros((setup.modes,), setup.dtype)
    if earlier:
        split = np.asarray(shares_ if shares_ is not None else [1.0 / len(earlier)] * len(earlier))
        w = w.at[jnp.asarray(earlier)].set(replay_ratio * jnp.asarray(split, setup.dtype))
        w = w.at[task].set(1.0 - replay_ratio)
    else:
        w = w.at[task].set(1.0)
    return Modes(w, target.means, target.scales)


def weights(params: ModeParams, setup: Setup) -> Float[Array, " K"]:
    """w from the parameters: softmax(a) (logit) or [w_0 .. w_{K-2}, 1 - sum] (direct,
    replicator). K = 2 logit: (sigmoid(a_0 - a_1), 1 - sigmoid(a_0 - a_1)), the two-mode beta."""
    if setup.weight_param == "logit":
        if setup.modes == 2:  # the two-mode rule exactly: beta = sigmoid(logit beta)
            beta = jax.nn.sigmoid(params.weight[0] - params.weight[1])
            return jnp.stack([beta, 1.0 - beta])
        return jax.nn.softmax(params.weight)
    return jnp.concatenate([params.weight, (1.0 - jnp.sum(params.weight))[None]])


def weight_parameters(w: Float[Array, " K"], setup: Setup) -> Float[Array, " P"]:
    """Inverse of `weights`: a_k = log(w_k / w_{K-1}), a_{K-1} = 0 (logit; w_{K-1} as 1 - sum of
    the others, so K = 2 gives a_0 = gaussian.logit(beta)) or the first K - 1 weights."""
    if setup.weight_param == "logit":
        free = jnp.log(w[:-1]) - jnp.log1p(-jnp.sum(w[:-1]))
        return jnp.concatenate([free, jnp.zeros((1,), free.dtype)])
    return w[:-1]


def learner_modes(params: ModeParams, setup: Setup) -> Modes:
    return Modes(weights(params, setup), params.means, params.scales)


def init_params(hyper: Hyper, setup: Setup) -> ModeParams:
    """theta(0): w_0(0) = init_old_weight (the rest equal), m_0(0) = mu_0* + init_old_offset e_1,
    m_k(0) = mu_k* + init_new_offset e_1, scales init_old_scale / init_new_scale."""
    target = target_modes(hyper, setup)
    e1 = jnp.zeros((setup.dim,), setup.dtype).at[0].set(1.0)
    offsets = task_scales(hyper.init_old_offset, hyper.init_new_offset, setup)
    return ModeParams(
        weight=weight_parameters(shares(hyper.init_old_weight, setup), setup),
        means=target.means + offsets[:, None] * e1,
        scales=task_scales(hyper.init_old_scale, hyper.init_new_scale, setup),
    )
