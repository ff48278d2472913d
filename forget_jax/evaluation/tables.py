"""Sample-wise forgetting tables of aligned before / after logs (docs/science/methods.md E).

Per (seed, task) the metrics of `forget_jax.samplewise.transitions` with that task's k (the chance
adjustment is per task, as in the published code). Aggregation as the published code
(``create_pivot_table``): every task weighs the same regardless of its n; categories are the
unweighted mean over their tasks per seed; OVERALL is the unweighted mean over the tasks (over the
categories when a category map is given, as the published code does), per seed; rows report the
mean and the sample std (ddof = 1) over seeds. Count columns (n, n_00 ... n_11) of category and
OVERALL rows are totals over their tasks; the rate columns are the unweighted means.

Deliberate differences from the published code: k is per task (from the records, ``--k`` or
``--k-map``) instead of a default k = 4; free-form tasks (k = 0) are kept with the raw rates
instead of being dropped; the relative transfer divides by n (1 - a_pre).
"""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from .. import samplewise as sw
from .logs import Aligned, Log, LogError

#: output columns of `forget-jax transitions` (CSV / JSON / table), in order
OUT_COLUMNS = ("task", "k", *sw.COLUMNS[:14])
COUNT_COLUMNS = ("n", "n_00", "n_01", "n_10", "n_11")
METRIC_COLUMNS = OUT_COLUMNS[2:]
OVERALL = "OVERALL"


def load_mapping(path: Path | str, option: str) -> dict[str, Any]:
    """A YAML or JSON file mapping task -> value (k or category)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise LogError(f"{option} {path}: unreadable file ({exc.__class__.__name__})") from None
    except yaml.YAMLError as exc:
        raise LogError(f"{option} {path}: not YAML/JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise LogError(f"{option} {path}: expected a mapping task -> value")
    return {str(key): value for key, value in data.items()}


def _check_k(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or value < 0:
        raise LogError(f"{where}: k = {value!r} is not 0 (free-form) or an integer >= 2")
    if int(value) == 1:
        raise LogError(f"{where}: k = 1 (needs 0 for free-form or k >= 2 choices)")
    return int(value)


def resolve_k(
    tasks: list[str],
    before: Log,
    after: Log,
    *,
    k: int | None = None,
    k_map: dict[str, Any] | None = None,
    k_map_path: str = "--k-map",
) -> dict[str, int]:
    """task -> k (0 = free-form): `k` for every task, else the map (absent = free-form), else the
    number of answer choices the records carry (free-form where they carry none)."""
    if k is not None:
        value = _check_k(k, "--k")
        return dict.fromkeys(tasks, value)
    if k_map is not None:
        return {task: _check_k(k_map.get(task, 0), f"{k_map_path}: task {task!r}") for task in tasks}
    out = {}
    for task in tasks:
        kb, ka = before.k.get(task), after.k.get(task)
        if kb is not None and ka is not None and kb != ka:
            raise LogError(
                f"{after.source[task]}: task {task!r}: {ka} answer choices, {kb} in {before.source[task]} (give --k-map)"
            )
        out[task] = kb or ka or 0
    return out


def task_metrics(aligned: Aligned, ks: dict[str, int]) -> dict[tuple[str, str], dict[str, float]]:
    """(seed, task) -> every column of `samplewise.COLUMNS` as floats."""
    out = {}
    for key, before in aligned.before.items():
        r = sw.transitions(before, aligned.after[key], k=ks[key[1]])
        out[key] = {name: float(value) for name, value in r.items()}
    return out


def _combine(rows: list[dict[str, Any]], weights_equal_over: list[list[dict[str, Any]]] | None = None):
    """Totals for counts, unweighted means for rates, over `rows` (or over group means)."""
    groups = weights_equal_over or [[r] for r in rows]
    means = [{c: float(np.mean([r[c] for r in g])) for c in METRIC_COLUMNS} for g in groups]
    out = {c: float(np.mean([m[c] for m in means])) for c in METRIC_COLUMNS}
    for c in COUNT_COLUMNS:
        out[c] = float(sum(r[c] for r in rows))
    return out


def summarize(
    metrics: dict[tuple[str, str], dict[str, float]],
    ks: dict[str, int],
    categories: dict[str, str] | None = None,
    category_path: str = "--category-map",
) -> list[dict[str, Any]]:
    """Rows: one per task, one per category (``category:NAME``, when `categories` maps task ->
    category), then OVERALL; each metric the mean over seeds, with ``<metric>_std`` (ddof = 1) and
    ``seeds`` columns added when there are several seeds."""
    seeds = sorted({s for s, _ in metrics})
    tasks = sorted({t for _, t in metrics})
    if categories is not None:
        missing = [t for t in tasks if t not in categories]
        if missing:
            raise LogError(f"{category_path}: task {missing[0]!r} has no category ({len(missing)} tasks unmapped)")
    per_seed: dict[str, dict[str, dict[str, float]]] = {s: {} for s in seeds}
    for s in seeds:
        for t in tasks:
            per_seed[s][t] = metrics[(s, t)]
        if categories is not None:
            names = sorted({categories[t] for t in tasks})
            groups = {c: [metrics[(s, t)] for t in tasks if categories[t] == c] for c in names}
            for c, rows in groups.items():
                per_seed[s][f"category:{c}"] = _combine(rows)
            per_seed[s][OVERALL] = _combine([metrics[(s, t)] for t in tasks], list(groups.values()))
        else:
            per_seed[s][OVERALL] = _combine([metrics[(s, t)] for t in tasks])
    out = []
    for name in per_seed[seeds[0]]:
        values = {c: np.array([per_seed[s][name][c] for s in seeds]) for c in METRIC_COLUMNS}
        row: dict[str, Any] = {"task": name, "k": (ks[name] or None) if name in ks else None}
        row.update({c: float(v.mean()) for c, v in values.items()})
        if len(seeds) > 1:
            row["seeds"] = len(seeds)
            row.update({f"{c}_std": float(v.std(ddof=1)) for c, v in values.items()})
        out.append(row)
    return out


def seed_consistent_counts(before: np.ndarray, after: np.ndarray, group_size: int) -> dict[str, float]:
    """The published code's seed-consistency variant (methods.md E): for every combination of
    `group_size` seeds keep the items whose transition label (00, 01, 10, 11) is the same in all of
    them, count each label, and average the counts over the combinations.

    Args:
        before, after: [S, N] correctness per seed and item (the same items in every seed).
        group_size: seeds per combination, 2 <= group_size <= S.

    Returns:
        mean counts n_00, n_01, n_10, n_11 and the number of combinations.
    """
    labels = 2 * np.asarray(before, np.int64) + np.asarray(after, np.int64)
    seeds = labels.shape[0]
    if not 2 <= group_size <= seeds:
        raise LogError(f"--seed-consistency {group_size}: needs 2 <= m <= the number of seeds ({seeds})")
    combos = list(itertools.combinations(range(seeds), group_size))
    totals = np.zeros(4)
    for combo in combos:
        chosen = labels[list(combo)]
        agree = np.all(chosen == chosen[0], axis=0)
        totals += np.bincount(chosen[0][agree], minlength=4)
    mean = totals / len(combos)
    return {"n_00": mean[0], "n_01": mean[1], "n_10": mean[2], "n_11": mean[3], "combinations": len(combos)}


def consistency_rows(aligned: Aligned, ks: dict[str, int], group_size: int) -> list[dict[str, Any]]:
    """One row per task from the seed-consistent mean counts (the items of every seed), then OVERALL
    (unweighted mean over tasks). Items not evaluated in every seed are left out."""
    tasks = sorted({t for _, t in aligned.ids})
    seeds = sorted({s for s, _ in aligned.ids})
    rows = []
    for task in tasks:
        common = set.intersection(*(set(aligned.ids[(s, task)]) for s in seeds))
        order = sorted(common)
        stack = []
        for side in (aligned.before, aligned.after):
            per_seed = []
            for s in seeds:
                position = {item: i for i, item in enumerate(aligned.ids[(s, task)])}
                per_seed.append(side[(s, task)][[position[i] for i in order]])
            stack.append(np.stack(per_seed))
        counts = seed_consistent_counts(stack[0], stack[1], group_size)
        r = sw.rates_from_counts(counts["n_00"], counts["n_01"], counts["n_10"], counts["n_11"], ks[task])
        rows.append({"task": task, "k": ks[task] or None, **{c: float(r[c]) for c in METRIC_COLUMNS}})
    overall = _combine(rows)
    rows.append({"task": OVERALL, "k": None, **overall})
    return rows


def _cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column == "task":
        return str(value)
    if column == "k" or (column in COUNT_COLUMNS and float(value).is_integer()):
        return str(int(value))
    if column in COUNT_COLUMNS:
        return f"{value:.1f}"
    return f"{value:.4f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of the output columns (k blank for free-form)."""
    cells = [list(OUT_COLUMNS)] + [[_cell(c, row.get(c)) for c in OUT_COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(OUT_COLUMNS))]
    lines = []
    for line in cells:
        lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths))))
    return "\n".join(lines)


def _rounded(value: Any) -> Any:
    """Floats to 7 significant digits (the metrics are float32)."""
    return float(f"{value:.7g}") if isinstance(value, float) else value


def write_rows(rows: list[dict[str, Any]], path: Path | str) -> Path:
    """CSV (header = the columns, k empty for free-form) or JSON (a list of row objects, k null)."""
    path = Path(path)
    columns = list(OUT_COLUMNS) + [c for c in rows[0] if c not in OUT_COLUMNS]
    if path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({c: "" if row.get(c) is None else _rounded(row[c]) for c in columns})
    elif path.suffix == ".json":
        path.write_text(json.dumps([{c: _rounded(row.get(c)) for c in columns} for row in rows], indent=1) + "\n")
    else:
        raise LogError(f"--out {path}: expected a .csv or .json file")
    return path


def plot_rows(rows: list[dict[str, Any]], path: Path | str, title: str = "") -> Path:
    """Per-task bars of chance-adjusted forgetting F_true and backward transfer BT_true (error
    bars: std over seeds when there are several), OVERALL last."""
    import matplotlib.pyplot as plt

    path = Path(path)
    names = [r["task"] for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(rows) + 1.5), 3.6))
    for offset, column, label, color in (
        (-0.2, "forgetting_true", "forgetting (1→0), chance-adjusted", "tab:red"),
        (0.2, "backward_transfer_true", "backward transfer (0→1), chance-adjusted", "tab:blue"),
    ):
        errors = [r.get(f"{column}_std", 0.0) for r in rows] if "seeds" in rows[0] else None
        ax.bar(x + offset, [r[column] for r in rows], 0.4, yerr=errors, label=label, color=color, capsize=3)
    labels = [
        n if n == OVERALL or n.startswith("category:") else f"{n}\n({'k=' + str(r['k']) if r['k'] else 'free-form'})"
        for n, r in zip(names, rows)
    ]
    ax.set_xticks(x, labels, fontsize=8)
    tops = [r[c] + r.get(f"{c}_std", 0.0) for r in rows for c in ("forgetting_true", "backward_transfer_true")]
    ax.set_ylim(0, 1.4 * max([*tops, 1e-3]))  # headroom for the legend
    ax.set_ylabel("share of items")
    ax.set_title(title or "sample-wise forgetting and backward transfer")
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
