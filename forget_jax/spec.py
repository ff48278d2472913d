"""Static structure vs traced numbers: the central design decision of forget-jax.

`Setup` holds the *static* fields of the field table (fields.py): everything that changes array
shapes or the program itself (dimension, batch size, steps, log interval, objective, estimator,
sampling, update rule, optimiser, freeze flags, method structure). It is hashable: one `Setup` =
one compiled program.

`Hyper` holds the *traced* fields: every number a sweep varies (separation, replay ratio, learning
rate, target weight, initialisation, method knobs) and the seed. Its leaves are arrays, so a batch
of configurations is a `Hyper` whose leaves have a leading axis and the training loop is
`vmap`-ed over it (purejaxrl / gymnax style: the swept value is moved out of the static config
into a traced argument).

Neither class lists its fields: both read them from the field table, so a field (or a new
objective's knob) is declared once and is at once a `Setup` / `Hyper` attribute with its default.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from . import fields
from ._types import Array


class Setup:
    """Static (compile-time) structure of a simulation: the static fields of fields.py.

    `Setup(objective="rkl", batch_size=256)` sets some fields; every other static field takes its
    default. Immutable and hashable (one `Setup` = one compiled program); `replace(**changes)`
    returns a modified copy. Construction checks the names and the cross-field rules that read
    static fields only (e.g. `group_size` dividing `batch_size`), raising `ValueError`.
    """

    __slots__ = ("_key", "_values")

    def __init__(self, **values: Any):
        static = fields.defaults("static")
        unknown = sorted(set(values) - set(static))
        if unknown:
            raise ValueError(f"unknown Setup field(s) {unknown}; allowed: {sorted(static)}")
        merged = {**static, **values}
        if merged.get("overlap_grid") is not None:
            merged["overlap_grid"] = tuple(merged["overlap_grid"])
        if merged.get("mode_positions") is not None:
            merged["mode_positions"] = _frozen(merged["mode_positions"])
        if merged.get("stages") is not None:
            from .pipeline.schedule import freeze

            merged["stages"] = freeze(merged["stages"])  # static structure only (traced values: Hyper)
        problems = fields.violations(merged, fields.static_rules())
        if problems:
            raise ValueError(problems[0])
        object.__setattr__(self, "_values", merged)
        key = tuple(sorted((k, v) for k, v in merged.items() if v != static[k]))
        object.__setattr__(self, "_key", key)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        values = object.__getattribute__(self, "_values")
        if name in values:
            return values[name]
        try:  # a static field declared after this Setup was made (a later objective registration)
            field = fields.get(name)
        except KeyError:
            raise AttributeError(f"Setup has no field {name!r}") from None
        if field.kind != "static":
            raise AttributeError(f"{name!r} is a {field.kind} field, not a Setup field")
        return field.default

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Setup is immutable; use setup.replace({name}=...)")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Setup) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return "Setup(" + ", ".join(f"{k}={v!r}" for k, v in self._key) + ")"

    def __reduce__(self):
        return (_setup_from_items, (self._key,))

    def replace(self, **changes: Any) -> Setup:
        """A copy with some fields changed."""
        return Setup(**{**dict(self._key), **changes})

    @property
    def dtype(self):
        return jnp.float64 if self.x64 else jnp.float32

    @property
    def num_groups(self) -> int:
        """Groups per batch of the grouped objectives (`ttt_discover`, `oapl`)."""
        return self.batch_size // self.group_size

    @property
    def num_logs(self) -> int:
        """Number of logged points, including the initial state at step 0."""
        return self.steps // self.log_every + 1

    def logged_steps(self) -> np.ndarray:
        return np.arange(self.num_logs) * self.log_every


def _frozen(v: Any) -> Any:
    return tuple(_frozen(x) for x in v) if isinstance(v, (list, tuple)) else v


def _setup_from_items(items) -> Setup:
    return Setup(**dict(items))


class Hyper(eqx.Module):
    """Traced numbers of one configuration (or, with a leading axis on every leaf, of a batch):
    the traced fields of fields.py plus the integer `seed`, as a PyTree of arrays.

    Attributes are the field names (`hyper.separation`, `hyper.replay_ratio`, ...). Geometry
    (docs/science/model.md): the target is p* = beta* N(mu_o*, s_o^2 I) + (1 - beta*) N(mu_n*, s_n^2 I)
    with mu_o* = target_old_mean e_1 and mu_n* = mu_o* + separation s_o e_1; the learner starts
    at beta(0) = init_old_weight, m_o(0) = mu_o* + init_old_offset e_1, m_n(0) = mu_n* +
    init_new_offset e_1. Build one with `make_hyper`.
    """

    values: dict[str, Array]

    def __init__(self, **values: Array | np.ndarray):
        self.values = values  # type: ignore[assignment]

    def __getattr__(self, name: str) -> Array:
        if name.startswith("_") or name == "values":
            raise AttributeError(name)
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(f"Hyper has no field {name!r}; traced fields: {sorted(self.values)}") from None


def _stage_value(name: str, defaults: Mapping[str, Any]) -> bool:
    """`stages.<i>.<field>` of a traced field: a pipeline stage's own value (pipeline/schedule.py)."""
    parts = name.split(".")
    return len(parts) == 3 and parts[0] == "stages" and parts[1].isdigit() and parts[2] in defaults and parts[2] != SEED


#: Name of the per-configuration integer seed leaf of `Hyper` (not a field: the sweep's seed axis).
SEED = "seed"


def make_hyper(dtype=np.float32, **values: Any) -> Hyper:
    """Build a `Hyper` from keyword values (scalars or equal-length 1-D arrays); unset fields take
    their defaults from the field table. Scalars are broadcast against arrays, so
    `make_hyper(separation=[2, 4, 6])` is a batch of three configurations.

    Leaves are host (NumPy) arrays of `dtype` (seeds int32): they keep float64 precision even
    before float64 is enabled, and `simulate` moves them to the device under the Setup's precision.
    The defaults are those of the fields declared so far: use `forget_jax.make_hyper` (which
    declares every field first) rather than this module alone, whose importers (the theory
    module among them) must not pull in the objectives.
    """
    defaults: Mapping[str, Any] = {**fields.defaults("traced"), SEED: 0}
    unknown = {k for k in set(values) - set(defaults) if not _stage_value(k, defaults)}
    if unknown:
        raise ValueError(f"unknown Hyper field(s) {sorted(unknown)}; allowed: {list(defaults)}")
    merged = {**defaults, **values}  # a pipeline's `stages.<i>.<field>` values ride along
    arrays = {k: np.asarray(v) for k, v in merged.items()}
    shape = np.broadcast_shapes(*(a.shape for a in arrays.values()))
    dtype = np.dtype(dtype)
    out = {}
    for k, a in arrays.items():
        a = np.broadcast_to(a, shape)
        out[k] = np.array(a, dtype=np.int32 if k == SEED else dtype)
    return Hyper(**out)
