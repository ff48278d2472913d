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
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
    model_validator,
)

from . import fields, items, objectives  # noqa: F401  (items and objectives declare fields)
from .pipeline import schedule
from .spec import Setup


class ConfigError(ValueError):
    """A user mistake in a configuration: one line naming the field, the value and what is allowed.

    Attributes:
        field: the dotted field it is about (`learning_rate`, `grid.separation`), or None; a config
            read from a file prefixes the message with `FILE:LINE` of that field.
    """

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(" ".join(str(message).split("\n")))
        self.field = field


#: Hard caps of the grid, independent of `limits.Limits` (those are checked before a run; these
#: protect the loader itself): values of one axis, and grid points x seeds. An axis written as
#: `{linspace: [a, b, n]}` is refused on `n` before any array is built.
MAX_AXIS_VALUES = 1_000_000
MAX_GRID_POINTS = 10**12
#: Nodes of a YAML document counted with every alias expanded (an alias bomb is refused before
#: it is built), and the nesting depth.
MAX_YAML_NODES = 1_000_000


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
        """The static fields as a `Setup` (one compile group; a pipeline's stages keep their static
        structure only, `schedule.freeze`)."""
        return Setup(**{k: getattr(self, k) for k in fields.names("static")})

    def hyper_values(self) -> dict[str, float]:
        """The traced fields (everything `make_hyper` takes but the seed); for a pipeline also each
        stage's value of every traced field as `stages.<i>.<field>` (the stage's own value, else
        the top-level one)."""
        values = {k: getattr(self, k) for k in fields.names("traced")}
        for i, stage in enumerate(self.stages or ()):
            for name in fields.names("traced"):
                values[schedule.traced_name(i, name)] = stage.get(name, values[name])
        return values


def _whole(name: str):
    def check(v: float) -> float:
        if not float(v).is_integer():
            raise ValueError(f"{name}={v} must be a whole number")
        return v

    return check


def _type_name(v: Any) -> str:
    return type(v).__name__


def _strict(f: fields.Field):
    """No coercion across types: a bool is not a number, a string is not a number (YAML `"20"`),
    a number is not a bool or a string. An int is a float; a whole float (`1e8`, `20.0`) is an int;
    numpy scalars count as the Python number they hold."""
    integer = f.type is int

    def number(v: Any, what: str) -> Any:
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"Input should be a valid {what}, got {_type_name(v)}")
        return v

    def check(v: Any) -> Any:
        if v is None and f.nullable:
            return v
        if f.type is bool:
            if isinstance(v, np.bool_):
                v = bool(v)
            if not isinstance(v, bool):
                raise ValueError(f"Input should be true or false, got {_type_name(v)}")
            return v
        if f.type is str:
            if not isinstance(v, str):
                raise ValueError(f"Input should be a string, got {_type_name(v)}")
            return v
        if f.type is list:
            if isinstance(v, np.ndarray):
                v = v.tolist()
            if not isinstance(v, (list, tuple)):
                raise ValueError(f"Input should be a list, got {_type_name(v)}")
            return list(v)
        if f.type is tuple:
            if isinstance(v, np.ndarray):
                v = v.tolist()
            if not isinstance(v, (list, tuple)) or len(v) != 3:
                raise ValueError(f"Input should be a list [lo, hi, n], got {_type_name(v)}")
            items = [number(x, "number") for x in v]
            if not all(math.isfinite(x) for x in items):
                raise ValueError("Input should hold finite numbers")
            return tuple(items)
        v = number(v, "integer" if integer else "number")
        if integer and isinstance(v, float) and math.isfinite(v) and v.is_integer():
            return int(v)
        return float(v) if f.type is float and isinstance(v, int) else v

    return check


def _pattern(f: fields.Field):
    regex = re.compile(f.pattern or "")

    def check(v: str) -> str:
        if not regex.fullmatch(v):
            raise ValueError(f"not allowed: a {f.name} is {f.pattern_text or f.pattern}")
        return v

    return check


def _pydantic_field(f: fields.Field) -> tuple[Any, Any]:
    annotation: Any
    if f.choices is not None:
        annotation = Literal[f.choices]
    elif f.type is tuple:
        annotation = tuple[float, float, int]
    elif f.type is list:  # its items are checked by the owner (`stages`, `mode_positions`: _pipeline)
        annotation = list[Any]
    else:
        annotation = f.type
    validators: list[Any] = [BeforeValidator(_strict(f))]
    if f.whole:
        validators.append(AfterValidator(_whole(f.name)))
    if f.pattern is not None:
        validators.append(AfterValidator(_pattern(f)))
    annotation = Annotated[annotation, *validators]
    if f.nullable:
        annotation = annotation | None
    return annotation, Field(f.default, description=f.doc, **_bounds(f))


def _bounds(f: fields.Field) -> dict[str, Any]:
    bounds: dict[str, Any] = {k: getattr(f, k) for k in ("ge", "gt", "le", "lt") if getattr(f, k) is not None}
    if f.type is float:
        bounds["allow_inf_nan"] = False  # NaN / inf are refused in every float field
    return bounds


_MODELS: dict[int, type[ConfigBase]] = {}
_ADAPTERS: dict[tuple[int, str], TypeAdapter] = {}


def config_model() -> type[ConfigBase]:
    """The pydantic model of one simulation configuration, derived from the field table (rebuilt
    when an objective registers new fields)."""
    version = fields.version()
    if version not in _MODELS:
        _MODELS.clear()
        _ADAPTERS.clear()
        definitions = {k: _pydantic_field(f) for k, f in fields.all_fields().items()}
        _MODELS[version] = create_model("SimulationConfig", __base__=ConfigBase, **definitions)  # type: ignore[call-overload]
    return _MODELS[version]


def _field_adapter(name: str) -> TypeAdapter:
    """A validator of one field alone (its type, bounds, choices; no cross-field rules)."""
    key = (fields.version(), name)
    if key not in _ADAPTERS:
        config_model()
        f = fields.get(name)
        annotation, _ = _pydantic_field(f)
        _ADAPTERS[key] = TypeAdapter(Annotated[annotation, Field(**_bounds(f))])  # type: ignore[arg-type]
    return _ADAPTERS[key]


def base_fields() -> tuple[str, ...]:
    """Every top-level key but `grid`."""
    return tuple(fields.all_fields())


def griddable_fields(stages: int = 0) -> tuple[str, ...]:
    """The keys a `grid:` may sweep: every static and traced field but the `list` ones; with
    `stages` stages, also each stage's traced fields as `stages.<i>.<field>` (a stage's static
    fields define its program and are set in the stage itself)."""
    table = fields.all_fields()
    plain = tuple(k for k in (*fields.names("static"), *fields.names("traced")) if table[k].type is not list)
    if not stages:
        return plain
    per_stage = [k for k in schedule.stage_fields() if table[k].kind == "traced"]
    return (*plain, *(schedule.traced_name(i, k) for i in range(stages) for k in per_stage))


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


def _short(value: Any, width: int = 80) -> str:
    """repr of a value, cut to `width` characters (error messages stay one short line)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= width else text[: width - 5] + " ...]"


def _error_field(err: ValidationError, prefix: str = "") -> str:
    loc = ".".join(str(p) for p in err.errors()[0]["loc"])
    return f"{prefix}{loc}" if loc else prefix.rstrip(".") or "config"


def _format_error(err: ValidationError, prefix: str = "") -> str:
    e = err.errors()[0]
    field = _error_field(err, prefix)
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        allowed = ", ".join(sorted((*base_fields(), "grid")))
        close = difflib.get_close_matches(str(e["loc"][-1]), base_fields(), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown key '{field}'{hint}; allowed keys: {allowed}"
    value = e.get("input")
    if e["type"] == "literal_error":
        return f"{field}={_short(value)} is not allowed: {msg}"
    if isinstance(value, dict) and e["loc"] == ():
        return f"{msg}"
    return f"{field}={_short(value)}: {msg}"


def _rule_field(message: str, raw: Mapping[str, Any]) -> str | None:
    """The field a broken cross-field rule is about: of the rule's fields, the last one the user
    wrote (so a file error points at a line the user can change)."""
    for rule in fields.rules():
        if rule.check is not None and message == _rule_message(rule, raw):
            written = [k for k in rule.fields if k in raw]
            return (written or list(rule.fields))[-1]
    return None


def _rule_message(rule: fields.Rule, values: Mapping[str, Any]) -> str | None:
    try:
        return rule.check(values)
    except Exception:  # a rule on values that failed field validation
        return None


# ---------------------------------------------------------------------------------------------
# YAML: duplicate keys, alias bombs and the line of every key


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` / `1e8` as floats (YAML 1.2; PyYAML's 1.1 rules read them
    as strings, which strict validation would then refuse)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


class _Problem(Exception):
    def __init__(self, message: str, line: int | None = None, field: str | None = "config"):
        super().__init__(message)
        self.line, self.field = line, field


_MERGE = "tag:yaml.org,2002:merge"


def _check_nodes(root: yaml.Node) -> dict[str, int]:
    """Walk the composed document once (each node once; aliases are shared nodes): refuse
    duplicate mapping keys and documents whose alias-expanded size exceeds MAX_YAML_NODES (an
    alias bomb is refused here, before it is constructed), and return the line (1-based) of every
    mapping key by dotted path (`grid.separation`, `stores.x3.5.grid.learning_rate`, and a
    pipeline's `stages.1.task`)."""
    expanded: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in expanded:
            return expanded[key]
        if key in active:
            raise _Problem("a recursive alias (a node that contains itself)", node.start_mark.line + 1)
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != _MERGE:
                    line = k.start_mark.line + 1
                    if k.value in seen:
                        raise _Problem(f"duplicate key '{k.value}' (first at line {seen[k.value]})", line, k.value)
                    seen[k.value] = line
                total += size(k) + size(v)
        active.discard(key)
        expanded[key] = total
        if total > MAX_YAML_NODES:
            raise _Problem(
                f"the document expands to more than {MAX_YAML_NODES:,} values through its aliases (&anchor / "
                "*alias); write the values out or use {linspace: [a, b, n]}",
                node.start_mark.line + 1,
            )
        return total

    size(root)
    lines: dict[str, int] = {}

    def record(node: yaml.Node, prefix: str, depth: int) -> None:
        if depth > 4:
            return
        if isinstance(node, yaml.SequenceNode) and prefix == "stages.":  # a pipeline: stages.<i>.<key>
            for i, item in enumerate(node.value):
                lines.setdefault(f"{prefix}{i}", item.start_mark.line + 1)
                record(item, f"{prefix}{i}.", depth + 1)
            return
        if not isinstance(node, yaml.MappingNode):
            return
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.tag != _MERGE:
                path = f"{prefix}{k.value}"
                lines.setdefault(path, k.start_mark.line + 1)
                record(v, path + ".", depth + 1)

    record(root, "", 0)
    return lines


def read_yaml(path: str | Path) -> tuple[Any, dict[str, int]]:
    """Read one YAML document safely: (data, line of every mapping key by dotted path).

    Refused with a ConfigError naming the file (and line): a directory or unreadable path, bytes
    that are not UTF-8, an empty document, invalid YAML, a duplicate key, an alias bomb, nesting
    deeper than Python can compose. `1e-3` is a float (YAML 1.2)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a config file", field="config")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc.strerror or exc})", field="config") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); save the file as UTF-8",
            field="config",
        ) from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError(f"{path}: empty config (no keys); write at least one key, e.g. `steps: 1000`")
        lines = _check_nodes(node)
        return loader.construct_document(node), lines
    except _Problem as exc:
        where = f"{path}:{exc.line}" if exc.line is not None else str(path)
        raise ConfigError(f"{where}: {exc}", field=exc.field) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML ({_yaml_reason(exc)})", field="config") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_reason(exc)})", field="config") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a configuration", field="config") from None
    finally:
        loader.dispose()


def _yaml_reason(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = [p for p in (exc.context, exc.problem) if p]
        if parts:
            return "; ".join(parts)
    return str(exc).splitlines()[0]


def _locate(exc: ConfigError, path: Path, lines: Mapping[str, int]) -> ConfigError:
    """`exc` with `FILE:LINE: ` in front: the line of its field, or of the nearest enclosing key."""
    message = str(exc)
    if message.startswith(str(path)):
        return exc
    field = exc.field or ""
    line = None
    parts = field.split(".")
    while parts and line is None:
        line = lines.get(".".join(parts))
        parts.pop()
    where = f"{path}:{line}" if line is not None else str(path)
    return ConfigError(f"{where}: {message}", field=exc.field)


# ---------------------------------------------------------------------------------------------
# grid axes


def _plain(value: Any) -> Any:
    """numpy scalars and arrays, ranges and tuples as plain Python numbers and lists (a grid is
    stored as plain YAML)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, range):
        return list(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _real(name: str, kind: str, what: str, value: Any) -> float:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"grid.{name}.{kind}: {what}={_short(value)} must be a finite number", field=f"grid.{name}")
    return value


def _axis_spec(name: str, spec: Any) -> Any:
    """A grid axis as written, checked and made plain, without building it: a list of values (a
    scalar is a one-value list; numpy arrays, numpy scalars and ranges are accepted), or
    `{linspace: [a, b, n]}` / `{logspace: [a, b, n]}`. Refuses empty or null axes, malformed ranges
    and more than MAX_AXIS_VALUES values."""
    where = f"grid.{name}"
    if isinstance(spec, Mapping):
        if len(spec) != 1 or next(iter(spec)) not in ("linspace", "logspace"):
            raise ConfigError(
                f"{where}={_short(dict(spec))}: a range must be {{linspace: [a, b, n]}} or {{logspace: [a, b, n]}}",
                field=where,
            )
        kind, args = next(iter(spec.items()))
        if isinstance(args, np.ndarray):
            args = args.tolist()
        if not (isinstance(args, (list, tuple)) and len(args) == 3):
            raise ConfigError(
                f"{where}.{kind}={_short(args)}: needs [start, stop, count] with an integer count >= 1", field=where
            )
        start, stop = (_real(name, kind, w, a) for w, a in zip(("start", "stop"), args[:2]))
        count = args[2].item() if isinstance(args[2], np.generic) else args[2]
        if (
            isinstance(count, bool)
            or not isinstance(count, (int, float))
            or not math.isfinite(count)
            or not float(count).is_integer()
            or count < 1
        ):
            raise ConfigError(
                f"{where}.{kind}={_short(list(args))}: needs [start, stop, count] with an integer count >= 1",
                field=where,
            )
        if count > MAX_AXIS_VALUES:
            raise ConfigError(
                f"{where}.{kind}: count={count:g} values exceeds the cap of {MAX_AXIS_VALUES:,} values per axis",
                field=where,
            )
        if kind == "logspace" and max(abs(start), abs(stop)) > 300:
            raise ConfigError(
                f"{where}.logspace: exponents [{start:g}, {stop:g}] must lie in [-300, 300] (10^x is a float)",
                field=where,
            )
        return {kind: [start, stop, int(count)]}
    if spec is None:
        raise ConfigError(f"{where} has no values (null); give at least one value", field=where)
    if isinstance(spec, np.ndarray) and spec.ndim == 0:
        spec = spec.item()
    if isinstance(spec, np.ndarray) and spec.ndim > 1 and name != "overlap_grid":
        raise ConfigError(f"{where}: a numpy array of shape {spec.shape}; an axis is one-dimensional", field=where)
    if isinstance(spec, (list, tuple, range, np.ndarray)):
        if len(spec) == 0:
            raise ConfigError(f"{where}: an empty list gives an empty sweep; give at least one value", field=where)
        if len(spec) > MAX_AXIS_VALUES:
            raise ConfigError(
                f"{where}: {len(spec):,} values exceeds the cap of {MAX_AXIS_VALUES:,} values per axis", field=where
            )
        return _plain(spec)
    if isinstance(spec, (set, frozenset, Mapping)) or not isinstance(spec, (str, int, float, bool, np.generic)):
        raise ConfigError(
            f"{where}={_short(spec)}: an axis is a list of values, a single value or {{linspace: [a, b, n]}}",
            field=where,
        )
    return [_plain(spec)]


def _axis_length(spec: Any) -> int:
    if isinstance(spec, Mapping):
        return int(next(iter(spec.values()))[2])
    return len(spec)


def _expand_axis(name: str, spec: Any) -> list:
    """A grid axis: a list, a scalar, or {linspace: [a, b, n]} / {logspace: [a, b, n]} (numpy semantics,
    logspace endpoints are exponents of 10)."""
    spec = _axis_spec(name, spec)
    if isinstance(spec, Mapping):
        kind, (start, stop, count) = next(iter(spec.items()))
        return [float(v) for v in getattr(np, kind)(float(start), float(stop), int(count))]
    return list(spec)


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
        """The base configuration with some fields replaced (validated); `stages.<i>.<field>`
        replaces stage i's value."""
        plain = {k: _plain(v) for k, v in values.items() if schedule.split_name(k) is None}
        data = {**self.base.model_dump(), **plain}
        staged = {k: v for k, v in values.items() if schedule.split_name(k) is not None}
        if staged:
            data["stages"] = [dict(s) for s in data["stages"]]
            for k, v in staged.items():
                i, name = schedule.split_name(k)  # type: ignore[misc]
                data["stages"][i][name] = _plain(v)
        return config_model().model_validate(data)

    def to_yaml(self) -> str:
        data = self.base.model_dump(mode="json")
        data["grid"] = self.base.grid
        return yaml.safe_dump(data, sort_keys=False)


def _apply_preset(raw: dict) -> dict:
    """Fill in the preset of the top-level objective (e.g. CRNC25's setting) for unset keys."""
    _check_preset_grid(raw)
    name = raw.get("objective", fields.get("objective").default)
    objective = objectives.OBJECTIVES.get(name) if isinstance(name, str) else None
    if objective is None or objective.preset is None:
        return raw
    return {**objective.preset, **raw}


def _same(a: Any, b: Any) -> bool:
    """Equal values, a list and a tuple of the same items included."""
    return _plain(a) == _plain(b)


def _check_preset_grid(raw: dict) -> None:
    """A preset follows the top-level objective only: a grid value that is a preset objective
    (chen2025_*) under another top-level objective would run with the top-level objective's values
    (its preset, or the defaults) for every key the user leaves unset: CRNC25's learning rates (FKL
    0.15, RKL 0.01), or all 14 keys of CRNC25's setting under a top-level `fkl`. Refused unless
    the two agree on every such key."""
    grid = raw.get("grid")
    if not isinstance(grid, Mapping) or "objective" not in grid:
        return
    top = raw.get("objective", fields.get("objective").default)
    top_objective = objectives.OBJECTIVES.get(top) if isinstance(top, str) else None
    top_preset = (top_objective.preset if top_objective is not None else None) or {}
    axis = grid["objective"]
    values = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    table = fields.all_fields()
    for other in values:
        o = objectives.OBJECTIVES.get(other) if isinstance(other, str) else None
        if o is None or o.preset is None or other == top:
            continue
        differ = []
        for key in sorted(set(top_preset) | set(o.preset)):
            if key in raw or key in grid or key == "objective" or key not in table:
                continue
            mine, theirs = top_preset.get(key, table[key].default), o.preset.get(key, table[key].default)
            if not _same(mine, theirs):
                differ.append((key, mine, theirs))
        if differ:
            key, mine, theirs = differ[0]
            more = f" (and {len(differ) - 1} more keys of its preset)" if len(differ) > 1 else ""
            raise ConfigError(
                f"grid.objective={_short(values)}: the {other} preset would not apply under the top-level "
                f"objective {top} (a preset follows the top-level objective), so {other} would run with "
                f"{key}={mine!r} instead of its own {theirs!r}{more}; make {other} the top-level objective, sweep "
                f"one preset objective per config (configs/chen2025.yaml, configs/chen2025_rkl.yaml) or set "
                f"{key} explicitly",
                field="grid.objective",
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
    available = ", ".join(sorted(p.relative_to(shipped).with_suffix("").as_posix() for p in shipped.rglob("*.yaml")))
    raise ConfigError(
        f"config file {str(path)!r} does not exist (configurations shipped with forget-jax: {available})",
        field="config",
    )


def load_config(source: str | Path | Mapping) -> SweepSpec:
    """Parse, fill defaults, apply presets, validate every grid value and combination.

    A path is read with `read_yaml` (duplicate keys, alias bombs, non-UTF-8 bytes and empty files
    are refused) and every error names `FILE:LINE` of the field; a mapping (the Python API) may
    hold numpy arrays, numpy scalars and ranges as grid values (made plain Python numbers).

    Raises ConfigError (a one-line message naming the field) on any mistake.
    """
    if isinstance(source, (str, Path)):
        path = resolve_config_path(source)
        raw, lines = read_yaml(path)
        if not isinstance(raw, Mapping):
            raise ConfigError(
                f"{path}: a config must be a mapping of keys to values, got {type(raw).__name__}", field="config"
            )
        try:
            return _load(raw)
        except ConfigError as exc:
            raise _locate(exc, path, lines) from None
    return _load(source)


def _load(source: Any) -> SweepSpec:
    if not isinstance(source, Mapping):
        raise ConfigError(f"a config must be a mapping of keys to values, got {type(source).__name__}", field="config")
    raw = dict(source)
    for key in raw:
        if not isinstance(key, str):
            raise ConfigError(f"key {_short(key)}: config keys are field names (strings)", field="config")
    if raw.get("stages") is not None:
        raw = _pipeline(raw)
    elif raw.get("modes", 2) != 2:
        raise ConfigError(
            f"modes={raw['modes']!r}: K > 2 modes need a pipeline (`stages:`); the two-mode engine runs K = 2",
            field="modes",
        )
    stage_count = len(raw["stages"]) if raw.get("stages") is not None else 0
    grid_in = raw.get("grid")
    if grid_in is None:
        grid_in = {}
    if not isinstance(grid_in, Mapping):
        raise ConfigError(
            f"grid={_short(grid_in)}: must be a mapping field -> list or range, got {type(grid_in).__name__}",
            field="grid",
        )
    griddable = griddable_fields(stage_count)
    for key in grid_in:
        if stage_count and key in _PIPELINE_FIXED:
            raise ConfigError(
                f"grid.{key}: fixed for a whole pipeline sweep (the store's step and mode axes follow it); "
                f"grid a stage's traced fields instead (stages.<i>.<field>)",
                field=f"grid.{key}",
            )
        if not isinstance(key, str) or key not in griddable:
            close = difflib.get_close_matches(str(key), griddable, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"grid key '{key}' is not a griddable field{hint}; allowed: {', '.join(griddable)}", field=f"grid.{key}"
            )
    grid = {k: _axis_spec(k, v) for k, v in grid_in.items()}
    if "grid" in raw:
        raw["grid"] = grid
    raw = _apply_preset(raw)
    model = config_model()
    try:
        base = model(**{**raw, "grid": grid})
    except ValidationError as err:
        e = err.errors()[0]
        field = _error_field(err) if e["loc"] else _rule_field(e["msg"].removeprefix("Value error, "), raw)
        raise ConfigError(_format_error(err), field=field) from None
    lengths = {k: _axis_length(v) for k, v in grid.items()}
    points = math.prod(lengths.values()) * base.seeds
    if points > MAX_GRID_POINTS:
        shape = " x ".join(f"{k} {n}" for k, n in lengths.items())
        raise ConfigError(
            f"grid: {shape} x {base.seeds} seeds = {points:.3g} configurations exceeds the hard cap of "
            f"{MAX_GRID_POINTS:.0e}",
            field="grid",
        )
    # each value of each axis alone (type, bounds, choices; distinct), then every combination of
    # the axes that cross-field rules read
    axes: dict[str, list] = {}
    for k, spec in grid.items():
        staged = schedule.split_name(k)
        adapter = _field_adapter(staged[1] if staged else k)
        checked = []
        for v in _expand_axis(k, spec):
            try:
                checked.append(adapter.validate_python(v))
            except ValidationError as err:
                raise ConfigError(_format_error(err, prefix=f"grid.{k}"), field=f"grid.{k}") from None
        seen: dict[Any, int] = {}
        for i, v in enumerate(checked):
            if v in seen:
                raise ConfigError(
                    f"grid.{k}: the value {_short(v)} appears twice (positions {seen[v]} and {i}); the values of an "
                    "axis must be distinct (a duplicate runs the same configurations twice)",
                    field=f"grid.{k}",
                )
            seen[v] = i
        axes[k] = checked
    spec = SweepSpec(base, axes)
    if stage_count:
        _check_pipeline(spec)
    values = {k: getattr(base, k) for k in fields.all_fields()}
    cross = fields.cross_fields()
    combo_axes = [(k, v) for k, v in spec.axes.items() if k in cross]
    if combo_axes:
        rules = fields.rules()
        for combo in itertools.product(*(v for _, v in combo_axes)):
            update = {k: v for (k, _), v in zip(combo_axes, combo)}
            point = {**values, **update}
            for rule in rules:
                message = rule.check(point)
                if message:
                    where = ", ".join(f"{k}={v!r}" for k, v in update.items())
                    gridded = [k for k in rule.fields if k in update]
                    field = f"grid.{gridded[-1]}" if gridded else rule.fields[-1]
                    raise ConfigError(f"{message} (at grid point {where})", field=field)
    return spec


# ---------------------------------------------------------------------------------------------
# Pipelines (pipeline/schedule.py; docs/science/pipelines.md)

#: Keys a pipeline sweep may not grid: the stages, the log grid and the mode layout shape its store.
_PIPELINE_FIXED = frozenset({"steps", "log_every", "modes", "mode_placement", "mode_positions", "stages"})

#: Largest number of grid points whose every combination of stage axes is checked (beyond it each
#: axis value is checked alone).
_MAX_PIPELINE_CHECKS = 20_000


def _field_value(name: str, raw: Mapping[str, Any], key: str | None = None) -> Any:
    """A top-level field's validated value (its default when unset)."""
    value = raw.get(name, fields.get(name).default)
    try:
        return _field_adapter(name).validate_python(value)
    except ValidationError as err:
        raise ConfigError(_format_error(err, prefix=key or name), field=key or name) from None


def _pipeline(raw: dict) -> dict:
    """Check a pipeline's `stages` (shape, each value, steps multiples of log_every, tasks in
    range), its mode placement, and set `steps` to the stages' total."""
    modes = _field_value("modes", raw)
    log_every = _field_value("log_every", raw)
    dim = _field_value("dim", raw)

    def validate(name: str, value: Any, key: str) -> Any:
        return _field_value(name, {name: value}, key)

    try:
        stages = schedule.normalise(raw["stages"], validate, log_every, modes)
    except schedule.StageError as exc:
        raise ConfigError(str(exc), field=exc.field) from None
    total = sum(s["steps"] for s in stages)
    if "steps" in raw and raw["steps"] != total:
        raise ConfigError(
            f"steps={raw['steps']!r}: a pipeline runs the sum of its stages' steps ({total}); drop `steps` "
            "or make it equal",
            field="steps",
        )
    if _field_value("learner_modes", raw) != 2:
        raise ConfigError(
            f"learner_modes={raw['learner_modes']!r}: a pipeline's learner has one component per task (K = modes); "
            "the one-Gaussian learner runs in the two-mode engine only",
            field="learner_modes",
        )
    if modes > 2 and _field_value("weight_param", raw) == "direct":
        raise ConfigError(
            f"weight_param=direct: gradient steps on the weights themselves single out the last mode (w_K-1 = 1 - sum) "
            f"when K > 2 (modes={modes}); use logit or replicator (docs/science/pipelines.md)",
            field="weight_param",
        )
    placement = _field_value("mode_placement", raw)
    positions = raw.get("mode_positions")
    if placement == "explicit":
        _check_positions(positions, modes, dim)
    elif positions is not None:
        raise ConfigError(
            f"mode_positions={_short(positions)}: read with mode_placement: explicit only (got {placement})",
            field="mode_positions",
        )
    if placement == "simplex" and dim < modes - 1:
        raise ConfigError(
            f"mode_placement=simplex: K={modes} modes on a regular simplex need dim >= {modes - 1}, got dim={dim}",
            field="mode_placement",
        )
    return {**raw, "stages": stages, "steps": total}


def _check_positions(positions: Any, modes: int, dim: int) -> None:
    what = f"{modes} numbers (positions along e_1) or {modes} lists of dim={dim} numbers"
    ok = isinstance(positions, (list, tuple)) and len(positions) == modes
    if ok:
        flat = [p if isinstance(p, (list, tuple)) else [p] for p in positions]
        lengths = {len(p) for p in flat}
        numbers = all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for p in flat for x in p
        )
        ok = numbers and ((lengths == {1} and not isinstance(positions[0], (list, tuple))) or lengths == {dim})
        if ok and any(x != 0 for x in flat[0]):
            raise ConfigError(
                f"mode_positions={_short(positions)}: the first position must be 0 (mode 0 is the old mode at mu_o*)",
                field="mode_positions",
            )
    if not ok:
        raise ConfigError(f"mode_positions={_short(positions)}: must be {what}", field="mode_positions")


def _check_pipeline(spec: SweepSpec) -> None:
    """Every stage of every grid point: `schedule.check_point` (objectives the K-mode engine has,
    replay with an earlier task, shares per earlier task, the field table's rules), and population
    quadrature in at most two dimensions."""
    base = spec.base
    stages = base.stages
    from .pipeline.modes import frame

    setup = base.setup()
    populations = [schedule.build(setup.stages)[i].value("estimator", base.estimator) for i in range(len(stages))]
    if "population" in populations and frame(setup).shape[1] > 2:
        raise ConfigError(
            f"estimator=population: the {base.modes} target modes span {frame(setup).shape[1]} dimensions and "
            "population quadrature runs in at most 2; use a Monte Carlo estimator or mode_placement: axis",
            field="estimator",
        )
    values = {k: getattr(base, k) for k in fields.all_fields()}
    values.update(base.hyper_values())
    axes = list(spec.axes.items())
    combos = math.prod(len(v) for _, v in axes)
    if combos <= _MAX_PIPELINE_CHECKS:
        points = (
            dict(zip((k for k, _ in axes), combo, strict=True)) for combo in itertools.product(*(v for _, v in axes))
        )
    else:
        points = ({k: v} for k, vs in axes for v in vs)
    for update in points:
        point = {**values, **update}
        for k, v in update.items():  # a top-level traced value is every stage's default
            if schedule.split_name(k) is None and fields.get(k).kind == "traced":
                for i, raw in enumerate(stages):
                    if k not in raw and schedule.traced_name(i, k) not in update:
                        point[schedule.traced_name(i, k)] = v
        problem = schedule.check_point(point, stages)
        if problem:
            message, field = problem
            where = ", ".join(f"{k}={v!r}" for k, v in update.items())
            raise ConfigError(f"{message}" + (f" (at grid point {where})" if where else ""), field=field)
