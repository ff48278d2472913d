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

__all__ = ["OBJECTIVES", "Estimate", "forward_kl", "reverse_kl", "chen2025_fkl", "chen2025_reinforce",
           "training_mixture", "replay_log_weight"]
