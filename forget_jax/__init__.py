"""forget-jax: simulate forgetting in post-training with two-mode Gaussian mixtures, at sweep scale."""

from . import theory
from .model import LearnerParams, Mixture, init_params, learner_mixture, optimum_params, target_mixture
from .spec import HYPER_DEFAULTS, Hyper, Setup, make_hyper
from .train import TRACE_COUNTS, make_train, simulate, simulate_one

__version__ = "0.1.0"

__all__ = [
    "HYPER_DEFAULTS", "Hyper", "LearnerParams", "Mixture", "Setup", "TRACE_COUNTS", "init_params",
    "learner_mixture", "make_hyper", "make_train", "optimum_params", "simulate", "simulate_one",
    "target_mixture", "theory", "__version__",
]
