"""Objectives: one concept per file. Each maps (params, hyper, setup, key) to
(surrogate, Estimate): the gradient of `surrogate` is the estimator of the objective's gradient."""

from ._common import Estimate
from .chen2025 import chen2025_fkl, chen2025_reinforce
from .forward_kl import forward_kl, training_mixture
from .oapl import oapl, sync_lagged_policy
from .reverse_kl import replay_log_weight, reverse_kl, reverse_kl_to
from .sdft import ema_teacher, sdft
from .ttt_discover import frozen_reference, ttt_discover

OBJECTIVES = {
    "fkl": forward_kl,
    "rkl": reverse_kl,
    "chen2025_fkl": chen2025_fkl,
    "chen2025_rkl": chen2025_reinforce,
    "sdft": sdft,
    "ttt_discover": ttt_discover,
    "oapl": oapl,
}

#: Objectives that track a companion copy of theta (train.TrainState.companion): name ->
#: update(companion, params, step, hyper, setup) -> companion, applied after every step; such an
#: objective takes the companion as a fifth argument.
COMPANION_UPDATES: dict = {
    "sdft": ema_teacher,  # EMA teacher weights phi (methods.md A)
    "ttt_discover": frozen_reference,  # q_ref = theta(0), never updated (methods.md B)
    "oapl": sync_lagged_policy,  # theta_lag, re-synced every L steps (methods.md C)
}

__all__ = ["COMPANION_UPDATES", "OBJECTIVES", "Estimate", "forward_kl", "reverse_kl", "chen2025_fkl", "chen2025_reinforce",
           "training_mixture", "replay_log_weight", "reverse_kl_to", "sdft", "ttt_discover", "oapl"]
