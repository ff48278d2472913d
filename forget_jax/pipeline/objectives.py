"""FKL and RKL stages over K modes (docs/science/pipelines.md, "The engine"; the two-mode forms are
docs/science/objectives.md).

A stage's step draws its noise with the two-mode objective's own `draw` (objectives/forward_kl.py,
reverse_kl.py: label uniforms u (B,) and eps (B, d) from the step key), so a K = 2 pipeline sees
exactly the draws of the two-mode engine. Ancestral labels over K modes: z = the first k with
u < w_0 + ... + w_k (for K = 2: z = old iff u < beta).

* FKL on p_train (`modes.training_modes`): population = KL(p_train || q) by Gauss-Hermite
  quadrature under p_train in the frame of the target means; Monte Carlo = -(1/B) sum_i log q(x_i)
  with x_i ~ p_train (any non-population estimator: the data do not depend on theta).
* RKL towards a target (p* or p*_seen): population = E_q[log sg(q) - log p] under q with
  reparameterised nodes (the term E_q[grad log q] = 0 is dropped, as `population_reverse_kl`);
  `pathwise` = (1/B) sum_i [f(x_i) + A_i log w_{z_i}], x_i = m_{z_i} + s_{z_i} eps_i,
  A_i = f_i - leave-one-out mean (stop-gradient); `score` = (1/B) sum_i A_i log q(x_i) at fixed x.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._types import Array, Bool, Float, Int, Scalar
from ..objectives._common import Noise, leave_one_out_mean
from ..quadrature import standard_normal_rule
from ..spec import Setup
from .modes import Modes

sg = jax.lax.stop_gradient


def labels_at(weights: Float[Array, " K"], u: Float[Array, " B"]) -> Int[Array, " B"]:
    """Ancestral labels: z_i = #{k < K - 1 : u_i >= w_0 + ... + w_k} (the first k whose cumulative
    weight exceeds u_i; z ~ Cat(w) for u ~ U(0, 1))."""
    edges = jnp.cumsum(weights)[:-1]
    return jnp.sum(u[:, None] >= edges[None, :], axis=-1)


def ancestral_at(mixture: Modes, noise: Noise) -> tuple[Float[Array, "B d"], Int[Array, " B"]]:
    """x_i = m_{z_i} + s_{z_i} eps_i with z = `labels_at(w, u)`; x is reparameterised in its
    component's mean and scale, the label carries no gradient."""
    assert noise.eps is not None and noise.label is not None
    z = labels_at(sg(mixture.weights), noise.label)
    return mixture.means[z] + mixture.scales[z][:, None] * noise.eps, z


def missed(z: Int[Array, " B"], modes: int) -> Bool[Array, " K"]:
    """(K,) True for each mode with no sample in the batch (mode starvation, pipelines.md P3)."""
    return ~jnp.any(z[:, None] == jnp.arange(modes)[None, :], axis=0)


def expect_modes(mixture: Modes, fn, order: int) -> Scalar:
    r"""$E_{x \sim \text{mixture}}[fn(x)] = \sum_k w_k E_{N_k}[fn]$, Gauss-Hermite per mode
    (reparameterised nodes x = m_k + s_k z, differentiable in every parameter; a zero weight
    contributes exactly 0)."""
    r = mixture.means.shape[-1]
    nodes, w_nodes = standard_normal_rule(order, r, mixture.means.dtype)

    def one(mean, scale):
        return jnp.tensordot(w_nodes, fn(mean + scale * nodes), axes=(0, 0))

    per_mode = jax.vmap(one)(mixture.means, mixture.scales)
    return jnp.sum(jnp.where(mixture.weights > 0, mixture.weights * per_mode, 0.0))


def kl(p: Modes, q: Modes, order: int) -> Scalar:
    """KL(p || q) = E_p[log p - log q] by quadrature under p (both in the same frame)."""
    return expect_modes(p, lambda x: p.log_prob(x) - q.log_prob(x), order)


def fkl(q: Modes, p_train: Modes, setup: Setup, noise: Noise, frame) -> tuple[Scalar, tuple[Scalar, Bool[Array, " K"]]]:
    """Surrogate of KL(p_train || q) (module doc) and (loss, missed modes). Population: missed
    are the modes p_train gives no weight (K = 2: no replay)."""
    if setup.estimator == "population":
        basis, origin = frame
        value = kl(p_train.project(basis, origin), q.project(basis, origin), setup.quadrature_order)
        return value, (value, p_train.weights <= 0)
    x, z = ancestral_at(sg(p_train), noise)
    log_q = q.log_prob(x)
    loss = jnp.mean(p_train.log_prob(x) - log_q)
    return -jnp.mean(log_q), (sg(loss), missed(z, setup.modes))


def rkl(q: Modes, target: Modes, setup: Setup, noise: Noise, frame) -> tuple[Scalar, tuple[Scalar, Bool[Array, " K"]]]:
    """Surrogate of KL(q || target) (module doc) and (loss, missed modes of the on-policy batch;
    none for population)."""
    none = jnp.zeros((setup.modes,), bool)
    if setup.estimator == "population":
        basis, origin = frame
        qp, tp = q.project(basis, origin), target.project(basis, origin)
        q_fixed = sg(qp)
        value = expect_modes(qp, lambda x: q_fixed.log_prob(x) - tp.log_prob(x), setup.quadrature_order)
        return value, (sg(value), none)

    def f(x):
        return q.log_prob(x) - target.log_prob(x)

    x, z = ancestral_at(q, noise)
    if setup.estimator == "pathwise":
        fx = f(x)
        log_label = jnp.log(q.weights)[z]
        advantage = sg(fx - leave_one_out_mean(sg(fx)))
        return jnp.mean(fx + advantage * log_label), (sg(jnp.mean(fx)), missed(z, setup.modes))
    x = sg(x)
    fx = sg(f(x))
    advantage = fx - leave_one_out_mean(fx)
    return jnp.mean(advantage * q.log_prob(x)), (jnp.mean(fx), missed(z, setup.modes))
