"""Stage schedules of a continual post-training pipeline (docs/science/pipelines.md).

A configuration with `stages:` runs its stages in order in one compiled program (pipeline/loop.py).
Each stage is a mapping of

* `steps` (required): optimisation steps of the stage, a multiple of `log_every`;
* `task`: the mode it trains on (FKL: p_task = N(mu_task*, s^2 I); RKL: added to the tasks seen);
* `target` (RKL): `full` (p*) or `seen` (p* restricted to the tasks seen so far, renormalised);
* `replay_shares` (FKL): how the replay ratio lambda is split over the earlier tasks (default equal);
* any engine or training field: `objective`, `estimator`, `optimizer`, `batch_size`, ...
  (static: they make the stage's program) and `learning_rate`, `replay_ratio`, `old_lr_scale`, ...
  (traced: a grid may sweep them as `stages.<i>.<field>`).

Fields a stage does not set take the top-level value. The earlier tasks of stage i are mode 0 (the
prior skills) and the tasks of stages 0 .. i-1, without stage i's own task; FKL trains on
p_train = (1 - lambda) p_task + lambda sum_j share_j p_j over them.

This module only reads the field table (no JAX): the config loader, `Setup` and the store use it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .. import fields

#: Keys of a stage that are not fields.
STAGE_KEYS: tuple[str, ...] = ("steps", "task", "target", "replay_shares")

#: Objectives a pipeline stage can run (the K-mode engine, pipeline/objectives.py).
PIPELINE_OBJECTIVES: tuple[str, ...] = ("fkl", "rkl")

#: Fields fixed for the whole pipeline (the geometry of the tasks, shapes shared by every stage,
#: the weight parameter the state carries, the log grid and the sweep's bookkeeping): a stage may
#: not set them.
PIPELINE_WIDE: frozenset[str] = frozenset(
    {
        "dim",
        "steps",
        "log_every",
        "x64",
        "modes",
        "mode_placement",
        "mode_positions",
        "stages",
        "learner_modes",
        "weight_param",
        "independent_noise",
        "overlap_grid",
        "metric_quadrature_order",
        "separation",
        "target_old_weight",
        "target_old_mean",
        "target_old_scale",
        "target_new_scale",
        "init_old_weight",
        "init_old_offset",
        "init_new_offset",
        "init_old_scale",
        "init_new_scale",
        "seeds",
        "seed_offset",
        "name",
        "description",
    }
)

_STAGE_NAME = re.compile(r"stages\.(\d+)\.([A-Za-z_][A-Za-z0-9_]*)")


def traced_name(index: int, name: str) -> str:
    """The `Hyper` leaf / grid key of stage `index`'s traced field `name`: `stages.<index>.<name>`."""
    return f"stages.{index}.{name}"


def split_name(key: str) -> tuple[int, str] | None:
    """(stage index, field) of a `stages.<i>.<field>` key, else None."""
    m = _STAGE_NAME.fullmatch(key)
    return (int(m.group(1)), m.group(2)) if m else None


def stage_fields() -> tuple[str, ...]:
    """The fields a stage may set (static and traced), in declaration order: the engine and
    training fields read by fkl or rkl, but not the pipeline-wide ones nor the sample-wise items."""
    readers = {"all", *PIPELINE_OBJECTIVES}
    return tuple(
        k
        for k, f in fields.all_fields().items()
        if f.kind != "sweep" and k not in PIPELINE_WIDE and f.group != "samplewise" and readers & set(f.objective)
    )


class StageError(ValueError):
    """A bad stage: `field` is the config key (`stages.1.task`)."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


def normalise(raw: Any, validate: Callable[[str, Any, str], Any], log_every: int, modes: int) -> list[dict[str, Any]]:
    """Check the shape of a `stages:` list and every value in it (each field through `validate(name,
    value, key)`, the field's own type / bounds / choices); returns the stages as plain dicts.

    Raises StageError naming the stage and the key."""
    if not isinstance(raw, (list, tuple)) or not raw:
        raise StageError(f"stages={raw!r}: must be a non-empty list of stage mappings", "stages")
    allowed = (*STAGE_KEYS, *stage_fields())
    out = []
    for i, stage in enumerate(raw):
        where = f"stages.{i}"
        if not isinstance(stage, Mapping):
            raise StageError(f"{where}={stage!r}: a stage is a mapping of keys to values", where)
        if "steps" not in stage:
            raise StageError(
                f"{where}.steps: missing; every stage needs `steps` (its optimisation steps)", f"{where}.steps"
            )
        clean: dict[str, Any] = {}
        for key, value in stage.items():
            k = f"{where}.{key}"
            if not isinstance(key, str) or key not in allowed:
                if isinstance(key, str) and key in PIPELINE_WIDE:
                    raise StageError(f"{k}: `{key}` is fixed for the whole pipeline; set it at the top level", k)
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise StageError(
                    f"{k}: unknown stage key{hint}; allowed: {', '.join(STAGE_KEYS)} and the fields "
                    f"{', '.join(stage_fields())}",
                    k,
                )
            if key == "steps":
                value = validate("steps", value, k)
                if value % log_every:
                    raise StageError(
                        f"{k}={value}: must be a multiple of log_every={log_every} (every logged step lies in one stage)",
                        k,
                    )
            elif key == "task":
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < modes:
                    raise StageError(
                        f"{k}={value!r}: there is no task {value!r}; the tasks are the modes 0 .. {modes - 1} "
                        f"(modes={modes})",
                        k,
                    )
            elif key == "target":
                if value not in ("full", "seen"):
                    raise StageError(f"{k}={value!r}: must be `full` (p*) or `seen` (p* on the tasks seen so far)", k)
            elif key == "replay_shares":
                if value is not None:
                    ok = isinstance(value, (list, tuple)) and all(
                        isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in value
                    )
                    if not ok or abs(sum(value) - 1.0) > 1e-6:
                        raise StageError(
                            f"{k}={value!r}: must be a list of non-negative numbers summing to 1 (one per earlier task)",
                            k,
                        )
                    value = [float(x) for x in value]
            else:
                value = validate(key, value, k)
            clean[key] = value
        out.append(clean)
    return out


@dataclass(frozen=True)
class Stage:
    """One stage of a pipeline, as the engine sees it (static structure only: traced values live
    in `Hyper` as `stages.<index>.<field>`).

    Attributes:
        index: position in the schedule; steps: its optimisation steps;
        first_step: the global step at which it starts (0 for the first stage);
        task: the mode it trains on (None: no task, an RKL stage towards the seen / full target);
        target: `full` or `seen` (RKL);
        replay_shares: the split of lambda over `earlier` (None: equal);
        earlier: the tasks replayable in this stage (mode 0 and earlier stages' tasks, minus `task`);
        seen: the tasks seen once this stage runs (mode 0, earlier tasks and `task`);
        static: the stage's static field overrides, as sorted (name, value) pairs.
    """

    index: int
    steps: int
    first_step: int
    task: int | None
    target: str
    replay_shares: tuple[float, ...] | None
    earlier: tuple[int, ...]
    seen: tuple[int, ...]
    static: tuple[tuple[str, Any], ...]

    def value(self, name: str, default: Any) -> Any:
        """The stage's static value of a field, else `default` (the top-level value)."""
        return dict(self.static).get(name, default)


def _freeze_value(v: Any) -> Any:
    return tuple(_freeze_value(x) for x in v) if isinstance(v, (list, tuple)) else v


def freeze(stages: Sequence[Mapping[str, Any]] | None) -> tuple | None:
    """The hashable static structure of a schedule (what `Setup.stages` holds): per stage the
    sorted (key, value) pairs of its stage keys and static fields; traced overrides are dropped
    (they are `Hyper` values, so sweeping them never recompiles)."""
    if stages is None:
        return None
    if isinstance(stages, tuple) and all(isinstance(s, tuple) for s in stages):
        return stages  # already frozen
    static = set(fields.names("static")) | set(STAGE_KEYS)
    return tuple(tuple(sorted((k, _freeze_value(v)) for k, v in s.items() if k in static)) for s in stages)


@lru_cache(maxsize=256)
def build(frozen: tuple) -> tuple[Stage, ...]:
    """The `Stage`s of a frozen schedule (`freeze`)."""
    out = []
    start = 0
    done: list[int] = [0]
    for i, pairs in enumerate(frozen):
        d = dict(pairs)
        task = d.get("task")
        earlier = tuple(t for t in dict.fromkeys(done) if t != task)
        seen = tuple(dict.fromkeys([*done, *([task] if task is not None else [])]))
        shares = d.get("replay_shares")
        out.append(
            Stage(
                index=i,
                steps=int(d["steps"]),
                first_step=start,
                task=task,
                target=d.get("target", "full"),
                replay_shares=tuple(shares) if shares is not None else None,
                earlier=earlier,
                seen=seen,
                static=tuple((k, v) for k, v in pairs if k not in STAGE_KEYS),
            )
        )
        start += int(d["steps"])
        if task is not None:
            done.append(task)
    return tuple(out)


def stage_of_step(stages: Sequence[Stage], steps) -> list[int]:
    """The stage of each logged step: step 0 is stage 0, a step in (first_step, first_step + steps]
    belongs to that stage (its state is the result of that stage's updates)."""
    out = []
    for t in steps:
        index = 0
        for s in stages:
            if t > s.first_step:
                index = s.index
        out.append(index)
    return out


def check_point(values: Mapping[str, Any], stages: Sequence[Mapping[str, Any]]) -> tuple[str, str] | None:
    """The first problem of one grid point of a pipeline, as (message, config key), or None.

    `values`: the point's top-level field values plus its `stages.<i>.<field>` traced values;
    `stages`: the normalised stage mappings. Checks that each stage runs an objective the K-mode
    engine has, that an FKL stage names its task, that replay has an earlier task to replay and that
    `replay_shares` has one share per earlier task, and the table's rules on the stage's values."""
    built = build(freeze(stages))
    for stage, raw in zip(built, stages, strict=True):
        where = f"stages.{stage.index}"

        def get(name: str, stage=stage, raw=raw) -> Any:
            traced = traced_name(stage.index, name)
            if traced in values:
                return values[traced]
            return raw.get(name, values.get(name))

        objective = get("objective")
        if objective not in PIPELINE_OBJECTIVES:
            return (
                f"{where}.objective={objective!r}: a pipeline stage runs {' or '.join(PIPELINE_OBJECTIVES)} "
                "(the other objectives run in the two-mode engine only, without `stages`)",
                f"{where}.objective",
            )
        if get("sampling") != "ancestral" and get("estimator") != "population":
            return (
                f"{where}.sampling={get('sampling')!r}: pipeline stages sample ancestrally (set sampling: ancestral "
                "or estimator: population)",
                f"{where}.sampling",
            )
        replay = float(get("replay_ratio"))
        if objective == "fkl" and stage.task is None:
            return (
                f"{where}.task: missing; an fkl stage trains on a task: set `task` (0 .. {values['modes'] - 1})",
                f"{where}.task",
            )
        if objective == "rkl" and replay > 0:
            return (
                f"{where}.replay_ratio={replay}: replay in a pipeline's rkl stage is not available (T6 replay runs in "
                "the two-mode engine); set replay_ratio: 0",
                f"{where}.replay_ratio",
            )
        if objective == "fkl" and replay > 0 and not stage.earlier:
            return (
                f"{where}.replay_ratio={replay}: stage {stage.index} trains on task {stage.task} and has no earlier "
                "task to replay; set replay_ratio: 0",
                f"{where}.replay_ratio",
            )
        if stage.replay_shares is not None and len(stage.replay_shares) != len(stage.earlier):
            return (
                f"{where}.replay_shares={list(stage.replay_shares)}: needs one share per earlier task "
                f"{list(stage.earlier)} ({len(stage.earlier)})",
                f"{where}.replay_shares",
            )
        point = {k: v for k, v in values.items() if split_name(k) is None}
        point.update({k: get(k) for k in stage_fields()})
        point["steps"] = stage.steps
        for message in fields.violations(point):
            return f"{where}: {message}", where
    return None
