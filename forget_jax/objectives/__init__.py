"""Objectives: one file each, all with one interface (registry.py):

    loss(params, hyper, setup, key, companion) -> (surrogate, Estimate)

Each file registers its `Objective` (loss, knobs, rules, companion update, preset) on import;
importing this package registers the built-in ones. A new objective is one more file plus its
`register(...)` call (and, for a built-in one, an import line below).
"""

# the import order is the registration order, hence the order of the `objective` choices
from .forward_kl import forward_kl  # noqa: I001
from .reverse_kl import replay_log_weight, reverse_kl, reverse_kl_to
from .chen2025 import chen2025_fkl, chen2025_reinforce
from .sdft import ema_teacher, sdft
from .ttt_discover import ttt_discover
from .oapl import oapl, sync_lagged_policy
from ._common import Estimate, sample_ancestral
from .registry import OBJECTIVES, Objective, get_objective, keep_companion, register, unregister

__all__ = [
    "OBJECTIVES",
    "Estimate",
    "Objective",
    "chen2025_fkl",
    "chen2025_reinforce",
    "ema_teacher",
    "forward_kl",
    "get_objective",
    "keep_companion",
    "oapl",
    "register",
    "replay_log_weight",
    "reverse_kl",
    "reverse_kl_to",
    "sample_ancestral",
    "sdft",
    "sync_lagged_policy",
    "ttt_discover",
    "unregister",
]
