"""Objectives: one file each, all with one interface (registry.py):

    loss(params, hyper, setup, key, companion) -> (surrogate, Estimate)

Each file registers its `Objective` (loss, knobs, rules, companion update, preset) on import;
importing this package registers the built-in ones. A new objective is one more file plus its
`register(...)` call (and, for a built-in one, an import line below).
"""

# registration order is the order of the `objective` choices (fkl, rkl, chen2025_*, sdft, ttt_discover, oapl)
from . import forward_kl, reverse_kl, chen2025, sdft, ttt_discover, oapl  # noqa: I001, F401
from ._common import Estimate, sample_ancestral
from .chen2025 import chen2025_fkl, chen2025_reinforce
from .forward_kl import forward_kl
from .oapl import oapl, sync_lagged_policy
from .registry import OBJECTIVES, Objective, get_objective, keep_companion, register, unregister
from .reverse_kl import replay_log_weight, reverse_kl, reverse_kl_to
from .sdft import ema_teacher, sdft
from .ttt_discover import ttt_discover

__all__ = [
    "OBJECTIVES", "Estimate", "Objective", "chen2025_fkl", "chen2025_reinforce", "ema_teacher", "forward_kl",
    "get_objective", "keep_companion", "oapl", "register", "replay_log_weight", "reverse_kl", "reverse_kl_to",
    "sample_ancestral", "sdft", "sync_lagged_policy", "ttt_discover", "unregister",
]
