"""Sweep configuration: a validated base configuration plus a `grid:` section.

The key names below are the public contract (issue "Sweep runner"). Validation is done by
pydantic on load, before anything runs; a bad field, type, range, unknown objective or typo'd key
is rejected with one line naming the field, the value and what is allowed (`ConfigError`).

A configuration splits into a static `Setup` (shapes / code: compile groups) and a traced `Hyper`
(numbers: vmapped); see spec.py.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .spec import HYPER_FIELDS, SETUP_FIELDS, Setup

class ConfigError(ValueError):
    """A user mistake in a configuration: one line naming the field, the value and what is allowed."""


class SimulationConfig(BaseModel):
    """One simulation configuration (every field has a documented default).

    Traced (vmapped, never recompiles): separation, target_*, init_*, replay_ratio, learning_rate,
    old_lr_scale, new_lr_scale, reward_temperature, seed, and the method numbers teacher_ema,
    teacher_anchor, sdft_demo_scale, sdft_is_cap, reward_width, reward_offset, reward_slope,
    entropic_eta, entropic_kl_budget, kl_penalty, oapl_lag, oapl_beta1, oapl_beta2. Static (each
    distinct value is a compile group): objective, estimator, sampling, dim, batch_size, steps,
    log_every, weight_param, optimizer, train_*, quadrature orders, clips, overlap_grid, x64, and
    the method structure sdft_conditioning, sdft_direction, sdft_demo, reward, adaptive_eta,
    group_size.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- objective and estimator (static)
    objective: Literal["fkl", "rkl", "chen2025_fkl", "chen2025_rkl", "sdft", "ttt_discover", "oapl"] = Field(
        "fkl", description="fkl (SFT) | rkl (on-policy RL) | chen2025_fkl | chen2025_rkl (CRNC25 preset) | "
        "sdft | ttt_discover | oapl (methods.md A-C, theory.md T7-T9)"
    )
    estimator: Literal["population", "pathwise", "score"] = Field(
        "population", description="population (exact expectation) | pathwise | score (Monte Carlo)"
    )
    sampling: Literal["ancestral", "stratified"] = Field("ancestral", description="component labels drawn from the weight, or every component in every batch")
    dim: int = Field(1, ge=1, le=4096, description="dimension d of x")
    batch_size: int = Field(64, ge=1, le=1_000_000, description="samples per step B (Monte Carlo estimators)")
    steps: int = Field(1000, ge=1, le=100_000_000, description="optimisation steps T")
    log_every: int = Field(10, ge=1, description="record metrics every k steps (must divide steps)")
    weight_param: Literal["logit", "direct", "replicator"] = Field("logit", description="old-weight update rule")
    optimizer: Literal["sgd", "adam"] = "sgd"
    adam_b1: float = Field(0.9, ge=0, lt=1)
    adam_b2: float = Field(0.999, ge=0, lt=1)
    adam_eps: float = Field(1e-8, gt=0)
    train_weight: bool = True
    train_old_mean: bool = True
    train_new_mean: bool = True
    train_scales: bool = False
    quadrature_order: int = Field(64, ge=4, le=512)
    metric_quadrature_order: int = Field(64, ge=4, le=512)
    weight_clip: float = Field(1e-3, gt=0, lt=0.5)
    scale_min: float = Field(1e-3, gt=0)
    overlap_grid: tuple[float, float, int] | None = None
    x64: bool = False
    # method structure (static; methods.md A-C)
    sdft_conditioning: Literal["anchor_component", "anchor_density", "bayes_icl"] = Field(
        "anchor_component", description="sdft teacher T = Cond(EMA student, demo at mu_n*): anchor_component | "
        "anchor_density ((1-a) q_phi + a p_c) | bayes_icl (posterior reweighting by the demo)")
    sdft_direction: Literal["reverse", "forward"] = Field(
        "reverse", description="sdft loss: reverse KL(q || T) (BK26's analysis) or forward KL(T || q) (SDFT's runs)")
    sdft_demo: Literal["new", "target"] = Field(
        "new", description="p_c of sdft_conditioning=anchor_density: p_new* (new) or p* (target)")
    reward: Literal["quadratic", "linear", "log_new"] = Field(
        "quadratic", description="ttt_discover / oapl reward: quadratic bump at mu_n* + reward_offset e_1 "
        "(width reward_width) | linear (reward_slope e_1 . y) | log_new (log p_new*)")
    adaptive_eta: bool = Field(True, description="ttt_discover: eta per group by bisection to "
                               "KL(softmax(eta r) || uniform) = entropic_kl_budget; false uses entropic_eta")
    group_size: int = Field(8, ge=2, le=1_000_000, description="ttt_discover / oapl: samples per group G "
                            "(batch_size = groups x G)")

    # --- traced numbers
    separation: float = Field(4.0, ge=0, le=1e3, description="Mahalanobis distance Delta between the target modes")
    target_old_weight: float = Field(0.5, gt=0, lt=1, description="beta* in (0, 1)")
    target_old_mean: float = 0.0
    target_old_scale: float = Field(1.0, gt=0)
    target_new_scale: float = Field(1.0, gt=0)
    init_old_weight: float = Field(0.5, gt=0, lt=1, description="beta(0) in (0, 1)")
    init_old_offset: float = Field(0.0, description="m_o(0) - mu_o* along the separation axis")
    init_new_offset: float = Field(-1.0, description="m_n(0) - mu_n* along the separation axis")
    init_old_scale: float = Field(1.0, gt=0)
    init_new_scale: float = Field(1.0, gt=0)
    replay_ratio: float = Field(0.0, ge=0, lt=1, description="lambda in [0, 1)")
    learning_rate: float = Field(0.05, gt=0, le=1e6)
    old_lr_scale: float = Field(1.0, ge=0, description="learning-rate multiplier of the old group (CRNC25: 0.005)")
    new_lr_scale: float = Field(1.0, ge=0)
    reward_temperature: float = Field(0.1, gt=0, description="CRNC25 REINFORCE_BETA")
    # method numbers (traced; methods.md A-C)
    teacher_ema: float = Field(0.01, ge=0, le=1, description="sdft: EMA rate alpha_ema of the teacher weights (paper 0.01)")
    teacher_anchor: float = Field(0.1, ge=0, le=1, description="sdft: anchor strength a (anchor_component / anchor_density)")
    sdft_demo_scale: float = Field(1.0, ge=0, description="sdft bayes_icl: demo noise tau_c in rho_k = N(c; m_k, s^2 + tau_c^2)")
    sdft_is_cap: float = Field(2.0, gt=0, description="sdft forward Monte Carlo: cap C of the weights min(T/q, C)")
    reward_width: float = Field(1.0, gt=0, description="quadratic reward width rho")
    reward_offset: float = Field(0.0, description="quadratic reward centre mu_R - mu_n* along e_1")
    reward_slope: float = Field(1.0, description="linear reward w = reward_slope e_1")
    entropic_eta: float = Field(2.0, gt=0, le=1e6, description="ttt_discover: fixed eta (adaptive_eta=false)")
    entropic_kl_budget: float = Field(0.6931471805599453, gt=0, description="ttt_discover: adaptive-eta KL budget (ln 2)")
    kl_penalty: float = Field(0.0, ge=0, description="ttt_discover: lambda of the KL penalty to q_ref = theta(0)")
    oapl_lag: float = Field(10.0, ge=1, le=1e9, description="oapl: steps L between syncs of the lagged policy (an integer)")
    oapl_beta1: float = Field(1.0, gt=0, description="oapl: temperature beta_1 of V_hat = beta_1 log mean exp(r / beta_1)")
    oapl_beta2: float = Field(1.0, gt=0, description="oapl: KL coefficient beta_2 of the regression (code: 1e-3)")

    # --- sweep bookkeeping
    seeds: int = Field(1, ge=1, le=1_000_000, description="number of seeds (a count): seeds seed_offset .. seed_offset+seeds-1")
    seed_offset: int = Field(0, ge=0, le=2**31 - 1_000_001)
    name: str = "sweep"
    description: str = ""
    grid: dict[str, Any] = Field(default_factory=dict, description="field -> list | {linspace: [a, b, n]} | {logspace: [a, b, n]}")

    @field_validator("overlap_grid")
    @classmethod
    def _check_overlap_grid(cls, v):
        if v is not None and not (v[0] < v[1] and v[2] >= 2):
            raise ValueError("must be [lo, hi, n] with lo < hi and n >= 2")
        return v

    @model_validator(mode="after")
    def _check_combination(self):
        if self.steps % self.log_every:
            raise ValueError(f"log_every={self.log_every} must divide steps={self.steps}")
        if self.objective == "rkl" and self.replay_ratio > 0 and self.estimator == "pathwise":
            raise ValueError(
                f"replay_ratio={self.replay_ratio} under objective=rkl with estimator='pathwise' is not allowed: "
                "needs estimator=score or population "
                "(a replayed sample is not a function of theta, so the pathwise estimator cannot use it; T6)"
            )
        if self.objective == "rkl" and self.replay_ratio > 0 and self.estimator == "score" and self.sampling == "stratified":
            raise ValueError("replay_ratio > 0 under objective=rkl needs sampling=ancestral (replay is a proposal for ancestral sampling)")
        if self.dim > 1 and (self.train_scales or self.target_old_scale != self.target_new_scale
                             or self.init_old_scale != self.target_old_scale or self.init_new_scale != self.target_old_scale):
            scales = ", ".join(f"{k}={getattr(self, k)}" for k in (
                "train_scales", "target_old_scale", "target_new_scale", "init_old_scale", "init_new_scale"))
            raise ValueError(f"dim={self.dim} > 1 needs equal, fixed component scales "
                             f"(train_scales=false, all scales equal); got {scales}")
        if self.estimator == "population" and self.objective.startswith("chen2025"):
            raise ValueError(f"objective={self.objective} is a Monte Carlo estimator; use estimator=score or pathwise")
        if self.objective in ("sdft", "ttt_discover", "oapl") and self.replay_ratio > 0:
            raise ValueError(f"replay_ratio={self.replay_ratio} has no meaning under objective={self.objective} "
                             "(replay is defined for fkl / rkl only); set replay_ratio=0")
        if self.objective in ("ttt_discover", "oapl"):
            if self.estimator == "pathwise":
                raise ValueError(f"estimator='pathwise' is not allowed under objective={self.objective}: "
                                 "needs estimator=score or population (a policy-gradient / regression loss on samples)")
            if self.estimator != "population" and self.sampling == "stratified":
                raise ValueError(f"sampling='stratified' is not allowed under objective={self.objective}: "
                                 "groups are drawn on-policy (sampling=ancestral)")
            if self.estimator != "population" and self.batch_size % self.group_size:
                raise ValueError(f"group_size={self.group_size} must divide batch_size={self.batch_size} "
                                 f"under objective={self.objective} (batch = groups x group_size)")
        if not float(self.oapl_lag).is_integer():
            raise ValueError(f"oapl_lag={self.oapl_lag} must be a whole number of steps")
        return self

    # -----------------------------------------------------------------------------------------
    def setup(self) -> Setup:
        return Setup(**{k: getattr(self, k) for k in SETUP_FIELDS if k != "overlap_grid"},
                     overlap_grid=tuple(self.overlap_grid) if self.overlap_grid is not None else None)

    def hyper_values(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in HYPER_FIELDS if k != "seed"}


BASE_FIELDS = tuple(k for k in SimulationConfig.model_fields if k not in ("grid",))
GRIDDABLE = tuple(k for k in BASE_FIELDS if k not in ("seeds", "seed_offset", "name", "description"))
STATIC_FIELDS = tuple(k for k in SETUP_FIELDS)
TRACED_FIELDS = tuple(k for k in HYPER_FIELDS if k != "seed")
#: Objectives of the issue that are designed but not implemented yet (sdft, ttt_discover and oapl,
#: theory.md T7-T9, are implemented: objectives/sdft.py, ttt_discover.py, oapl.py).
CROSS_FIELDS = frozenset({
    "steps", "log_every", "objective", "replay_ratio", "estimator", "sampling", "dim", "train_scales",
    "target_old_scale", "target_new_scale", "init_old_scale", "init_new_scale", "batch_size", "group_size",
})


def _format_error(err: ValidationError, prefix: str = "") -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    field = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "config"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        allowed = ", ".join(sorted(BASE_FIELDS + ("grid",)))
        import difflib

        close = difflib.get_close_matches(str(e["loc"][-1]), BASE_FIELDS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown key '{field}'{hint}; allowed keys: {allowed}"
    value = e.get("input")
    if e["type"] == "literal_error":
        return f"{field}={value!r} is not allowed: {msg}"
    if isinstance(value, dict) and e["loc"] == ():
        return f"{msg}"
    return f"{field}={value!r}: {msg}"


def _expand_axis(name: str, spec: Any) -> list:
    """A grid axis: a list, a scalar, or {linspace: [a, b, n]} / {logspace: [a, b, n]} (numpy semantics,
    logspace endpoints are exponents of 10)."""
    if isinstance(spec, dict):
        if len(spec) != 1 or next(iter(spec)) not in ("linspace", "logspace"):
            raise ConfigError(f"grid.{name}={spec!r}: a range must be {{linspace: [a, b, n]}} or {{logspace: [a, b, n]}}")
        kind, args = next(iter(spec.items()))
        if not (isinstance(args, (list, tuple)) and len(args) == 3 and float(args[2]).is_integer() and int(args[2]) >= 1):
            raise ConfigError(f"grid.{name}.{kind}={args!r}: needs [start, stop, count] with an integer count >= 1")
        values = getattr(np, kind)(float(args[0]), float(args[1]), int(args[2]))
        return [float(v) for v in values]
    if isinstance(spec, (list, tuple)):
        if len(spec) == 0:
            raise ConfigError(f"grid.{name}: an empty list gives an empty sweep; give at least one value")
        return list(spec)
    return [spec]


class SweepSpec:
    """A validated sweep: base config, grid axes (name -> values) and the seed axis.

    Axes are ordered static fields first, then traced ones (each in the order written), then
    `seed`, so every compile group and every work block is a rectangle of the grid.
    """

    def __init__(self, base: SimulationConfig, axes: dict[str, list]):
        self.base = base
        static = [k for k in axes if k in STATIC_FIELDS]
        traced = [k for k in axes if k not in STATIC_FIELDS]
        self.axes: dict[str, list] = {k: axes[k] for k in static + traced}
        self.seeds = list(range(base.seed_offset, base.seed_offset + base.seeds))

    @property
    def dims(self) -> tuple[str, ...]:
        return (*self.axes, "seed")

    @property
    def shape(self) -> tuple[int, ...]:
        return (*(len(v) for v in self.axes.values()), len(self.seeds))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def point(self, index: tuple[int, ...]) -> SimulationConfig:
        return self.with_values({k: v[i] for (k, v), i in zip(self.axes.items(), index[:-1])})

    def with_values(self, values: dict) -> SimulationConfig:
        """The base configuration with some fields replaced (validated)."""
        plain = {k: (v.item() if hasattr(v, "item") else v) for k, v in values.items()}
        return SimulationConfig.model_validate({**self.base.model_dump(), **plain})

    def to_yaml(self) -> str:
        data = self.base.model_dump(mode="json")
        data["grid"] = self.base.grid
        return yaml.safe_dump(data, sort_keys=False)


def chen2025_defaults(objective: str) -> dict:
    """CRNC25's whole setting (presets.CHEN2025, theory.md section 5) as config values, with that
    objective's learning rate (FKL 0.15, RKL 0.01); keys the user sets win."""
    from .presets import CHEN2025

    values = {k: v for k, v in CHEN2025.items() if k in BASE_FIELDS}
    values["objective"] = objective
    values["learning_rate"] = CHEN2025["learning_rates"][objective]
    return values


def _apply_preset(raw: dict) -> dict:
    objective = raw.get("objective")
    if isinstance(objective, str) and objective.startswith("chen2025"):
        _check_preset_grid(raw, objective)
        return {**chen2025_defaults(objective), **raw}
    return raw


def _check_preset_grid(raw: dict, objective: str) -> None:
    """The preset's learning rate follows the top-level objective only: a grid over chen2025
    objectives with different CRNC25 rates would silently run them at the wrong rate."""
    from .presets import CHEN2025

    grid = raw.get("grid")
    if not isinstance(grid, dict) or "objective" not in grid or "learning_rate" in raw or "learning_rate" in grid:
        return
    values = grid["objective"] if isinstance(grid["objective"], (list, tuple)) else [grid["objective"]]
    rates = CHEN2025["learning_rates"]
    others = [v for v in values if isinstance(v, str) and v in rates and rates[v] != rates[objective]]
    if others:
        raise ConfigError(
            f"grid.objective={list(values)!r}: the chen2025 preset takes learning_rate from the top-level "
            f"objective ({objective}: {rates[objective]}), so {others[0]} would run at {rates[objective]} instead "
            f"of its {rates[others[0]]}; sweep one chen2025 objective per config (configs/chen2025.yaml, "
            "configs/chen2025_rkl.yaml) or set learning_rate explicitly")


def load_config(source: str | Path | dict) -> SweepSpec:
    """Parse, fill defaults, apply presets, validate every grid value and combination.

    Raises ConfigError (a one-line message) on any mistake.
    """
    if isinstance(source, (str, Path)) and not isinstance(source, dict):
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    else:
        raw = dict(source)
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of keys to values, got {type(raw).__name__}")
    raw = _apply_preset(raw)
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"grid={grid!r}: must be a mapping field -> list or range")
    for key in grid:
        if key not in GRIDDABLE:
            import difflib

            close = difflib.get_close_matches(str(key), GRIDDABLE, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"grid key '{key}' is not a griddable field{hint}; allowed: {', '.join(GRIDDABLE)}")
    # presets keyed by objective inside a grid: static objective axis with chen2025 values is not mixed
    try:
        base = SimulationConfig(**{**raw, "grid": grid})
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None
    axes = {k: _expand_axis(k, v) for k, v in grid.items()}
    dumped = base.model_dump()
    # validate each value of each axis, then every combination (cross-field rules)
    for k, values in axes.items():
        checked = []
        for v in values:
            try:
                checked.append(getattr(SimulationConfig.model_validate({**dumped, k: v}), k))
            except ValidationError as err:
                raise ConfigError(_format_error(err, prefix="grid.") + f" (grid.{k} value {v!r})") from None
        axes[k] = checked
    spec = SweepSpec(base, axes)
    # cross-field rules only involve these fields: check every combination of their grid axes
    combo_axes = [(k, v) for k, v in spec.axes.items() if k in CROSS_FIELDS]
    for combo in itertools.product(*(v for _, v in combo_axes)):
        update = {k: v for (k, _), v in zip(combo_axes, combo)}
        try:
            SimulationConfig.model_validate({**dumped, **update})
        except ValidationError as err:
            where = ", ".join(f"{k}={v!r}" for k, v in update.items())
            raise ConfigError(f"{_format_error(err)} (at grid point {where})") from None
    return spec
