"""Checks of a sweep's starting values before anything runs: grid points whose start is a
symmetric point of the dynamics, where the learner cannot show what the theory says.

The learner starts at theta(0) (`model.init_params`, docs/science/model.md section 1):
beta(0) = init_old_weight, m_o(0) = mu_o* + init_old_offset e_1, m_n(0) = mu_n* + init_new_offset e_1
with mu_n* = mu_o* + Delta s_o* e_1, and scales s_o(0), s_n(0). Two starts are flagged:

* **Coincident components**: m_o(0) = m_n(0) and s_o(0) = s_n(0). Then q_theta does not depend on
  beta (the weight gradient is exactly 0, for every objective and estimator) and the two means
  receive the same gradient up to the factor beta / (1 - beta): with beta(0) = 1/2 (or Adam,
  which removes the factor) they move as one for ever and beta stays at beta(0). The old
  quickstart (init_new_offset = -1 at Delta = 1) showed beta = 0.500 at every replay ratio.
* **Mirror-symmetric start** (exact, population estimator; `fkl` and `rkl`): the training
  distribution is symmetric about a point c on e_1 (FKL's p_lambda at lambda = 0 about mu_n*, at
  lambda = 1 about mu_o*, at lambda = 1/2 with s_o* = s_n* about the midpoint; RKL's p* with
  beta* = 1/2 and s_o* = s_n* about the midpoint), beta(0) = 1/2, s_o(0) = s_n(0) and
  (m_o(0) + m_n(0)) / 2 = c. The reflection x -> 2c - x followed by the label swap maps this start
  to itself, so beta stays at 1/2 exactly.

`start_warnings(spec)` evaluates `model.init_params` (vmapped) once per distinct combination of
the grid values that enter the start, not per configuration, and returns one line per problem.
"""

from __future__ import annotations

import itertools

import numpy as np

from .. import fields
from ..config import SweepSpec

__all__ = ["start_warnings"]

#: Fields that enter theta(0) and the target geometry (model.init_params, model.target_mixture).
START_FIELDS = (
    "target_old_mean",
    "separation",
    "target_old_scale",
    "target_new_scale",
    "target_old_weight",
    "init_old_offset",
    "init_new_offset",
    "init_old_scale",
    "init_new_scale",
    "init_old_weight",
)
#: Further fields that decide whether the training distribution is mirror-symmetric.
MIRROR_FIELDS = ("replay_ratio", "objective", "estimator", "learner_modes")
#: Relative tolerance (in units of s_o*) for "the same point": float32 rounding of offsets and
#: separations of order 10 is ~1e-6; a start closer than this cannot leave the symmetric set
#: within a run.
REL_TOL = 1e-5
#: Examples named per problem before the line is cut short.
EXAMPLES = 3


def _mesh(spec: SweepSpec, names: tuple[str, ...]) -> tuple[list[str], dict[str, np.ndarray]]:
    """The distinct combinations of the gridded fields among `names` (others at their base value)."""
    gridded = [k for k in spec.axes if k in names]
    combos = list(itertools.product(*(spec.axes[k] for k in gridded))) or [()]
    values = {k: np.asarray([getattr(spec.base, k)] * len(combos), dtype=object) for k in names}
    for i, k in enumerate(gridded):
        values[k] = np.asarray([c[i] for c in combos], dtype=object)
    return gridded, values


def _start(spec: SweepSpec, values: dict[str, np.ndarray]):
    """theta(0) and the target p* per combination: `model.init_params` and `model.target_mixture`
    vmapped over the traced start fields (float64 host numbers where x64 is off)."""
    import jax

    from .. import model
    from ..spec import make_hyper

    setup = spec.base.setup().replace(dim=1)  # the offsets lie along e_1: one coordinate says all
    traced = {k: np.asarray(values[k], dtype=np.float64) for k in START_FIELDS if k in fields.names("traced")}
    hyper = make_hyper(dtype=setup.dtype, **traced)

    def start(h):
        theta = model.init_params(h, setup)
        return theta, model.old_weight(theta, setup), model.target_mixture(h, setup)

    theta, beta0, target = jax.vmap(start)(hyper)
    as_np = lambda a: np.asarray(a, dtype=np.float64)
    return (
        as_np(beta0),
        as_np(theta.old_mean)[:, 0],
        as_np(theta.new_mean)[:, 0],
        as_np(theta.old_scale),
        as_np(theta.new_scale),
        target,
    )


def _where(gridded: list[str], values: dict[str, np.ndarray], index: int) -> str:
    if not gridded:
        return "every grid point"
    return "grid point " + ", ".join(f"{k}={values[k][index]}" for k in gridded)


def _lines(gridded, values, hits: np.ndarray, problem) -> list[str]:
    """One line per hit, or one line for all of them past EXAMPLES; problem(i) describes hit i."""
    hits = np.flatnonzero(hits)
    if len(hits) == 0:
        return []
    if len(hits) <= EXAMPLES:
        return [f"{_where(gridded, values, int(i))}: {problem(i)}" for i in hits]
    shown = "; ".join(_where(gridded, values, int(i)).removeprefix("grid point ") for i in hits[:EXAMPLES])
    return [f"{len(hits)} grid points (e.g. {shown}): {problem(hits[0])}"]


def start_warnings(spec: SweepSpec) -> list[str]:
    """One line per grid point (or per group of them) whose start is a symmetric point of the
    dynamics: coincident components, or a mirror-symmetric start (module docstring).

    Args:
        spec: a validated sweep (config.load_config).

    Returns:
        Warning lines, empty when every grid point starts off the symmetric sets. More than
        `EXAMPLES` points with one problem are reported on one line ("N grid points, e.g. ...").
    """
    two_modes = lambda v: np.asarray([int(m) == 2 for m in v["learner_modes"]])
    warnings: list[str] = []

    gridded, values = _mesh(spec, (*START_FIELDS, "learner_modes"))
    beta0, m_o, m_n, s_o, s_n, target = _start(spec, values)
    unit = np.abs(np.asarray(target.old_scale, np.float64))
    same = (np.abs(m_o - m_n) <= REL_TOL * unit) & (np.abs(s_o - s_n) <= REL_TOL * unit) & two_modes(values)
    warnings += _lines(
        gridded,
        values,
        same,
        lambda i: (
            "the old and new components start at the same point (init_old_offset="
            f"{values['init_old_offset'][i]}, init_new_offset={values['init_new_offset'][i]}): q does not "
            "depend on beta there and both means get the same gradient, so with beta(0) = 1/2 (or Adam) they "
            "stay locked by symmetry and beta never moves; change init_new_offset (e.g. > 0: the new "
            "component starts beyond its target)"
        ),
    )

    gridded, values = _mesh(spec, (*START_FIELDS, *MIRROR_FIELDS))
    beta0, m_o, m_n, s_o, s_n, target = _start(spec, values)
    unit = np.abs(np.asarray(target.old_scale, np.float64))
    mu_o, mu_n = np.asarray(target.old_mean, np.float64)[:, 0], np.asarray(target.new_mean, np.float64)[:, 0]
    equal_targets = np.abs(np.asarray(target.old_scale, np.float64) - np.asarray(target.new_scale, np.float64)) <= (
        REL_TOL * unit
    )
    lam = np.asarray(values["replay_ratio"], np.float64)
    target_beta = np.asarray(target.old_weight, np.float64)
    objective, estimator = values["objective"].astype(str), values["estimator"].astype(str)
    centre = np.full(len(lam), np.nan)
    fkl = (objective == "fkl") & (estimator == "population")
    rkl = (objective == "rkl") & (estimator == "population")
    centre = np.where(fkl & (lam == 0.0), mu_n, centre)
    centre = np.where(fkl & (lam == 1.0), mu_o, centre)
    centre = np.where(fkl & (lam == 0.5) & equal_targets, 0.5 * (mu_o + mu_n), centre)
    centre = np.where(rkl & (target_beta == 0.5) & equal_targets, 0.5 * (mu_o + mu_n), centre)
    mirror = (
        np.isfinite(centre)
        & (np.abs(beta0 - 0.5) <= REL_TOL)
        & (np.abs(s_o - s_n) <= REL_TOL * unit)
        & (np.abs(0.5 * (m_o + m_n) - np.nan_to_num(centre)) <= REL_TOL * unit)
        & ~(np.abs(m_o - m_n) <= REL_TOL * unit)  # coincident starts are reported above
        & two_modes(values)
    )
    warnings += _lines(
        gridded,
        values,
        mirror,
        lambda i: (
            "beta(0) = 1/2 and the two components start as mirror images about the centre of the training "
            f"distribution (m_o(0) + m_n(0) = 2c, c = {centre[i]:.6g}): reflection plus label swap maps the start "
            "to itself, so beta stays at 1/2 exactly; change init_new_offset or init_old_weight"
        ),
    )
    return warnings
