"""Validation with no gaps (issue 11, part 4): a table of bad inputs, each refused by `load_config`
with a one-line ConfigError naming the field (and `FILE:LINE` when read from a file); resource
caps that trip before memory grows; numpy arrays and ranges accepted as grid values; every
shipped configuration still loads. Most rows are generated from the field table, so a new field
is covered without editing this file. No JAX program is compiled here."""

from __future__ import annotations

import errno
import math
import time
import tracemalloc

import numpy as np
import pytest
import typer
import yaml
from typer.testing import CliRunner

from forget_jax import fields
from forget_jax.cli import app, user_errors
from forget_jax.config import (
    MAX_AXIS_VALUES,
    ConfigError,
    _Loader,
    griddable_fields,
    load_config,
    packaged_configs,
)
from forget_jax.limits import Limits, check_limits, footprint
from forget_jax.metrics import METRIC_NAMES
from forget_jax.reproduce.framework import configs_dir, study_configs

# ---------------------------------------------------------------------------------------------
# the table: (id, raw config, field the message must name)


def _numeric(f: fields.Field) -> bool:
    return f.type in (int, float) and f.choices is None


def _field_rows() -> list[tuple[str, dict, str]]:
    """Per field of the table: NaN / inf / 1e300 (floats, and ints where a float reaches them),
    one step past each bound, a bool for a number, a string for a number, null, and per traced or
    static field the same NaN as a grid value plus a duplicated grid value."""
    rows = []
    griddable = set(griddable_fields())
    for name, f in fields.all_fields().items():
        bad: list[tuple[str, object]] = []
        if _numeric(f):
            bad += [("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf), ("1e300", 1e300), ("-1e300", -1e300)]
            if f.ge is not None:
                bad.append(("below_ge", f.ge - (1 if f.type is int else max(abs(f.ge), 1) * 1e-3)))
            if f.gt is not None:
                bad.append(("at_gt", f.type(f.gt)))
            if f.le is not None:
                bad.append(("above_le", f.type(f.le + (1 if f.type is int else max(abs(f.le), 1) * 1e-3))))
            if f.lt is not None:
                bad.append(("at_lt", f.type(f.lt)))
            bad += [("bool", True), ("string", str(f.default)), ("list", [f.default])]
            if f.type is int:
                bad.append(("fraction", f.default + 0.5))
        elif f.type is bool:
            bad += [("int_for_bool", 1), ("string_for_bool", "true")]
        elif f.type is tuple:
            bad += [("short", [0.0, 1.0]), ("nan_item", [0.0, math.nan, 3]), ("string", "0, 1, 3")]
        elif f.type is str:
            bad += [("int_for_str", 3)]
            if f.choices is not None:
                bad.append(("not_a_choice", "no-such-choice"))
        if not f.nullable and f.type is not str:
            bad.append(("null", None))
        rows += [(f"{name}-{tag}", {name: value}, name) for tag, value in bad]
        if name in griddable and f.type in (int, float):
            rows.append((f"grid-{name}-nan", {"grid": {name: [f.default, math.nan]}}, f"grid.{name}"))
        if name in griddable and f.type is not tuple:
            rows.append((f"grid-{name}-duplicate", {"grid": {name: [f.default, f.default]}}, f"grid.{name}"))
    return rows


BAD_NAMES = ["../x", "a/b", ".hidden", "a..b", "", "x" * 201, "a b", "a\\b", "~/x", "-x"]

# bad pipelines (issue 10): each names the stage and the key (docs/science/pipelines.md)
_ONE = [{"steps": 10, "task": 1}]
PIPELINE_ROWS: list[tuple[str, dict, str]] = [
    ("not-a-list", {"stages": 5}, "stages"),
    ("empty", {"stages": []}, "stages"),
    ("stage-not-mapping", {"stages": [3]}, "stages.0"),
    ("missing-steps", {"stages": [{"task": 1}]}, "stages.0.steps"),
    ("task-does-not-exist", {"stages": [{"steps": 10, "task": 2}]}, "stages.0.task"),
    ("task-not-int", {"stages": [{"steps": 10, "task": "new"}]}, "stages.0.task"),
    ("replay-no-earlier-task", {"stages": [{"steps": 10, "task": 0, "replay_ratio": 0.1}]}, "stages.0.replay_ratio"),
    (
        "top-replay-no-earlier-task",
        {"replay_ratio": 0.1, "stages": [{"steps": 10, "task": 0}]},
        "stages.0.replay_ratio",
    ),
    (
        "grid-replay-no-earlier-task",
        {"stages": [{"steps": 10, "task": 0}], "grid": {"stages.0.replay_ratio": [0.0, 0.1]}},
        "stages.0.replay_ratio",
    ),
    ("steps-not-multiple", {"log_every": 10, "stages": [{"steps": 25, "task": 1}]}, "stages.0.steps"),
    ("unknown-key", {"stages": [{"steps": 10, "task": 1, "tsk": 1}]}, "stages.0.tsk"),
    ("pipeline-wide-field", {"stages": [{"steps": 10, "task": 1, "dim": 2}]}, "stages.0.dim"),
    ("objective-two-mode-only", {"stages": [{"steps": 10, "task": 1, "objective": "sdft"}]}, "stages.0.objective"),
    ("fkl-without-task", {"stages": [{"steps": 10}]}, "stages.0.task"),
    (
        "rkl-replay",
        {"stages": [*_ONE, {"steps": 10, "objective": "rkl", "replay_ratio": 0.1}]},
        "stages.1.replay_ratio",
    ),
    (
        "shares-per-earlier-task",
        {"modes": 3, "stages": [*_ONE, {"steps": 10, "task": 2, "replay_ratio": 0.2, "replay_shares": [1.0]}]},
        "stages.1.replay_shares",
    ),
    ("shares-sum", {"stages": [{"steps": 10, "task": 1, "replay_shares": [0.5]}]}, "stages.0.replay_shares"),
    ("value-out-of-bounds", {"stages": [{"steps": 10, "task": 1, "learning_rate": -1}]}, "stages.0.learning_rate"),
    ("target-not-a-choice", {"stages": [{"steps": 10, "objective": "rkl", "target": "sen"}]}, "stages.0.target"),
    (
        "stage-stratified",
        {"stages": [{"steps": 10, "task": 1, "estimator": "pathwise", "sampling": "stratified"}]},
        "stages.0.sampling",
    ),
    (
        "grid-stage-out-of-range",
        {"stages": _ONE, "grid": {"stages.3.learning_rate": [0.1, 0.2]}},
        "stages.3.learning_rate",
    ),
    (
        "grid-stage-static",
        {"stages": _ONE, "grid": {"stages.0.estimator": ["population", "pathwise"]}},
        "stages.0.estimator",
    ),
    ("grid-steps", {"stages": _ONE, "grid": {"steps": [10, 20]}}, "grid.steps"),
    (
        "grid-stage-bad-value",
        {"stages": _ONE, "grid": {"stages.0.learning_rate": [0.1, -1.0]}},
        "grid.stages.0.learning_rate",
    ),
    ("direct-k-modes", {"modes": 3, "weight_param": "direct", "stages": _ONE}, "weight_param"),
    (
        "weight-param-per-stage",
        {"stages": [{"steps": 10, "task": 1, "weight_param": "direct"}]},
        "stages.0.weight_param",
    ),
    ("one-gaussian-learner", {"learner_modes": 1, "stages": _ONE}, "learner_modes"),
    ("modes-without-stages", {"modes": 3}, "modes"),
    ("steps-not-the-sum", {"steps": 50, "stages": _ONE}, "steps"),
    ("simplex-needs-dim", {"modes": 3, "mode_placement": "simplex", "stages": _ONE}, "mode_placement"),
    ("positions-without-explicit", {"mode_positions": [0, 3], "stages": _ONE}, "mode_positions"),
    ("positions-length", {"mode_placement": "explicit", "mode_positions": [0, 3, 6], "stages": _ONE}, "mode_positions"),
    (
        "positions-first-not-zero",
        {"mode_placement": "explicit", "mode_positions": [1, 3], "stages": _ONE},
        "mode_positions",
    ),
    (
        "population-in-3-dims",
        {"modes": 4, "dim": 3, "mode_placement": "simplex", "estimator": "population", "stages": _ONE},
        "estimator",
    ),
]

HAND_ROWS: list[tuple[str, dict, str]] = [
    *[(f"name-{i}", {"name": n}, "name") for i, n in enumerate(BAD_NAMES)],
    ("steps-string-20", {"steps": "20"}, "steps"),
    ("seeds-true", {"seeds": True}, "seeds"),
    ("seeds-float-fraction", {"seeds": 2.5}, "seeds"),
    ("grid-list", {"grid": []}, "grid"),
    ("grid-int", {"grid": 5}, "grid"),
    ("grid-string", {"grid": "separation"}, "grid"),
    ("grid-axis-null", {"grid": {"separation": None}}, "grid.separation"),
    ("grid-axis-empty", {"grid": {"separation": []}}, "grid.separation"),
    ("grid-axis-empty-array", {"grid": {"separation": np.array([])}}, "grid.separation"),
    ("grid-axis-empty-range", {"grid": {"batch_size": range(0)}}, "grid.batch_size"),
    ("grid-axis-set", {"grid": {"separation": {1.0, 2.0}}}, "grid.separation"),
    ("grid-axis-2d-array", {"grid": {"separation": np.ones((2, 2))}}, "grid.separation"),
    ("grid-seeds", {"grid": {"seeds": [1, 2]}}, "seeds"),
    ("grid-unknown", {"grid": {"temperature": [1, 2]}}, "temperature"),
    ("grid-non-string-key", {"grid": {1: [1, 2]}}, "1"),
    ("grid-duplicate-int-float", {"grid": {"separation": [1, 1.0]}}, "grid.separation"),
    ("grid-duplicate-linspace", {"grid": {"separation": {"linspace": [1, 1, 3]}}}, "grid.separation"),
    ("grid-duplicate-range-as-float", {"grid": {"learning_rate": [1, 1.0, 2]}}, "grid.learning_rate"),
    ("linspace-null-start", {"grid": {"separation": {"linspace": [None, 1, 3]}}}, "grid.separation"),
    ("linspace-null-count", {"grid": {"separation": {"linspace": [0, 1, None]}}}, "grid.separation"),
    ("linspace-string-stop", {"grid": {"separation": {"linspace": [0, "1", 3]}}}, "grid.separation"),
    ("linspace-bool-count", {"grid": {"separation": {"linspace": [0, 1, True]}}}, "grid.separation"),
    ("linspace-nan-stop", {"grid": {"separation": {"linspace": [0, math.nan, 3]}}}, "grid.separation"),
    ("linspace-inf-count", {"grid": {"separation": {"linspace": [0, 1, math.inf]}}}, "grid.separation"),
    ("linspace-zero-count", {"grid": {"separation": {"linspace": [0, 1, 0]}}}, "grid.separation"),
    ("linspace-negative-count", {"grid": {"separation": {"linspace": [0, 1, -3]}}}, "grid.separation"),
    ("linspace-fraction-count", {"grid": {"separation": {"linspace": [0, 1, 2.5]}}}, "grid.separation"),
    ("linspace-two-args", {"grid": {"separation": {"linspace": [0, 1]}}}, "grid.separation"),
    ("linspace-not-list", {"grid": {"separation": {"linspace": 3}}}, "grid.separation"),
    ("linspace-huge", {"grid": {"separation": {"linspace": [0, 1, 1e9]}}}, "grid.separation"),
    ("linspace-two-kinds", {"grid": {"separation": {"linspace": [0, 1, 3], "logspace": [0, 1, 3]}}}, "grid.separation"),
    ("range-kind-typo", {"grid": {"separation": {"linspce": [0, 1, 3]}}}, "grid.separation"),
    ("logspace-overflow", {"grid": {"learning_rate": {"logspace": [0, 400, 3]}}}, "grid.learning_rate"),
    ("logspace-out-of-bounds", {"grid": {"learning_rate": {"logspace": [0, 7, 3]}}}, "grid.learning_rate"),
    ("list-over-axis-cap", {"grid": {"separation": range(MAX_AXIS_VALUES + 1)}}, "grid.separation"),
    (
        "grid-product-over-hard-cap",
        {
            "grid": {
                k: {"linspace": [0.01, 0.5, MAX_AXIS_VALUES]} for k in ("replay_ratio", "teacher_ema", "teacher_anchor")
            }
        },
        "grid",
    ),
    ("unknown-key", {"seperation": 3.0}, "seperation"),
    ("unknown-section", {"stores": {}}, "stores"),
    ("non-string-key", {1: 2}, "config"),
    ("not-a-mapping-list", [1, 2], "config"),
    ("not-a-mapping-str", "steps: 10", "config"),
    ("rule-log-every", {"steps": 100, "log_every": 30}, "log_every"),
    ("rule-grid-log-every", {"steps": 100, "grid": {"log_every": [10, 30]}}, "log_every"),
    ("rule-replay-sdft", {"objective": "sdft", "replay_ratio": 0.2}, "replay_ratio"),
    ("chen2025-rkl-under-fkl", {"objective": "fkl", "grid": {"objective": ["fkl", "chen2025_rkl"]}}, "grid.objective"),
    ("chen2025-fkl-under-rkl", {"objective": "rkl", "grid": {"objective": ["rkl", "chen2025_fkl"]}}, "grid.objective"),
    (
        "chen2025-rkl-under-chen2025-fkl",
        {"objective": "chen2025_fkl", "grid": {"objective": ["chen2025_fkl", "chen2025_rkl"]}},
        "grid.objective",
    ),
    ("chen2025-scalar-grid-under-fkl", {"grid": {"objective": "chen2025_fkl"}}, "grid.objective"),
    ("overlap-grid-bool-item", {"overlap_grid": [0.0, 1.0, True]}, "overlap_grid"),
    ("seeds-numpy-fraction", {"seeds": np.float64(2.5)}, "seeds"),
    ("steps-numpy-bool", {"steps": np.bool_(True)}, "steps"),
    ("learning-rate-numpy-nan", {"learning_rate": np.float32("nan")}, "learning_rate"),
    *[(f"pipeline-{name}", raw, field) for name, raw, field in PIPELINE_ROWS],
]

ROWS = _field_rows() + HAND_ROWS


def _check_message(exc: ConfigError, field: str) -> str:
    message = str(exc)
    assert "\n" not in message and len(message) < 2000, message
    assert field in message, f"{field!r} not named in {message!r}"
    return message


def test_table_is_large_and_covers_every_field():
    assert len({r[0] for r in ROWS}) == len(ROWS)  # ids are unique
    assert len(ROWS) >= 150, len(ROWS)
    named = {r[2].removeprefix("grid.") for r in ROWS}
    assert set(fields.all_fields()) <= named


def _yaml_text(raw) -> str | None:
    """The row as YAML text, or None when it has no YAML spelling that reads back as written
    (numpy values, ranges, sets; PyYAML writes the string '1e-08' unquoted, which the loader
    reads as the float 1e-08, a valid value)."""
    if not isinstance(raw, dict) or any(not isinstance(k, str) for k in raw):
        return None
    try:
        text = yaml.safe_dump(raw, sort_keys=False)
    except yaml.YAMLError:
        return None
    return text if yaml.safe_dump(yaml.load(text, Loader=_Loader), sort_keys=False) == text else None


def _line_of(text: str, field: str) -> int:
    """1-based line of the key that `field` (`a` or `grid.a`) names, found by reading the text."""
    key = field.split(".")[-1]
    lines = text.splitlines()
    start = next((n for n, t in enumerate(lines) if t.startswith("grid:")), 0) if field.startswith("grid.") else 0
    for n in range(start, len(lines)):
        if lines[n].lstrip().startswith(f"{key}:"):
            return n + 2  # +1 for the comment line written first, +1 for 1-based
    raise AssertionError((field, text))


def _check_row(tmp_path, row_id: str, raw, field: str) -> bool:
    """The row from a dict (Python API) and, where it has a YAML spelling, from a file whose
    message must start with FILE:LINE of the field's key. Returns whether the file was checked."""
    with pytest.raises(ConfigError) as info:
        load_config(raw)
    _check_message(info.value, field)
    text = _yaml_text(raw)
    if text is None:
        return False
    path = tmp_path / f"{row_id}.yaml"
    path.write_text("# a bad config\n" + text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = _check_message(info.value, field)
    if field.removeprefix("grid.") in fields.all_fields():
        assert message.startswith(f"{path}:{_line_of(text, field)}: "), message
    else:
        assert message.startswith(f"{path}"), message
    return True


GROUPS: dict[str, list[tuple[str, object, str]]] = {}
for _id, _raw, _field in ROWS:
    GROUPS.setdefault(_field.removeprefix("grid.") if _id not in {r[0] for r in HAND_ROWS} else _id, []).append(
        (_id, _raw, _field)
    )


@pytest.mark.parametrize("group", list(GROUPS))
def test_bad_input_is_one_line_naming_the_field(tmp_path, group):
    """Every row of the group (a field's generated rows, or one hand-written row)."""
    for row_id, raw, field in GROUPS[group]:
        _check_row(tmp_path, row_id, raw, field)


def test_yaml_rows_are_many():
    assert sum(_yaml_text(raw) is not None for _, raw, _ in ROWS) >= 150


# ---------------------------------------------------------------------------------------------
# YAML-only mistakes: (id, file bytes, FILE:LINE expected or None for file only, substring)

BOMB = (
    b'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + b"".join(f"{c}: &{c} [{','.join([f'*{p}'] * 9)}]\n".encode() for p, c in zip("abcdefgh", "bcdefghi"))
    + b"steps: 10\n"
)

YAML_BAD = [
    (
        "duplicate-key",
        b"steps: 100\nseparation: 2\nlog_every: 10\nseparation: 3\n",
        4,
        "duplicate key 'separation' (first at line 2)",
    ),
    (
        "duplicate-grid-key",
        b"grid:\n  separation: [1]\n  replay_ratio: [0]\n  separation: [2]\n",
        4,
        "duplicate key 'separation'",
    ),
    (
        "duplicate-range-key",
        b"grid:\n  separation: {linspace: [0, 1, 3], linspace: [0, 2, 3]}\n",
        2,
        "duplicate key 'linspace'",
    ),
    ("empty-file", b"", None, "empty config"),
    ("comment-only", b"# nothing\n", None, "empty config"),
    ("explicit-null", b"null\n", None, "mapping"),
    ("a-list", b"- a\n- b\n", None, "mapping"),
    ("non-utf8", b"name: caf\xe9\n", 1, "not UTF-8"),
    ("non-utf8-line-3", b"steps: 10\nlog_every: 5\nname: \xff\xfe\n", 3, "not UTF-8"),
    ("syntax", b"steps: 10\ngrid: [1, 2\n", None, "not valid YAML"),
    ("two-documents", b"steps: 10\n---\nsteps: 20\n", 2, "not valid YAML"),
    ("alias-bomb", BOMB, None, "aliases"),
    ("recursive-alias", b"a: &a [*a]\n", 1, "recursive alias"),
    ("steps-quoted", b'log_every: 10\nsteps: "20"\n', 2, "steps"),
    ("seeds-true", b"steps: 10\nlog_every: 5\nseeds: true\n", 3, "seeds"),
    ("nan", b"steps: 10\nlog_every: 5\nlearning_rate: .nan\n", 3, "learning_rate"),
    ("inf", b"separation: .inf\n", 1, "separation"),
    ("grid-empty-list", b"steps: 10\ngrid: []\n", 2, "grid"),
    ("grid-axis-null", b"steps: 10\ngrid:\n  separation:\n", 3, "grid.separation"),
    ("linspace-null", b"grid:\n  separation: {linspace: [null, 1, 3]}\n", 2, "grid.separation"),
    ("linspace-huge", b"grid:\n  separation: {linspace: [0, 1, 1e9]}\n", 2, "grid.separation"),
    ("preset-grid", b"objective: fkl\ngrid:\n  objective: [fkl, chen2025_rkl]\n", 3, "grid.objective"),
    ("bad-name", b"steps: 10\nname: ../x\n", 2, "name"),
    ("timestamp-name", b"name: 2024-01-01\n", 1, "name"),
    ("non-string-key", b"1: 2\n", None, "config"),
    ("deep-nesting", b"grid: " + b"[" * 600 + b"]" * 600 + b"\n", None, ""),
]


@pytest.mark.parametrize("data, line, needle", [pytest.param(d, ln, n, id=i) for i, d, ln, n in YAML_BAD])
def test_bad_yaml_file(tmp_path, data, line, needle):
    path = tmp_path / "c.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = _check_message(info.value, needle)
    assert message.startswith(f"{path}:{line}: " if line is not None else f"{path}"), message


def test_directory_as_config_path(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert _check_message(info.value, str(tmp_path)).endswith("is a directory, not a config file")


def test_yaml_floats_without_a_dot_are_numbers(tmp_path):
    """PyYAML (YAML 1.1) reads `1e-3` as a string; with strings refused for numbers that would
    reject every such config, so the loader reads them as floats (YAML 1.2)."""
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1e-3\nsteps: 1e3\nlog_every: 1E1\nadam_eps: 1.0e-8\n")
    base = load_config(path).base
    assert (base.learning_rate, base.steps, base.log_every, base.adam_eps) == (1e-3, 1000, 10, 1e-8)
    assert type(base.steps) is int


def test_merge_keys_and_anchors_still_work(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("grid: &g\n  separation: [1, 2]\nx: &x {steps: 10}\n")
    with pytest.raises(ConfigError, match=r":3: unknown key 'x'"):
        load_config(path)  # anchors compose; the unknown key is named with its line


# ---------------------------------------------------------------------------------------------
# the rules behind the table


def test_every_traced_field_has_finite_bounds_on_both_sides():
    for name in fields.names("traced"):
        f = fields.get(name)
        lower = f.ge if f.ge is not None else f.gt
        upper = f.le if f.le is not None else f.lt
        assert lower is not None and upper is not None, f"traced field {name} needs both bounds"
        assert math.isfinite(lower) and math.isfinite(upper) and lower < upper, name
    for name, f in fields.all_fields().items():
        if _numeric(f):
            assert (f.le if f.le is not None else f.lt) is not None, f"numeric field {name} needs an upper bound"


def test_nan_and_inf_are_refused_as_not_finite():
    """Bounds alone would refuse NaN (every comparison with it is false) but name a bound; the
    message must say what is wrong. Also for a float field without bounds (none ships today)."""
    for name, f in fields.all_fields().items():
        if f.type is float and f.choices is None:
            for value in (math.nan, math.inf, -math.inf):
                with pytest.raises(ConfigError, match="finite number"):
                    load_config({name: value})
    toy = fields.Field("toy_unbounded", "sweep", 0.0, "a float field without bounds (test only)")
    fields.declare(toy, owner="tests")
    try:
        with pytest.raises(ConfigError, match=r"toy_unbounded=nan: Input should be a finite number"):
            load_config({"toy_unbounded": math.nan})
    finally:
        fields.undeclare("toy_unbounded")


def test_an_int_is_a_float_and_a_whole_float_is_an_int():
    base = load_config({"separation": 2, "steps": 1e3, "log_every": 10.0, "seeds": np.int64(3)}).base
    assert type(base.separation) is float and base.separation == 2.0
    assert type(base.steps) is int and base.steps == 1000
    assert type(base.log_every) is int and type(base.seeds) is int and base.seeds == 3


@pytest.mark.parametrize(
    "grid",
    [
        {"separation": np.linspace(1, 3, 3), "batch_size": np.array([8, 16], dtype=np.int32)},
        {"separation": range(1, 4), "batch_size": range(8, 17, 8)},
        {"separation": (np.float32(1), np.float64(2), 3), "batch_size": [np.int64(8), 16]},
        {"separation": {"linspace": [np.float32(1), np.int64(3), np.int64(3)]}, "batch_size": np.array([8, 16])},
    ],
    ids=["numpy_arrays", "ranges", "numpy_scalars", "numpy_range_args"],
)
def test_numpy_and_ranges_as_grid_values(grid):
    spec = load_config({"estimator": "score", "grid": grid})
    assert spec.axes["separation"] == [1.0, 2.0, 3.0] and spec.axes["batch_size"] == [8, 16]
    assert all(type(v) is float for v in spec.axes["separation"])
    assert all(type(v) is int for v in spec.axes["batch_size"])
    text = spec.to_yaml()
    assert "!!" not in text  # plain YAML: no python/numpy tags
    again = load_config(yaml.safe_load(text))
    assert again.axes == spec.axes and again.to_yaml() == text


def test_numpy_values_through_the_python_api():
    import forget_jax

    spec = load_config({"separation": np.float32(2.5), "grid": {"replay_ratio": np.linspace(0, 0.5, 3)}})
    assert type(spec.base.separation) is float and spec.axes["replay_ratio"] == [0.0, 0.25, 0.5]
    assert callable(forget_jax.sweep)  # forget_jax.sweep(config) goes through load_config


def test_preset_grid_values():
    with pytest.raises(ConfigError) as info:
        load_config({"objective": "fkl", "grid": {"objective": ["fkl", "chen2025_rkl"]}})
    message = _check_message(info.value, "grid.objective")
    assert "top-level objective" in message and "one preset objective per config" in message
    # accepted: the preset objective on top, presetless grid values (they adopt it), or agreeing presets
    load_config({"objective": "chen2025_rkl"})
    load_config({"objective": "chen2025_fkl", "grid": {"objective": ["chen2025_fkl", "rkl"]}})
    load_config(
        {"objective": "chen2025_fkl", "learning_rate": 0.01, "grid": {"objective": ["chen2025_fkl", "chen2025_rkl"]}}
    )


def test_yaml_file_and_dict_give_the_same_errors_but_the_location(tmp_path):
    raw = {"steps": 100, "grid": {"separation": [1.0, 2.0], "replay_ratio": [0.1, 1.5]}}
    with pytest.raises(ConfigError) as from_dict:
        load_config(raw)
    path = tmp_path / "c.yaml"
    path.write_text("steps: 100\ngrid:\n  separation: [1.0, 2.0]\n\n  replay_ratio: [0.1, 1.5]\n")
    with pytest.raises(ConfigError) as from_file:
        load_config(path)
    assert str(from_file.value) == f"{path}:5: {from_dict.value}"  # the key's line, blank lines counted
    assert from_file.value.field == from_dict.value.field == "grid.replay_ratio"


# ---------------------------------------------------------------------------------------------
# caps trip before memory grows


def _peak(fn) -> tuple[int, float]:
    tracemalloc.start()
    start = time.perf_counter()
    try:
        fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, time.perf_counter() - start


def _refused(source):
    def run():
        with pytest.raises(ConfigError):
            load_config(source)

    return run


@pytest.mark.parametrize(
    "source",
    [
        {"grid": {"separation": {"linspace": [0, 1, 1e9]}}},
        {"grid": {"separation": {"logspace": [-3, 0, 10**12]}}},
        {
            "grid": {k: {"linspace": [0.01, 0.5, MAX_AXIS_VALUES]} for k in ("replay_ratio", "teacher_ema")},
            "seeds": 10**6,
        },
        {"grid": {"separation": range(10**15)}},
    ],
    ids=["linspace_1e9", "logspace_1e12", "product", "range_1e15"],
)
def test_huge_grids_are_refused_before_any_array(source):
    peak, seconds = _peak(_refused(source))
    assert peak < 5 * 2**20, f"{peak / 2**20:.1f} MiB before the refusal"
    assert seconds < 2.0


def test_alias_bomb_is_refused_before_it_grows(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_bytes(BOMB)
    assert len(BOMB) < 400  # a 9^9 = 387 million string document in a few hundred bytes
    peak, seconds = _peak(_refused(path))
    assert peak < 5 * 2**20, f"{peak / 2**20:.1f} MiB before the refusal"
    assert seconds < 2.0


def test_limits_trip_naming_quantity_cap_and_flag():
    with pytest.raises(ConfigError) as info:
        check_limits(load_config({"steps": 10**8, "log_every": 1}))
    message = _check_message(info.value, "logged points per configuration")
    assert "100,000,001" in message and "100,000" in message and "--max-logged-points" in message
    assert "--no-limits" in message
    many = load_config({"seeds": 10**6, "grid": {"separation": {"linspace": [0, 10, 20]}}})
    with pytest.raises(ConfigError, match=r"= 20,000,000 exceeds the cap of 10,000,000; .*--max-configs"):
        check_limits(many)
    check_limits(many, Limits(max_configs=None, max_store_bytes=None))
    check_limits(many, Limits.from_overrides(no_limits=True))
    check_limits(many, Limits.from_overrides(max_configs=2 * 10**7))
    big_block = load_config({"steps": 10**4, "log_every": 1, "seeds": 10**5})
    with pytest.raises(ConfigError, match=r"host memory of one block.*--chunk-size.*--max-memory-gb"):
        check_limits(big_block, chunk_size=10**5)
    check_limits(big_block, Limits.from_overrides(max_memory_gb=1000), chunk_size=10**5)
    with pytest.raises(ConfigError, match=r"store size .* exceeds .*--max-store-gb"):
        check_limits(big_block, Limits(max_store_bytes=2**30), chunk_size=1)
    with pytest.raises(ConfigError, match="--max-configs"):
        Limits.from_overrides(max_configs=0)
    with pytest.raises(ConfigError, match="--max-memory-gb"):
        Limits.from_overrides(max_memory_gb=math.nan)


def test_footprint_counts():
    spec = load_config(
        {"steps": 100, "log_every": 10, "seeds": 4, "grid": {"separation": [1, 2, 3], "batch_size": [8, 16]}}
    )
    f = footprint(spec, chunk_size=5)
    # 3 x 2 grid points x 4 seeds; logged steps 0, 10, ..., 100; one float32 per metric and step
    assert (f.configs, f.logged_points, f.metrics, f.itemsize) == (24, 11, len(METRIC_NAMES), 4)
    assert f.store_bytes == 24 * 11 * len(METRIC_NAMES) * 4 and f.block_configs == 5
    assert f.block_host_bytes == 5 * 11 * len(METRIC_NAMES) * 4
    assert footprint(load_config({"x64": True}), chunk_size=1).itemsize == 8


# ---------------------------------------------------------------------------------------------
# the CLI: exit status 2 and one `error:` line


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.parametrize(
    "data, needle",
    [
        (b"steps: 10\nlog_every: 5\nsteps: 20\n", ":3: duplicate key 'steps'"),
        (b"name: caf\xe9\n", ":1: not UTF-8"),
        (b"", "empty config"),
        (b"steps: 10\nlog_every: 5\nseparation: .nan\n", ":3: separation=nan"),
        (b"grid:\n  separation: {linspace: [0, 1, 1e9]}\n", ":2: grid.separation"),
        (BOMB, "aliases"),
    ],
    ids=["duplicate_key", "non_utf8", "empty", "nan", "huge_linspace", "alias_bomb"],
)
def test_cli_bad_config_one_line_exit_2(tmp_path, data, needle):
    path = tmp_path / "c.yaml"
    path.write_bytes(data)
    result = CliRunner().invoke(app, ["sweep", str(path), "--out", str(tmp_path / "x.zarr"), "--no-progress"])
    assert result.exit_code == 2, result.output
    line = _one_error_line(result.stderr)
    assert str(path) in line and needle in line, line
    assert not (tmp_path / "x.zarr").exists()


def test_cli_directory_as_config(tmp_path):
    result = CliRunner().invoke(app, ["sweep", str(tmp_path), "--out", str(tmp_path / "x.zarr")])
    assert result.exit_code == 2
    assert "is a directory" in _one_error_line(result.stderr)


@pytest.mark.parametrize(
    "exc, needle",
    [
        (OSError(errno.ENOSPC, "No space left on device", "/data/x.zarr/old_weight/0.0"), "free some space"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "afile/x.zarr"), "is a file, not a folder"),
        (PermissionError(errno.EACCES, "Permission denied", "/root/x.zarr"), "no permission"),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "out.png"), "a folder was given"),
        (FileExistsError(errno.EEXIST, "File exists", "afile"), "in the way"),
        (OSError(errno.EXDEV, "Invalid cross-device link", "a.tmp", None, "b"), "a.tmp -> b"),
    ],
    ids=["enospc", "enotdir", "eacces", "eisdir", "eexist", "two_paths"],
)
def test_user_errors_turns_os_errors_into_one_line(capsys, exc, needle):
    with pytest.raises(typer.Exit) as info:
        with user_errors():
            raise exc
    assert info.value.exit_code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert exc.filename in line and exc.strerror in line and needle in line, line


def test_cli_out_under_a_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("steps: 10\nlog_every: 5\n")
    blocker = tmp_path / "afile"
    blocker.write_text("")
    result = CliRunner().invoke(app, ["sweep", str(config), "--out", str(blocker / "x.zarr"), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "afile" in _one_error_line(result.stderr)


# ---------------------------------------------------------------------------------------------
# what ships still loads (and fits the default caps)


SHIPPED = sorted(p.name for p in packaged_configs().glob("*.yaml")) + sorted(
    f"pipelines/{p.name}" for p in (packaged_configs() / "pipelines").glob("*.yaml")
)
STUDIES = sorted(p.stem for p in configs_dir().glob("*.yaml"))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load(name):
    spec = load_config(packaged_configs() / name)
    check_limits(spec, chunk_size=1)


@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
@pytest.mark.parametrize("study", STUDIES)
def test_study_configs_load(study, quick):
    for config in study_configs(study, quick=quick).values():
        check_limits(load_config(config), chunk_size=1)


def test_study_yaml_files_have_no_duplicate_keys():
    from forget_jax.config import read_yaml

    for study in STUDIES:
        data, lines = read_yaml(configs_dir() / f"{study}.yaml")
        assert data == yaml.safe_load((configs_dir() / f"{study}.yaml").read_text())
        assert "name" in lines


def test_a_bad_stage_names_its_line(tmp_path):
    """A pipeline error points at the stage's key in the file (`stages.1.task` -> its line)."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "modes: 3\nstages:\n  - {objective: fkl, task: 1, steps: 100}\n  - objective: fkl\n    task: 5\n    steps: 100\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:5: stages.1.task=5"), str(info.value)
