"""Objectives: one concept per file. Each maps (params, hyper, setup, key) to
(surrogate, Estimate): the gradient of `surrogate` is the estimator of the objective's gradient."""

from ._common import Estimate
from .chen2025 import chen2025_fkl, chen2025_reinforce
from .forward_kl import forward_kl, training_mixture
from .reverse_kl import replay_log_weight, reverse_kl

OBJECTIVES = {
    "fkl": forward_kl,
    "rkl": reverse_kl,
    "chen2025_fkl": chen2025_fkl,
    "chen2025_rkl": chen2025_reinforce,
}

#: Objectives that track a companion copy of theta (train.TrainState.companion): name ->
#: update(companion, params, step, hyper, setup) -> companion, applied after every step; such an
#: objective takes the companion as a fifth argument.
COMPANION_UPDATES: dict = {}

__all__ = ["COMPANION_UPDATES", "OBJECTIVES", "Estimate", "forward_kl", "reverse_kl", "chen2025_fkl", "chen2025_reinforce",
           "training_mixture", "replay_log_weight"]
