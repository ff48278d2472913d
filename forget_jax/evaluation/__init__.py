"""Sample-wise forgetting on real per-item evaluation logs (docs/science/methods.md E):
readers for lm-evaluation-harness, LightEval and plain JSONL / CSV logs, before / after alignment
by (task, id), the published code's aggregation, tables and plots. The formulas live in
`forget_jax.samplewise`; `forget-jax transitions` is the command line."""

from .logs import FORMATS, Aligned, Log, LogError, align, detect_format, merge_seeds, read_log
from .tables import (
    OUT_COLUMNS,
    consistency_rows,
    format_table,
    load_mapping,
    plot_rows,
    resolve_k,
    seed_consistent_counts,
    summarize,
    task_metrics,
    write_rows,
)

__all__ = [
    "FORMATS",
    "OUT_COLUMNS",
    "Aligned",
    "Log",
    "LogError",
    "align",
    "consistency_rows",
    "detect_format",
    "format_table",
    "load_mapping",
    "merge_seeds",
    "plot_rows",
    "read_log",
    "resolve_k",
    "seed_consistent_counts",
    "summarize",
    "task_metrics",
    "write_rows",
]
