"""Per-item evaluation logs of language models: readers and before / after alignment
(docs/science/methods.md E, "Evaluation protocol and aggregation").

A log is the correctness a_i in {0, 1} of every item i of every task, for one model (and, when
the log carries one, per seed). Three formats:

* ``lm_eval``: lm-evaluation-harness ``--log_samples`` output, ``samples_<task>_<timestamp>.jsonl``,
  one JSON record per item with ``doc_id`` and one field per metric (``acc``, ``acc_norm``,
  ``exact_match``, ...). The task is read from the file name, the metric picked by ``metric``
  (default ``acc``, or ``exact_match`` on records without ``acc``; ``name,filter`` keeps the records of one lm-eval filter, e.g.
  ``exact_match,strict-match``). k is the number of requests the record carries (``arguments``:
  one loglikelihood request per answer choice for multiple-choice tasks; one request, i.e. a
  generative task, means free-form).
* ``lighteval``: LightEval per-sample details, ``details_<task>_<timestamp>.parquet``, one row per
  item with a ``metrics`` dict; correctness is ``round(metrics[metric])`` (default metric
  ``extractive_match``), as the published code does; the item id is the ``full_prompt`` column
  (the published code aligns on it) unless ``id_field`` names a column; k = ``len(choices)``.
  Needs pyarrow (``pip install 'forget-jax[lighteval]'``).
* ``jsonl`` / ``csv``: one item a line / row with ``id_field``, ``task_field``, ``correct_field``
  (defaults ``id``, ``task``, ``correct``; correctness 0/1 or true/false) and optionally a seed
  column ``seed_field``.

Every reading mistake raises `LogError` with one line naming the file, the line and the field.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = ("auto", "lm_eval", "lighteval", "jsonl", "csv")
_TIMESTAMP = r"\d{4}-\d{2}-\d{2}T[0-9:.\-]+"
_LM_EVAL_NAME = re.compile(rf"^samples_(?P<task>.+)_(?P<ts>{_TIMESTAMP})\.jsonl$")
_LIGHTEVAL_NAME = re.compile(rf"^details_(?P<task>.+)_(?P<ts>{_TIMESTAMP})\.parquet$")
DEFAULT_METRIC = {"lm_eval": "acc", "lighteval": "extractive_match"}
#: lm-eval fields tried in order when no metric is given (generative tasks carry no acc)
LM_EVAL_DEFAULTS = ("acc", "exact_match")


class LogError(ValueError):
    """A per-item log that cannot be read or aligned (one line: file, line, field)."""


@dataclass
class Log:
    """Per-item correctness of one model.

    Attributes:
        items: (seed, task) -> item id -> correct (bool); the first occurrence of a duplicated id.
        k: task -> number of answer choices the records carry (None: not carried / free-form).
        duplicates: (seed, task) -> ids seen more than once.
        source: task -> the first file it was read from (for messages).
        notes: what was skipped on purpose (older reruns of a task in one folder).
    """

    items: dict[tuple[str, str], dict[str, bool]] = field(default_factory=dict)
    k: dict[str, int | None] = field(default_factory=dict)
    duplicates: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, seed: str, task: str, item: str, correct: bool, k: int | None, where: str) -> None:
        bucket = self.items.setdefault((seed, task), {})
        self.source.setdefault(task, where.rsplit(":", 1)[0])
        if item in bucket:
            self.duplicates.setdefault((seed, task), []).append(item)
        else:
            bucket[item] = correct
        if task not in self.k:
            self.k[task] = k
        elif self.k[task] != k:
            raise LogError(
                f"{where}: task {task!r}: {k} answer choices here, {self.k[task]} on earlier items "
                "(give --k or --k-map)"
            )


def _correct_value(value: Any, where: str, name: str, *, round_fraction: bool = False) -> bool:
    """0/1, true/false (bool, number or string) -> bool; anything else is a LogError."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "1.0", "true"):
            return True
        if text in ("0", "0.0", "false"):
            return False
        raise LogError(f"{where}: field {name!r}: value {value!r} is not 0/1 or true/false")
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | float | np.integer | np.floating) and np.isfinite(value):
        if value in (0, 1):
            return bool(value)
        if round_fraction and 0 <= value <= 1:
            return bool(round(float(value)))
    raise LogError(f"{where}: field {name!r}: value {value!r} is not 0/1")


def _field(record: dict, name: str, where: str) -> Any:
    if not isinstance(record, dict):
        raise LogError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if name not in record or record[name] is None:
        raise LogError(f"{where}: field {name!r} missing")
    return record[name]


def _json_lines(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LogError(f"{path}: unreadable file ({exc.__class__.__name__}: {exc})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise LogError(f"{path}:{number}: not valid JSON ({exc.msg})") from None


def _choices_of_lm_eval(record: dict) -> int | None:
    args = record.get("arguments")
    count = len(args) if isinstance(args, list | dict) else 0
    return count if count >= 2 else None


def _read_lm_eval(path: Path, log: Log, seed: str, metric: str | None, task: str) -> None:
    name, _, wanted_filter = (metric or "").partition(",")
    filters = set()
    records = []
    for number, record in _json_lines(path):
        where = f"{path}:{number}"
        _field(record, "doc_id", where)
        filters.add(record.get("filter"))
        records.append((where, record))
    if not wanted_filter and len(filters) > 1:
        shown = ", ".join(sorted(str(f) for f in filters))
        raise LogError(f"{path}: records of several lm-eval filters ({shown}): pick one with --metric {name},FILTER")
    for where, record in records:
        if wanted_filter and record.get("filter") != wanted_filter:
            continue
        field_name = name or next((f for f in LM_EVAL_DEFAULTS if record.get(f) is not None), LM_EVAL_DEFAULTS[0])
        correct = _correct_value(_field(record, field_name, where), where, field_name)
        log.add(seed, task, str(record["doc_id"]), correct, _choices_of_lm_eval(record), where)


def _read_lighteval(path: Path, log: Log, seed: str, metric: str | None, task: str, id_field: str) -> None:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise LogError(
            f"{path}: reading LightEval parquet needs pyarrow: pip install 'forget-jax[lighteval]'"
        ) from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise LogError(f"{path}: unreadable file ({exc.__class__.__name__}: {exc})") from None
    name = metric or DEFAULT_METRIC["lighteval"]
    for number, row in enumerate(rows, start=1):
        where = f"{path}:row {number}"
        metrics = row.get("metrics", row.get("metric"))
        if isinstance(metrics, str):
            metrics = json.loads(metrics)
        if not isinstance(metrics, dict):
            raise LogError(f"{where}: field 'metrics' missing")
        if metrics.get(name) is None:
            raise LogError(f"{where}: field 'metrics.{name}' missing")
        correct = _correct_value(metrics[name], where, f"metrics.{name}", round_fraction=True)
        doc = row.get("doc") if isinstance(row.get("doc"), dict) else {}
        for candidate in (id_field, "full_prompt", "example"):
            if row.get(candidate) is not None:
                item = str(row[candidate])
                break
        else:
            if doc.get("query") is None:
                raise LogError(f"{where}: field {id_field!r} missing (nor full_prompt / example / doc.query)")
            item = str(doc["query"])
        choices = row.get("choices") or doc.get("choices") or []
        log.add(seed, task, item, correct, len(choices) if len(choices) >= 2 else None, where)


def _read_plain(
    path: Path,
    fmt: str,
    log: Log,
    seed: str,
    id_field: str,
    task_field: str,
    correct_field: str,
    seed_field: str | None,
) -> None:
    if fmt == "csv":
        try:
            handle = path.open(newline="", encoding="utf-8")
        except OSError as exc:
            raise LogError(f"{path}: unreadable file ({exc.__class__.__name__}: {exc})") from None
        with handle:
            reader = csv.DictReader(handle)
            try:
                rows = [(reader.line_num, dict(row)) for row in reader]
            except (csv.Error, UnicodeDecodeError) as exc:
                raise LogError(f"{path}:{reader.line_num}: unreadable CSV ({exc})") from None
    else:
        rows = list(_json_lines(path))
    for number, record in rows:
        where = f"{path}:{number}"
        item = str(_field(record, id_field, where))
        task = str(_field(record, task_field, where))
        correct = _correct_value(_field(record, correct_field, where), where, correct_field)
        row_seed = str(_field(record, seed_field, where)) if seed_field else seed
        log.add(row_seed, task, item, correct, None, where)


def detect_format(path: Path) -> str:
    """lm_eval for samples_*.jsonl, lighteval for *.parquet, jsonl / csv by extension."""
    if _LM_EVAL_NAME.match(path.name):
        return "lm_eval"
    if path.suffix == ".parquet":
        return "lighteval"
    if path.suffix in (".jsonl", ".json"):
        return "jsonl"
    if path.suffix == ".csv":
        return "csv"
    raise LogError(f"{path}: cannot tell the format from the name; give --format ({', '.join(FORMATS[1:])})")


def _task_and_time(path: Path, fmt: str) -> tuple[str, str]:
    pattern = _LM_EVAL_NAME if fmt == "lm_eval" else _LIGHTEVAL_NAME
    match = pattern.match(path.name)
    if match:
        return match["task"], match["ts"]
    # a file renamed by hand: the task is the name without the prefix
    stem = path.stem.removeprefix("samples_").removeprefix("details_")
    return stem, ""


def _files(path: Path, fmt: str) -> list[tuple[Path, str]]:
    if not path.exists():
        raise LogError(f"{path}: no such file or folder")
    if path.is_file():
        return [(path, detect_format(path) if fmt == "auto" else fmt)]
    found = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        if file.name.startswith("results_") or file.suffix not in (".jsonl", ".json", ".csv", ".parquet"):
            continue  # lm-eval / LightEval aggregate results sit next to the per-sample files
        kind = detect_format(file) if fmt == "auto" else fmt
        found.append((file, kind))
    if not found:
        raise LogError(f"{path}: no per-item log files in this folder")
    return found


def read_log(
    path: Path | str,
    *,
    fmt: str = "auto",
    metric: str | None = None,
    id_field: str = "id",
    task_field: str = "task",
    correct_field: str = "correct",
    seed_field: str | None = None,
    seed: str = "0",
) -> Log:
    """Read a file or a folder of per-item logs of one model (module doc for the formats).

    Args:
        path: a log file, or a folder searched recursively (lm-eval reruns of a task in one folder:
            the latest timestamp is kept and the others listed in `Log.notes`).
        fmt: one of `FORMATS` ("auto": from each file's name).
        metric: lm-eval metric field (``name`` or ``name,filter``) / LightEval metrics key.
        id_field, task_field, correct_field, seed_field: plain JSONL / CSV columns (id_field also
            names the LightEval id column when present).
        seed: the seed label of every item when the log has no `seed_field`.

    Returns:
        a `Log`.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise LogError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    log = Log()
    latest: dict[tuple[str, str], tuple[str, Path]] = {}
    plain = []
    for file, kind in _files(path, fmt):
        if kind in ("lm_eval", "lighteval"):
            task, stamp = _task_and_time(file, kind)
            previous = latest.get((kind, task))
            if previous is not None:
                older, newer = sorted([previous, (stamp, file)])
                log.notes.append(f"{task}: kept {newer[1].name}, ignored the older {older[1].name}")
                latest[(kind, task)] = newer
            else:
                latest[(kind, task)] = (stamp, file)
        else:
            plain.append((file, kind))
    for (kind, task), (_, file) in sorted(latest.items()):
        if kind == "lm_eval":
            _read_lm_eval(file, log, seed, metric, task)
        else:
            _read_lighteval(file, log, seed, metric, task, id_field)
    for file, kind in plain:
        _read_plain(file, kind, log, seed, id_field, task_field, correct_field, seed_field)
    if not log.items:
        raise LogError(f"{path}: no items read")
    return log


@dataclass
class Aligned:
    """Before / after correctness on the items both logs share, per (seed, task).

    Attributes:
        before, after: (seed, task) -> bool array over the shared ids (sorted).
        ids: (seed, task) -> the shared ids, in that order.
        problems: one line per (seed, task) with unmatched or duplicated ids.
        dropped: (seed, task) -> number of ids left out of the counts (unmatched or duplicated).
    """

    before: dict[tuple[str, str], np.ndarray]
    after: dict[tuple[str, str], np.ndarray]
    ids: dict[tuple[str, str], list[str]]
    problems: list[str]
    dropped: dict[tuple[str, str], int]


def _few(ids, shown: int = 3) -> str:
    ids = sorted(ids, key=_id_order)
    return ", ".join(ids[:shown]) + (", ..." if len(ids) > shown else "")


def _id_order(item: str):
    return (0, int(item), "") if item.lstrip("-").isdigit() else (1, 0, item)


def align(before: Log, after: Log, *, strict: bool = False, names: tuple[str, str] = ("BEFORE", "AFTER")) -> Aligned:
    """Match items by (seed, task, id).

    A task on one side only is an error. Ids present on one side only, and ids duplicated on either
    side, are left out of the counts and reported in `Aligned.problems` (counts per task, first few
    ids); with `strict` they are an error.
    """
    sides = ((before, after, names[0], names[1]), (after, before, names[1], names[0]))
    for one, other, name, other_name in sides:
        for seed, task in sorted(one.items):
            if (seed, task) not in other.items:
                seed_text = f" seed {seed}" if seed != "0" or len({s for s, _ in one.items}) > 1 else ""
                raise LogError(f"{one.source[task]}: task {task!r}{seed_text} is in {name} but not in {other_name}")
    out = Aligned({}, {}, {}, [], {})
    for key in sorted(before.items):
        b, a = before.items[key], after.items[key]
        dup_b, dup_a = set(before.duplicates.get(key, [])), set(after.duplicates.get(key, []))
        only_b, only_a = set(b) - set(a), set(a) - set(b)
        shared = sorted(set(b) & set(a) - dup_b - dup_a, key=_id_order)
        parts = []
        for ids, what in (
            (only_b, f"only in {names[0]}"),
            (only_a, f"only in {names[1]}"),
            (dup_b, f"duplicated in {names[0]}"),
            (dup_a, f"duplicated in {names[1]}"),
        ):
            if ids:
                parts.append(f"{len(ids)} {'id' if len(ids) == 1 else 'ids'} {what} ({_few(ids)})")
        seed, task = key
        if parts:
            where = f"task {task!r}" + (f" seed {seed}" if len({s for s, _ in before.items}) > 1 else "")
            line = f"{where}: " + "; ".join(parts)
            if strict:
                raise LogError(f"{before.source[task]} vs {after.source[task]}: {line} (--strict)")
            out.problems.append(line)
        if not shared:
            raise LogError(f"{before.source[task]} vs {after.source[task]}: task {task!r}: no item ids in common")
        out.ids[key] = shared
        out.before[key] = np.array([b[i] for i in shared], bool)
        out.after[key] = np.array([a[i] for i in shared], bool)
        out.dropped[key] = len(only_b) + len(only_a) + len((set(b) | set(a)) & (dup_b | dup_a))
    return out


def merge_seeds(logs: list[Log]) -> Log:
    """Several logs of one model, one per seed (repeated inputs), as one `Log` with seeds 0, 1, ..."""
    merged = Log()
    for index, log in enumerate(logs):
        for (_, task), bucket in log.items.items():
            merged.items[(str(index), task)] = bucket
            merged.source.setdefault(task, log.source[task])
            if task in merged.k and merged.k[task] != log.k[task]:
                raise LogError(f"{log.source[task]}: task {task!r}: {log.k[task]} choices, {merged.k[task]} in seed 0")
            merged.k[task] = log.k[task]
        for (_, task), ids in log.duplicates.items():
            merged.duplicates[(str(index), task)] = ids
        merged.notes += log.notes
    return merged


def seeds_of(log: Log) -> list[str]:
    return sorted({s for s, _ in log.items}, key=_id_order)
