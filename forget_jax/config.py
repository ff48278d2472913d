"""Sweep configuration: a validated base configuration plus a `grid:` section.

The key names below are the public contract (issue "Sweep runner"). Validation is done by
pydantic on load, before anything runs; a bad field, type, range, unknown objective or typo'd key
is rejected with one line naming the field, the value and what is allowed (`ConfigError`).

A configuration splits into a static `Setup` (shapes / code: compile groups) and a traced `Hyper`
(numbers: vmapped); see spec.py.
"""

from __future__ import annotations

import difflib
import itertools
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from . import fields, objectives
from .spec import Setup


class ConfigError(ValueError):
    """A user mistake in a configuration: one line naming the field, the value and what is allowed."""


class ConfigBase(BaseModel):
    """Base of the configuration model: the fields themselves come from the field table
    (`config_model` adds one pydantic field per declared field, with its bounds and choices), and
    every cross-field rule of the table is checked after the fields."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    grid: dict[str, Any] = Field(
        default_factory=dict, description="field -> list | {linspace: [a, b, n]} | {logspace: [a, b, n]}"
    )

    @model_validator(mode="after")
    def _check_rules(self):
        problems = fields.violations(self.model_dump())
        if problems:
            raise ValueError(problems[0])
        return self

    if TYPE_CHECKING:  # the fields are added by `config_model` from the field table

        def __getattr__(self, name: str) -> Any: ...

    def setup(self) -> Setup:
        """The static fields as a `Setup` (one compile group)."""
        return Setup(**{k: getattr(self, k) for k in fields.names("static")})

    def hyper_values(self) -> dict[str, float]:
        """The traced fields (everything `make_hyper` takes but the seed)."""
        return {k: getattr(self, k) for k in fields.names("traced")}


def _whole(name: str):
    def check(v: float) -> float:
        if not float(v).is_integer():
            raise ValueError(f"{name}={v} must be a whole number")
        return v

    return check


def _pydantic_field(f: fields.Field) -> tuple[Any, Any]:
    annotation: Any
    if f.choices is not None:
        annotation = Literal[f.choices]
    elif f.type is tuple:
        annotation = tuple[float, float, int]
    else:
        annotation = f.type
    if f.whole:
        annotation = Annotated[annotation, AfterValidator(_whole(f.name))]
    if f.nullable:
        annotation = annotation | None
    bounds = {k: getattr(f, k) for k in ("ge", "gt", "le", "lt") if getattr(f, k) is not None}
    return annotation, Field(f.default, description=f.doc, **bounds)


_MODELS: dict[int, type[ConfigBase]] = {}


def config_model() -> type[ConfigBase]:
    """The pydantic model of one simulation configuration, derived from the field table (rebuilt
    when an objective registers new fields)."""
    version = fields.version()
    if version not in _MODELS:
        _MODELS.clear()
        definitions = {k: _pydantic_field(f) for k, f in fields.all_fields().items()}
        _MODELS[version] = create_model("SimulationConfig", __base__=ConfigBase, **definitions)  # type: ignore[call-overload]
    return _MODELS[version]


def base_fields() -> tuple[str, ...]:
    """Every top-level key but `grid`."""
    return tuple(fields.all_fields())


def griddable_fields() -> tuple[str, ...]:
    """The keys a `grid:` may sweep: every static and traced field."""
    return (*fields.names("static"), *fields.names("traced"))


def __getattr__(name: str):
    """Derived views kept under their former names (`SimulationConfig`, `STATIC_FIELDS`, ...)."""
    views = {
        "SimulationConfig": config_model,
        "BASE_FIELDS": base_fields,
        "GRIDDABLE": griddable_fields,
        "STATIC_FIELDS": lambda: fields.names("static"),
        "TRACED_FIELDS": lambda: fields.names("traced"),
        "CROSS_FIELDS": fields.cross_fields,
    }
    if name in views:
        return views[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _format_error(err: ValidationError, prefix: str = "") -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    field = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "config"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        allowed = ", ".join(sorted((*base_fields(), "grid")))
        close = difflib.get_close_matches(str(e["loc"][-1]), base_fields(), n=1)
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
            raise ConfigError(
                f"grid.{name}={spec!r}: a range must be {{linspace: [a, b, n]}} or {{logspace: [a, b, n]}}"
            )
        kind, args = next(iter(spec.items()))
        if not (
            isinstance(args, (list, tuple)) and len(args) == 3 and float(args[2]).is_integer() and int(args[2]) >= 1
        ):
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

    def __init__(self, base: ConfigBase, axes: dict[str, list]):
        self.base = base
        static_names = fields.names("static")
        static = [k for k in axes if k in static_names]
        traced = [k for k in axes if k not in static_names]
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

    def point(self, index: tuple[int, ...]) -> ConfigBase:
        return self.with_values({k: v[i] for (k, v), i in zip(self.axes.items(), index[:-1])})

    def with_values(self, values: dict) -> ConfigBase:
        """The base configuration with some fields replaced (validated)."""
        plain = {k: (v.item() if hasattr(v, "item") else v) for k, v in values.items()}
        return config_model().model_validate({**self.base.model_dump(), **plain})

    def to_yaml(self) -> str:
        data = self.base.model_dump(mode="json")
        data["grid"] = self.base.grid
        return yaml.safe_dump(data, sort_keys=False)


def _apply_preset(raw: dict) -> dict:
    """Fill in the preset of the top-level objective (e.g. CRNC25's setting) for unset keys."""
    name = raw.get("objective")
    objective = objectives.OBJECTIVES.get(name) if isinstance(name, str) else None
    if objective is None or objective.preset is None:
        return raw
    _check_preset_grid(raw, objective.name, objective.preset)
    return {**objective.preset, **raw}


def _check_preset_grid(raw: dict, top: str, preset) -> None:
    """A preset follows the top-level objective only: a grid over objectives whose presets differ
    on a key the user leaves unset (CRNC25's learning rates: FKL 0.15, RKL 0.01) would silently
    run them with the top-level preset's value."""
    grid = raw.get("grid")
    if not isinstance(grid, dict) or "objective" not in grid:
        return
    values = grid["objective"] if isinstance(grid["objective"], (list, tuple)) else [grid["objective"]]
    for other in values:
        o = objectives.OBJECTIVES.get(other) if isinstance(other, str) else None
        if o is None or o.preset is None or other == top:
            continue
        for key in sorted(set(preset) | set(o.preset)):
            if key in raw or key in grid or key == "objective" or preset.get(key) == o.preset.get(key):
                continue
            raise ConfigError(
                f"grid.objective={list(values)!r}: the {top} preset sets {key}={preset.get(key)!r}, so {other} would "
                f"run with it instead of its own {o.preset.get(key)!r}; sweep one preset objective per config "
                f"(configs/chen2025.yaml, configs/chen2025_rkl.yaml) or set {key} explicitly"
            )


def packaged_configs() -> Path:
    """The directory of the configurations shipped with forget-jax (`configs/` in the source tree
    is a link to it): quickstart.yaml, phase_fkl_rkl.yaml, chen2025*.yaml and reproduce/*.yaml."""
    from importlib.resources import files

    return Path(str(files("forget_jax") / "configs"))


def resolve_config_path(source: str | Path) -> Path:
    """A config path as given if it exists, else a configuration shipped with forget-jax of that
    name (`quickstart`, `quickstart.yaml`, `configs/quickstart.yaml`, `reproduce/pd1`)."""
    path = Path(source)
    if path.exists():
        return path
    shipped = packaged_configs()
    name = path.as_posix().removeprefix("configs/")
    for candidate in (shipped / name, shipped / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    available = ", ".join(sorted(p.stem for p in shipped.glob("*.yaml")))
    raise ConfigError(f"config file {str(path)!r} does not exist (configurations shipped with forget-jax: {available})")


def load_config(source: str | Path | dict) -> SweepSpec:
    """Parse, fill defaults, apply presets, validate every grid value and combination.

    Raises ConfigError (a one-line message) on any mistake.
    """
    if isinstance(source, (str, Path)) and not isinstance(source, dict):
        path = resolve_config_path(source)
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
    griddable = griddable_fields()
    for key in grid:
        if key not in griddable:
            close = difflib.get_close_matches(str(key), griddable, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"grid key '{key}' is not a griddable field{hint}; allowed: {', '.join(griddable)}")
    model = config_model()
    try:
        base = model(**{**raw, "grid": grid})
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None
    axes = {k: _expand_axis(k, v) for k, v in grid.items()}
    dumped = base.model_dump()
    # validate each value of each axis, then every combination (cross-field rules)
    for k, values in axes.items():
        checked = []
        for v in values:
            try:
                checked.append(getattr(model.model_validate({**dumped, k: v}), k))
            except ValidationError as err:
                raise ConfigError(_format_error(err, prefix="grid.") + f" (grid.{k} value {v!r})") from None
        axes[k] = checked
    spec = SweepSpec(base, axes)
    # cross-field rules only involve these fields: check every combination of their grid axes
    cross = fields.cross_fields()
    combo_axes = [(k, v) for k, v in spec.axes.items() if k in cross]
    for combo in itertools.product(*(v for _, v in combo_axes)):
        update = {k: v for (k, _), v in zip(combo_axes, combo)}
        try:
            model.model_validate({**dumped, **update})
        except ValidationError as err:
            where = ", ".join(f"{k}={v!r}" for k, v in update.items())
            raise ConfigError(f"{_format_error(err)} (at grid point {where})") from None
    return spec
