"""Parameter updates: weight parameterisation, freeze flags, per-group learning rates, optax.

docs/science/model.md section 1, update rules:
  (a) `direct`:     beta <- clip(beta - eta * dL/dbeta, eps, 1 - eps)            (CRNC25)
  (b) `logit`:      a <- a - eta * dL/da,  beta = sigmoid(a)
  (c) `replicator`: beta <- clip(beta - eta * beta (1 - beta) dL/dbeta, eps, 1 - eps)
      (Fisher-Rao / replicator flow d beta/dt = beta (E_p[N_o / q] - 1) under FKL, since
      E_p[N_o/q] - 1 = -(1 - beta) dL_F/dbeta; at eta = 1 it is the EM step beta <- E_p[w_o]).
Means (and optional scales) always take plain gradient steps. The learning rate and the group
multipliers (CRNC25's SLOW_FACTOR on pi_1, mu_1, s_1) are traced numbers, so sweeping them never
recompiles; the optimiser's own transform (identity for SGD, `optax.scale_by_adam`) runs first.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from .model import LearnerParams
from .spec import Hyper, Setup


def make_optimizer(setup: Setup) -> optax.GradientTransformation:
    """Direction transform without the learning rate (applied per group in `apply_update`)."""
    if setup.optimizer == "adam":
        return optax.scale_by_adam(b1=setup.adam_b1, b2=setup.adam_b2, eps=setup.adam_eps)
    return optax.identity()


def precondition(grads: LearnerParams, params: LearnerParams, setup: Setup) -> LearnerParams:
    """Freeze flags (zero gradient) and the replicator's beta (1 - beta) metric on the weight."""
    zero = jnp.zeros_like
    weight = grads.weight
    if setup.weight_param == "replicator":
        weight = weight * params.weight * (1.0 - params.weight)
    return LearnerParams(
        weight=weight if setup.train_weight else zero(grads.weight),
        old_mean=grads.old_mean if setup.train_old_mean else zero(grads.old_mean),
        new_mean=grads.new_mean if setup.train_new_mean else zero(grads.new_mean),
        old_scale=grads.old_scale if setup.train_scales else zero(grads.old_scale),
        new_scale=grads.new_scale if setup.train_scales else zero(grads.new_scale),
    )


def group_learning_rates(hyper: Hyper) -> LearnerParams:
    """Learning rate per leaf: the old group (weight, old mean, old scale) uses
    eta * old_lr_scale, the new group eta * new_lr_scale."""
    old = hyper.learning_rate * hyper.old_lr_scale
    new = hyper.learning_rate * hyper.new_lr_scale
    return LearnerParams(weight=old, old_mean=old, new_mean=new, old_scale=old, new_scale=new)


def project(params: LearnerParams, setup: Setup) -> LearnerParams:
    """Clip beta to [eps, 1 - eps] (direct / replicator) and scales to >= scale_min."""
    weight = params.weight
    if setup.weight_param != "logit":
        weight = jnp.clip(weight, setup.weight_clip, 1.0 - setup.weight_clip)
    return LearnerParams(
        weight=weight,
        old_mean=params.old_mean,
        new_mean=params.new_mean,
        old_scale=jnp.maximum(params.old_scale, setup.scale_min),
        new_scale=jnp.maximum(params.new_scale, setup.scale_min),
    )


def apply_update(
    params: LearnerParams,
    grads: LearnerParams,
    opt_state: optax.OptState,
    hyper: Hyper,
    setup: Setup,
    optimizer: optax.GradientTransformation,
) -> tuple[LearnerParams, optax.OptState]:
    """One descent step theta <- project(theta - eta_group * optimizer(precondition(grad)))."""
    # optax's Adam bias correction raises a Python float to the int32 step count: standard promotion
    # there only (forget-jax's own code runs under strict dtype promotion in the tests)
    with jax.numpy_dtype_promotion("standard"):
        directions, opt_state = optimizer.update(precondition(grads, params, setup), opt_state, params)
    rates = group_learning_rates(hyper)
    stepped = jax.tree.map(lambda p, d, r: p - r * d, params, directions, rates)
    return project(stepped, setup), opt_state
