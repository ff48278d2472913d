"""Named presets: published settings expressed as forget-jax configurations.

`CHEN2025` is the two-mode toy of Chen, Razin, Narasimhan and Chen (2025), "Retaining by doing"
(CRNC25; code `simulation/settings.py::TwoModeSetting` with `simulation/run.py::fit_forward_kl`
and `fit_reinforce`), as transcribed in docs/science/studies.md section 5:

* grid x in [-8, 8] with 500 points (overlap metrics, trapezoid rule);
* 200 iterations of 1000 samples each, plain SGD;
* target p = 0.75 N(-3.0, 1.0^2) + 0.25 N(3.5, 0.7^2) (sigmas are standard deviations);
* initial learner q = 0.75 N(-3.5, 1.0^2) + 0.25 N(0.5, 0.7^2);
* the mixture weight pi_1 is learned directly (clipped to [1e-3, 1 - 1e-3]), scales are learned
  (clipped to >= 1e-3), and the old group (pi_1, mu_1, s_1) uses lr * SLOW_FACTOR = lr * 0.005;
* FKL learning rates [0.15, 0.01], surrogate-REINFORCE (RKL) learning rate [0.01], reward
  temperature REINFORCE_BETA = 0.1.

In forget-jax terms the target new mean is mu_o* + separation * s_o* = -3.0 + 6.5 * 1.0 = 3.5 and
the learner's means are offsets from the target's: -3.0 - 0.5 = -3.5 and 3.5 - 3.0 = 0.5.
docs/science/claims.md fact 11: this preset, run with the `chen2025_fkl` / `chen2025_rkl`
estimators, follows the CRNC25 code within Monte Carlo noise (tests/test_chen2025.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import fields
from .spec import Hyper, Setup, make_hyper

#: CRNC25 learning rates per objective (docs/science/studies.md section 5: FWD_LR = [0.15, 0.01], REV_LR = [0.01]).
CHEN2025_LEARNING_RATES: dict[str, tuple[float, ...]] = {
    "chen2025_fkl": (0.15, 0.01),
    "chen2025_rkl": (0.01,),
}

#: Position of the target's old mode and of the learner's initial new mode (docs/science/studies.md section 5).
CHEN2025_TARGET_OLD_MEAN: float = -3.0
CHEN2025_INIT_NEW_MEAN: float = 0.5
#: Target new-mode positions of CRNC25's `simulation/sweep.py` (mean_dist figure; section 4).
CHEN2025_SWEEP_NEW_MODE_POSITIONS: tuple[float, ...] = (4.5, 5.5, 6.5)

#: The CRNC25 TwoModeSetting as a flat dict (docs/science/studies.md section 5). Every key is a Setup or Hyper
#: field name except `learning_rates`, the default learning rate per objective (FKL 0.15,
#: RKL 0.01); `objective` and `learning_rate` here are the first FKL panel (lr 0.15).
CHEN2025: dict[str, object] = dict(
    # Setup (static)
    objective="chen2025_fkl",
    estimator="score",  # ignored by the chen2025 estimators (always Monte Carlo)
    sampling="ancestral",
    dim=1,
    batch_size=1000,  # NUM_SAMPLES
    steps=200,  # NUM_ITERS
    log_every=1,  # their metrics are recorded every iteration
    weight_param="direct",  # pi_1 learned directly, clipped
    optimizer="sgd",
    train_weight=True,
    train_old_mean=True,
    train_new_mean=True,
    train_scales=True,
    weight_clip=1e-3,
    scale_min=1e-3,
    overlap_grid=(-8.0, 8.0, 500),  # X_MIN, X_MAX, N_X
    # Hyper (traced)
    separation=6.5,  # target new mean -3.0 + 6.5 * 1.0 = 3.5
    target_old_weight=0.75,
    target_old_mean=CHEN2025_TARGET_OLD_MEAN,
    target_old_scale=1.0,
    target_new_scale=0.7,
    init_old_weight=0.75,  # PI1
    init_old_offset=-0.5,  # MU1 = -3.5
    init_new_offset=-3.0,  # MU2 = 0.5
    init_old_scale=1.0,  # SIG1
    init_new_scale=0.7,  # SIG2
    replay_ratio=0.0,  # FKL samples the target's new component only
    learning_rate=0.15,
    old_lr_scale=0.005,  # SLOW_FACTOR on (pi_1, mu_1, s_1)
    new_lr_scale=1.0,
    reward_temperature=0.1,  # REINFORCE_BETA
    # per-objective default learning rates (not a field)
    learning_rates={name: rates[0] for name, rates in CHEN2025_LEARNING_RATES.items()},
)


def chen2025_setup_and_hyper(
    objective: str,
    learning_rate: float | None = None,
    seeds: Sequence[int] | int = (0,),
    new_mode_position: float | None = None,
) -> tuple[Setup, Hyper]:
    """The CRNC25 TwoModeSetting (docs/science/studies.md section 5) as a (Setup, batched Hyper) pair.

    Args:
        objective: `chen2025_fkl` (their `fit_forward_kl`) or `chen2025_rkl` (their
            `fit_reinforce`, the surrogate REINFORCE of section 5).
        learning_rate: defaults to the objective's first CRNC25 rate (FKL 0.15, RKL 0.01).
        seeds: one configuration per seed (the leading axis of every Hyper leaf).
        new_mode_position: the target new mode's mean (CRNC25 `sweep.py` uses 4.5, 5.5, 6.5;
            default 3.5). The learner's initial new mean stays at 0.5 in absolute position, i.e.
            separation = position + 3.0 and init_new_offset = 0.5 - position.

    Returns:
        `(setup, hyper)` ready for `forget_jax.simulate(setup, hyper)`; metrics are logged at
        every step 0..200, so CRNC25's per-iteration lists correspond to `[..., 1:]`.
    """
    if objective not in CHEN2025_LEARNING_RATES:
        raise ValueError(f"objective must be one of {sorted(CHEN2025_LEARNING_RATES)}, got {objective!r}")
    lr = CHEN2025_LEARNING_RATES[objective][0] if learning_rate is None else float(learning_rate)
    setup_values = {k: v for k, v in CHEN2025.items() if k in fields.names("static")}
    setup_values["objective"] = objective
    setup = Setup(**setup_values)

    hyper_values: dict[str, Any] = {k: v for k, v in CHEN2025.items() if k in fields.names("traced")}
    hyper_values["learning_rate"] = lr
    if new_mode_position is not None:
        hyper_values["separation"] = (new_mode_position - CHEN2025_TARGET_OLD_MEAN) / hyper_values["target_old_scale"]
        hyper_values["init_new_offset"] = CHEN2025_INIT_NEW_MEAN - new_mode_position
    hyper_values["seed"] = np.atleast_1d(np.asarray(seeds, dtype=np.int64))
    return setup, make_hyper(setup.dtype, **hyper_values)


def chen2025_config(objective: str) -> dict[str, object]:
    """CRNC25's whole setting as configuration values for `objective` (`chen2025_fkl` or
    `chen2025_rkl`), with that objective's learning rate (FKL 0.15, RKL 0.01): the preset that
    config validation fills in for keys the user leaves unset."""
    values = {k: v for k, v in CHEN2025.items() if k != "learning_rates"}
    values["objective"] = objective
    values["learning_rate"] = CHEN2025_LEARNING_RATES[objective][0]
    return values
