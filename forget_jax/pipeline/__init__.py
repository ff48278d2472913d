"""Continual post-training pipelines: K-mode mixtures and stage schedules (SFT -> RL -> ...) run as
one compiled program per static group (docs/science/pipelines.md).

* schedule.py: the `stages:` of a configuration (validation, `Stage`, stage of each logged step);
* modes.py: the K-mode target, learner and task distributions;
* objectives.py: FKL and RKL stages over K modes;
* loop.py: the training loop over the stages (train.make_segments' contract).
"""

from .schedule import PIPELINE_OBJECTIVES, STAGE_KEYS, Stage, build, freeze, split_name, stage_of_step, traced_name

__all__ = [
    "PIPELINE_OBJECTIVES",
    "STAGE_KEYS",
    "Stage",
    "build",
    "freeze",
    "split_name",
    "stage_of_step",
    "traced_name",
]
