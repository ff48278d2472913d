"""The configuration field table: every field of a simulation is declared once, here or beside the
objective that owns it.

A `Field` states a field's name, whether it is *static* (changes shapes or code: one compiled
program per distinct value), *traced* (a number: vmapped, never recompiles) or *sweep*
bookkeeping (seed axis, names), its type or choices, default, bounds, math symbol, a one-line
doc with the section of the science pages (docs/science/) it implements, and the objective it
belongs to. A `Rule` is a cross-field constraint with the fields it reads.

Everything else is derived from this table, never written again:

* `spec.Setup` (static fields) and `spec.Hyper` (traced fields) and their defaults;
* the validated configuration model of config.py (pydantic: bounds, choices, one-line errors,
  and the grid combinations to check, from the fields the rules read);
* the plot labels (plots.py) and the README configuration table (`markdown_table`, kept in sync
  by tests/test_fields.py; `forget-jax fields --write-readme README.md` rewrites it).

Objectives add their knobs with `objectives.register(Objective(..., fields=..., rules=...))`,
which calls `declare` / `add_rule`; the built-in fields shared by every objective are declared
at the bottom of this module. This module imports nothing from forget-jax.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

Kind = Literal["static", "traced", "sweep"]

#: Row order of the generated README table: the built-in groups, then objective knobs.
GROUPS: tuple[str, ...] = ("engine", "geometry", "training", "pipeline", "method", "sweep")


@dataclass(frozen=True)
class Field:
    """One configuration field.

    Attributes:
        name: the YAML key, `Setup` / `Hyper` attribute and store dimension name.
        kind: `static` (shapes or code; each distinct value is a compile group), `traced`
            (a number, vmapped) or `sweep` (bookkeeping read by the sweep runner only).
        default: the value when the key is not set.
        doc: one line saying what the field is in the science (with its docs/science section).
        type: `float`, `int`, `bool`, `str`, `tuple` (a `[lo, hi, n]` triple) or `list` (a YAML list
            whose items the owner's rules check: `stages`, `mode_positions`).
        choices: the allowed strings of a `str` field.
        ge, gt, le, lt: bounds of a number.
        whole: a traced number that must be a whole number (e.g. a lag in steps).
        nullable: `None` is allowed (means "automatic").
        pattern: a `str` field's values must match this Python regular expression (fullmatch).
        pattern_text: the allowed strings in words (docs table, error messages).
        symbol: the math symbol (plot labels, docs table).
        label: words for plot labels (default: the name with spaces).
        objective: the objectives that read it (`("all",)` for every objective).
        group: row group of the generated README table.
        default_text: how the docs table prints the default (default: `repr`).
        owner: module that declared it (the README table lists forget-jax's own fields only).
    """

    name: str
    kind: Kind
    default: Any
    doc: str
    type: type = float
    choices: tuple[str, ...] | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    whole: bool = False
    nullable: bool = False
    pattern: str | None = None
    pattern_text: str = ""
    symbol: str = ""
    label: str = ""
    objective: tuple[str, ...] = ("all",)
    group: str = "method"
    default_text: str | None = None
    owner: str = ""

    @property
    def words(self) -> str:
        return self.label or self.name.replace("_", " ")

    def bounds_text(self) -> str:
        """The allowed values in words, e.g. `[0, 1)` or `fkl | rkl`."""
        if self.choices is not None:
            return " \\| ".join(f"`{c}`" for c in self.choices)
        if self.type is bool:
            return "true \\| false"
        if self.type is str:
            return self.pattern_text or (f"`{self.pattern}`" if self.pattern else "text")
        if self.type is list:
            return self.pattern_text or "list"
        lo = f"[{_num(self.ge)}" if self.ge is not None else (f"({_num(self.gt)}" if self.gt is not None else "(-inf")
        hi = f"{_num(self.le)}]" if self.le is not None else (f"{_num(self.lt)})" if self.lt is not None else "inf)")
        if self.type is tuple:
            return "`[lo, hi, n]`" + (" or none" if self.nullable else "")
        text = f"{lo}, {hi}"
        if self.type is int or self.whole:
            text += " integer"
        return text


@dataclass(frozen=True)
class Rule:
    """A cross-field constraint: `check(values)` returns None when `values` (a mapping field ->
    value of one configuration) is allowed, else a one-line message naming the fields, the values
    and what is allowed. `fields` are the fields it reads: config validation checks every grid
    combination of those axes, and `Setup` runs the rules whose fields are all static."""

    fields: tuple[str, ...]
    check: Callable[[Mapping[str, Any]], str | None]
    doc: str = ""


def _num(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:g}" if abs(x) < 1e5 or x != int(x) else f"{x:.0e}".replace("e+0", "e").replace("e+", "e")


class _Table:
    """The registry behind `declare` / `add_rule`: fields in declaration order, rules, and a
    version number that changes on every registration (derived models cache on it)."""

    def __init__(self) -> None:
        self.fields: dict[str, Field] = {}
        self.rules: list[Rule] = []
        self.version = 0


_TABLE = _Table()


def declare(*new: Field, owner: str = "") -> None:
    """Add fields to the table (`owner`: the declaring module, usually `__name__`). A name may be
    declared once; redeclaring the identical field (a module imported twice) is a no-op."""
    for f in new:
        f = f if f.owner else replace(f, owner=owner)
        old = _TABLE.fields.get(f.name)
        if old is not None:
            if old == f:
                continue
            raise ValueError(
                f"field {f.name!r} is already declared (by {old.owner or 'forget_jax'}); a field is declared once"
            )
        _check_field(f)
        _TABLE.fields[f.name] = f
    _TABLE.version += 1


def undeclare(*names: str) -> None:
    """Remove fields (and the rules that read them): for tests that register a toy objective."""
    for name in names:
        _TABLE.fields.pop(name, None)
    _TABLE.rules[:] = [r for r in _TABLE.rules if not set(r.fields) & set(names)]
    _TABLE.version += 1


def _check_field(f: Field) -> None:
    if f.kind not in ("static", "traced", "sweep"):
        raise ValueError(f"field {f.name!r}: kind={f.kind!r} must be static, traced or sweep")
    if f.kind == "traced" and f.type is not float:
        raise ValueError(f"traced field {f.name!r} must be a float (traced numbers are arrays)")
    if f.choices is not None and f.default not in f.choices:
        raise ValueError(f"field {f.name!r}: default {f.default!r} is not one of {f.choices}")


def add_rule(rule: Rule) -> None:
    """Add a cross-field rule (idempotent for the identical rule object)."""
    if rule not in _TABLE.rules:
        unknown = [k for k in rule.fields if k not in _TABLE.fields]
        if unknown:
            raise ValueError(f"rule {rule.doc!r} reads undeclared field(s) {unknown}")
        _TABLE.rules.append(rule)
        _TABLE.version += 1


def remove_rule(rule: Rule) -> None:
    if rule in _TABLE.rules:
        _TABLE.rules.remove(rule)
        _TABLE.version += 1


def set_choices(name: str, choices: tuple[str, ...]) -> None:
    """Replace the choices of a `str` field (the `objective` field grows as objectives register)."""
    _TABLE.fields[name] = replace(_TABLE.fields[name], choices=choices)
    _TABLE.version += 1


def version() -> int:
    """Changes whenever a field or rule is added: derived models (config.config_model) cache on it."""
    return _TABLE.version


def all_fields() -> dict[str, Field]:
    """Every declared field, in declaration order."""
    return dict(_TABLE.fields)


def get(name: str) -> Field:
    return _TABLE.fields[name]


def names(kind: Kind) -> tuple[str, ...]:
    """Names of the declared fields of one kind, in declaration order."""
    return tuple(k for k, f in _TABLE.fields.items() if f.kind == kind)


def defaults(kind: Kind) -> dict[str, Any]:
    """name -> default for the fields of one kind."""
    return {k: f.default for k, f in _TABLE.fields.items() if f.kind == kind}


def rules() -> tuple[Rule, ...]:
    return tuple(_TABLE.rules)


def cross_fields() -> frozenset[str]:
    """Fields read by some cross-field rule: the grid axes whose combinations are validated."""
    return frozenset(k for r in _TABLE.rules for k in r.fields)


def static_rules() -> tuple[Rule, ...]:
    """Rules that read static fields only (checked by `Setup` itself)."""
    static = set(names("static"))
    return tuple(r for r in _TABLE.rules if set(r.fields) <= static)


def violations(values: Mapping[str, Any], which: tuple[Rule, ...] | None = None) -> list[str]:
    """Messages of every rule that `values` breaks (a rule reads its fields from `values`)."""
    out = []
    for rule in rules() if which is None else which:
        message = rule.check(values)
        if message:
            out.append(message)
    return out


def label(name: str) -> tuple[str, str] | None:
    """(symbol, words) of a field for plot labels, or None for an unknown name."""
    f = _TABLE.fields.get(name)
    return (f.symbol, f.words) if f is not None else None


# ---------------------------------------------------------------------------------------------
# The README configuration table


def _default_text(f: Field) -> str:
    if f.default_text is not None:
        return f.default_text
    if f.default is None:
        return "none"
    if isinstance(f.default, bool):
        return str(f.default).lower()
    if isinstance(f.default, str):
        return f"`{f.default}`"
    return _num(f.default) if isinstance(f.default, float) else str(f.default)


def markdown_table(include_foreign: bool = False) -> str:
    """The README configuration table, one row per field (forget-jax's own fields unless
    `include_foreign`): key, default, kind, allowed values, symbol, meaning, objectives."""
    rows = [
        "| key | default | kind | allowed | symbol | meaning | objectives |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    chosen = [f for f in _TABLE.fields.values() if include_foreign or f.owner.startswith("forget_jax")]
    order = {g: i for i, g in enumerate(GROUPS)}
    chosen.sort(key=lambda f: order.get(f.group, len(GROUPS)))
    for f in chosen:
        objectives = ", ".join(f"`{o}`" for o in f.objective) if f.objective != ("all",) else "all"
        symbol = f"`{f.symbol}`" if f.symbol else ""
        doc = f.doc.replace("|", "\\|")
        rows.append(
            f"| `{f.name}` | {_default_text(f)} | {f.kind} | {f.bounds_text()} | {symbol} | {doc} | {objectives} |"
        )
    return "\n".join(rows)


README_BEGIN = "<!-- fields:begin (generated by `forget-jax fields --write-readme README.md`; do not edit) -->"
README_END = "<!-- fields:end -->"


def readme_with_table(text: str, table: str) -> str:
    """`text` with the part between README_BEGIN and README_END replaced by `table`."""
    start, end = text.index(README_BEGIN) + len(README_BEGIN), text.index(README_END)
    return text[:start] + "\n" + table + "\n" + text[end:]


# ---------------------------------------------------------------------------------------------
# Built-in fields read by every objective (objective knobs are declared in objectives/*.py).
# docs/science/model.md: the model and the learner's parameterisation; objectives.md: estimators.

_OWN = "forget_jax.fields"

#: A name that is safe as (part of) a file name: plots build default file names from `name`.
NAME_PATTERN = r"[A-Za-z0-9](?:[A-Za-z0-9_-]|\.(?!\.)){0,199}"

declare(
    # ---- engine: what is computed and how (static)
    Field(
        "objective",
        "static",
        "fkl",
        "the training objective (an entry of the objectives registry; docs/science/objectives.md)",
        type=str,
        choices=("fkl",),
        group="engine",
    ),
    Field(
        "estimator",
        "static",
        "population",
        "`population` (exact expectation by Gauss-Hermite quadrature), `pathwise` or `score` "
        "(Monte Carlo, leave-one-out baseline; docs/science/objectives.md)",
        type=str,
        choices=("population", "pathwise", "score"),
        group="engine",
    ),
    Field(
        "sampling",
        "static",
        "ancestral",
        "Monte Carlo labels drawn from the weight (`ancestral`: starvation lives here) or both components "
        "in every batch (`stratified`)",
        type=str,
        choices=("ancestral", "stratified"),
        group="engine",
    ),
    Field(
        "independent_noise",
        "static",
        False,
        "grid points draw independent noise (key(seed) folded with their values); false: grid points "
        "sharing a seed share every draw (common random numbers, drawn once per seed; objectives.md Noise)",
        type=bool,
        group="engine",
    ),
    Field(
        "dim",
        "static",
        1,
        "dimension d of x (d > 1 needs equal, fixed scales: the exact reduction of model.md)",
        type=int,
        ge=1,
        le=4096,
        symbol="d",
        label="dimension",
        group="engine",
    ),
    Field(
        "batch_size",
        "static",
        64,
        "samples per step B of the Monte Carlo estimators (bucketed, not padded)",
        type=int,
        ge=1,
        le=1_000_000,
        symbol="B",
        group="engine",
    ),
    Field("steps", "static", 1000, "optimisation steps T", type=int, ge=1, le=100_000_000, symbol="T", group="engine"),
    Field(
        "log_every",
        "static",
        10,
        "metrics at steps 0, k, 2k, ..., T (must divide `steps`)",
        type=int,
        ge=1,
        le=100_000_000,
        symbol="k",
        group="engine",
    ),
    Field(
        "weight_param",
        "static",
        "logit",
        "old-weight update rule: GD on logit beta, GD on beta (clipped), or the replicator (Fisher-Rao) step, "
        "EM at lr 1 under FKL (model.md, update rules)",
        type=str,
        choices=("logit", "direct", "replicator"),
        group="engine",
    ),
    Field(
        "optimizer",
        "static",
        "sgd",
        "`sgd` or `adam` (optax; the learning rate stays traced)",
        type=str,
        choices=("sgd", "adam"),
        group="engine",
    ),
    Field("adam_b1", "static", 0.9, "Adam first-moment decay", ge=0, lt=1, group="engine"),
    Field("adam_b2", "static", 0.999, "Adam second-moment decay", ge=0, lt=1, group="engine"),
    Field("adam_eps", "static", 1e-8, "Adam epsilon", gt=0, le=1, group="engine"),
    Field(
        "learner_modes",
        "static",
        2,
        "components of the learner: 2 (the two-mode mixture) or 1 (one Gaussian N(m_o, s_o^2 I), CRNC25's "
        "uni-modal learner: its old weight is held at 1 and the new group is unused; model.py, studies.md section 5)",
        type=int,
        ge=1,
        le=2,
        symbol="K",
        label="learner modes",
        group="engine",
    ),
    Field("train_weight", "static", True, "train the old weight beta (false: frozen)", type=bool, group="engine"),
    Field("train_old_mean", "static", True, "train the old mean m_o", type=bool, group="engine"),
    Field("train_new_mean", "static", True, "train the new mean m_n", type=bool, group="engine"),
    Field("train_scales", "static", False, "train the component scales s_o, s_n", type=bool, group="engine"),
    Field(
        "quadrature_order",
        "static",
        64,
        "Gauss-Hermite nodes per axis of the population objectives",
        type=int,
        ge=4,
        le=512,
        group="engine",
    ),
    Field(
        "metric_quadrature_order",
        "static",
        64,
        "Gauss-Hermite nodes per axis of the exact metrics (KL, misassignment)",
        type=int,
        ge=4,
        le=512,
        group="engine",
    ),
    Field(
        "weight_clip",
        "static",
        1e-3,
        "beta is clipped to [eps, 1 - eps] under `direct` / `replicator`",
        gt=0,
        lt=0.5,
        symbol="ε",
        group="engine",
    ),
    Field(
        "scale_min",
        "static",
        1e-3,
        "learnable scales are clipped to >= scale_min (CRNC25: 1e-3)",
        gt=0,
        le=1e3,
        group="engine",
    ),
    Field(
        "overlap_grid",
        "static",
        None,
        "grid `[lo, hi, n]` of CRNC25's overlap accuracies (D7); none: 512 points "
        "over each target component +- 8 scales",
        type=tuple,
        nullable=True,
        group="engine",
    ),
    Field("x64", "static", False, "run in float64 (float32 otherwise)", type=bool, group="engine"),
    # ---- geometry of the target and the initial learner (traced; model.md)
    Field(
        "separation",
        "traced",
        4.0,
        "Mahalanobis distance Delta between the target modes (mu_n* = mu_o* + Delta s_o e_1)",
        ge=0,
        le=1e3,
        symbol="Δ",
        group="geometry",
    ),
    Field("target_old_weight", "traced", 0.5, "target old weight beta*", gt=0, lt=1, symbol="β*", group="geometry"),
    Field(
        "target_old_mean",
        "traced",
        0.0,
        "position of the target old mode mu_o* along e_1",
        ge=-1e3,
        le=1e3,
        symbol="μ_o*",
        group="geometry",
    ),
    Field("target_old_scale", "traced", 1.0, "target old scale s_o*", gt=0, le=1e3, symbol="s_o*", group="geometry"),
    Field("target_new_scale", "traced", 1.0, "target new scale s_n*", gt=0, le=1e3, symbol="s_n*", group="geometry"),
    Field(
        "init_old_weight",
        "traced",
        0.5,
        "initial old weight beta(0)",
        gt=0,
        lt=1,
        symbol="β(0)",
        label="initial old weight",
        group="geometry",
    ),
    Field(
        "init_old_offset",
        "traced",
        0.0,
        "m_o(0) - mu_o* along the separation axis",
        ge=-1e3,
        le=1e3,
        symbol="m_o(0) − μ_o*",
        label="initial old offset",
        group="geometry",
    ),
    Field(
        "init_new_offset",
        "traced",
        -1.0,
        "m_n(0) - mu_n* along the separation axis",
        ge=-1e3,
        le=1e3,
        symbol="m_n(0) − μ_n*",
        label="initial new offset",
        group="geometry",
    ),
    Field("init_old_scale", "traced", 1.0, "initial old scale s_o(0)", gt=0, le=1e3, symbol="s_o(0)", group="geometry"),
    Field("init_new_scale", "traced", 1.0, "initial new scale s_n(0)", gt=0, le=1e3, symbol="s_n(0)", group="geometry"),
    # ---- training (traced)
    Field(
        "replay_ratio",
        "traced",
        0.0,
        "lambda: FKL trains on (1 - lambda) p_new + lambda p_old; RKL samples (1 - lambda) q + lambda p_old with "
        "weights q / m <= 1 / (1 - lambda) (model.md D5, claims.md T2, T6)",
        ge=0,
        lt=1,
        symbol="λ",
        objective=("fkl", "rkl", "chen2025_fkl"),
        group="training",
    ),
    Field("learning_rate", "traced", 0.05, "learning rate eta", gt=0, le=1e6, symbol="η", group="training"),
    Field(
        "old_lr_scale",
        "traced",
        1.0,
        "learning-rate multiplier of the old group (beta, m_o, s_o; CRNC25: 0.005)",
        ge=0,
        le=1e3,
        symbol="η_o/η",
        label="old learning-rate scale",
        group="training",
    ),
    Field(
        "new_lr_scale",
        "traced",
        1.0,
        "learning-rate multiplier of the new group (m_n, s_n)",
        ge=0,
        le=1e3,
        symbol="η_n/η",
        label="new learning-rate scale",
        group="training",
    ),
    # ---- continual pipelines: K modes and stage schedules (docs/science/pipelines.md; pipeline/)
    Field(
        "modes",
        "static",
        2,
        "modes K of the target and the learner, one per task: mode 0 is the old task (prior skills), "
        "1 .. K-1 the post-training tasks; K > 2 needs `stages` (pipelines.md)",
        type=int,
        ge=2,
        le=64,
        symbol="K",
        label="modes",
        group="pipeline",
    ),
    Field(
        "mode_placement",
        "static",
        "axis",
        "where the K target modes sit: `axis` (mu_k* = mu_o* + k Delta s_o e_1), `simplex` (a regular "
        "simplex of edge Delta s_o, d >= K - 1) or `explicit` (`mode_positions`); K = 2 is the same for all",
        type=str,
        choices=("axis", "simplex", "explicit"),
        group="pipeline",
    ),
    Field(
        "mode_positions",
        "static",
        None,
        "explicit placement: K positions along e_1 (numbers) or K points of d numbers, in units of s_o* "
        "from mu_o* (the first must be 0: mode 0 is the old mode)",
        type=list,
        nullable=True,
        pattern_text="K numbers or K lists of d numbers",
        group="pipeline",
    ),
    Field(
        "stages",
        "static",
        None,
        "a post-training pipeline: a list of stages, each `{steps, task, target, replay_shares}` and any "
        "engine or training field (`objective: fkl | rkl`, `learning_rate`, `replay_ratio`, ...), run in "
        "order in one compiled program (pipelines.md); grid a stage's traced field as `stages.1.replay_ratio`",
        type=list,
        nullable=True,
        pattern_text="list of stage mappings",
        group="pipeline",
    ),
    # ---- sweep bookkeeping
    Field(
        "seeds",
        "sweep",
        1,
        "number of seeds (a count): seeds seed_offset ... seed_offset + seeds - 1",
        type=int,
        ge=1,
        le=1_000_000,
        group="sweep",
    ),
    Field("seed_offset", "sweep", 0, "first seed", type=int, ge=0, le=2**31 - 1_000_001, group="sweep"),
    Field(
        "name",
        "sweep",
        "sweep",
        "name of the sweep (progress bar, store attribute, default file names of plots)",
        type=str,
        pattern=NAME_PATTERN,
        pattern_text="letters, digits, `.` `_` `-`; no leading `.`, no `..`; at most 200",
        group="sweep",
    ),
    Field(
        "description", "sweep", "", "free text kept in the store's config", type=str, default_text='""', group="sweep"
    ),
    owner=_OWN,
)


def _steps_rule(v: Mapping[str, Any]) -> str | None:
    if v["steps"] % v["log_every"]:
        return f"log_every={v['log_every']} must divide steps={v['steps']}"
    return None


def _overlap_grid_rule(v: Mapping[str, Any]) -> str | None:
    g = v["overlap_grid"]
    if g is not None and not (len(g) == 3 and g[0] < g[1] and g[2] >= 2 and float(g[2]).is_integer()):
        return f"overlap_grid={list(g)!r}: must be [lo, hi, n] with lo < hi and an integer n >= 2"
    return None


def _equal_scales_rule(v: Mapping[str, Any]) -> str | None:
    scales = ("target_old_scale", "target_new_scale", "init_old_scale", "init_new_scale")
    if v["dim"] > 1 and (v["train_scales"] or len({v[k] for k in scales}) > 1):
        got = ", ".join(f"{k}={v[k]}" for k in ("train_scales", *scales))
        return (
            f"dim={v['dim']} > 1 needs equal, fixed component scales (train_scales=false, all scales equal); got {got}"
        )
    return None


add_rule(Rule(("steps", "log_every"), _steps_rule, "log_every divides steps"))
add_rule(Rule(("overlap_grid",), _overlap_grid_rule, "overlap_grid is [lo, hi, n]"))
add_rule(
    Rule(
        ("dim", "train_scales", "target_old_scale", "target_new_scale", "init_old_scale", "init_new_scale"),
        _equal_scales_rule,
        "d > 1 needs equal, fixed scales",
    )
)
