"""The `forget-jax` command line (typer).

  forget-jax --version
  forget-jax sweep CONFIG.yaml --out STORE [--resume] [--shard i/N] [--chunk-size N] [--x64]
  forget-jax plot STORE [--x FIELD --y FIELD --var VAR --step last --sel field=value] [--out FILE.png]
  forget-jax plot STORE --var mode_weight --mode K --stage S --x FIELD --y FIELD   (pipeline stores)
  forget-jax plot STORE --stacked --sel field=value                                (pipeline stores)
  forget-jax info STORE
  forget-jax verify STORE
  forget-jax plan CONFIG.yaml [--chunk-size N] [--no-probe]
  forget-jax reproduce NAME|all [--out DIR] [--quick]
  forget-jax fields [--write-readme README.md]
  forget-jax transitions BEFORE AFTER [BEFORE AFTER ...] [--k K | --k-map F] [--out FILE.csv] [--plot FILE.png]

User mistakes (bad config, missing store, bad flag value) end with one line `error: ...` and
exit status 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    help="Simulate forgetting in post-training (two-mode Gaussian mixtures) at sweep scale.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        import jax

        from ._version import __version__

        typer.echo(f"forget-jax {__version__} (jax {jax.__version__})")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="print the forget-jax and jax versions"),
    ] = False,
) -> None:
    # JAX's persistent compilation cache (forget_jax/_cache.py): a rerun loads compiled programs
    from ._cache import enable_compilation_cache

    enable_compilation_cache()


@contextlib.contextmanager
def user_errors():
    """Turn user mistakes into one clear line and exit status 2."""
    from .config import ConfigError
    from .store import StoreError

    try:
        yield
    except (ConfigError, StoreError, FileNotFoundError, KeyError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:  # disk full, --out under a file, permission denied, a directory for a file
        typer.echo(f"error: {_os_error_text(exc)}", err=True)
        raise typer.Exit(2) from None


def _os_error_text(exc: OSError) -> str:
    """One line naming the path(s) and the reason of an OSError (ENOSPC, ENOTDIR, EACCES, EISDIR)."""
    import errno

    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    hints = {
        errno.ENOSPC: "free some space or write the store elsewhere (--out)",
        errno.ENOTDIR: "a parent of this path is a file, not a folder",
        errno.EACCES: "no permission; choose a path you can write",
        errno.EISDIR: "a folder was given where a file is expected",
        errno.EEXIST: "a file is in the way of a folder to create",
    }
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    hint = hints.get(exc.errno or -1)
    return (f"{paths}: " if paths else "") + reason + (f" ({hint})" if hint else "")


# resource caps of `sweep` and `plan` (forget_jax/limits.py), declared once for both commands
NoLimits = Annotated[bool, typer.Option("--no-limits", help="switch every resource cap off")]
MaxConfigs = Annotated[int | None, typer.Option(help="cap on configurations (default 1e7)")]
MaxLoggedPoints = Annotated[int | None, typer.Option(help="cap on logged points per configuration (default 1e5)")]
MaxStoreGb = Annotated[float | None, typer.Option(help="cap on the store's logged values, GiB (default 200)")]
MaxMemoryGb = Annotated[float | None, typer.Option(help="cap on one block's host / device memory, GiB")]


def _limits(no_limits, max_configs, max_logged_points, max_store_gb, max_memory_gb):
    from .limits import Limits

    return Limits.from_overrides(no_limits, max_configs, max_logged_points, max_store_gb, max_memory_gb)


@contextlib.contextmanager
def interrupt_exit():
    """A sweep stopped by SIGINT / SIGTERM: print how to resume (one line) and exit 128 + signal."""
    from .runner.interrupts import Interrupted

    try:
        yield
    except Interrupted as exc:
        typer.echo(str(exc.args[0]), err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted before the sweep started: nothing was written", err=True)
        raise typer.Exit(130) from None


def _load_spec(config: Path, chunk_size: int | None, x64: bool):
    """The validated sweep of `sweep` / `plan` (after their shared flags --chunk-size, --x64)."""
    from .config import load_config

    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"--chunk-size {chunk_size}: must be >= 1")
    spec = load_config(config)
    if x64:
        spec = type(spec)(spec.base.model_copy(update={"x64": True}), spec.axes)
    return spec


def _parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return (0, 1)
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected i/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard {text!r}: needs 0 <= i < N")
    return (i, n)


@app.command()
def sweep(
    config: Annotated[
        Path,
        typer.Argument(
            help="YAML sweep configuration: a path, or a shipped one by name (quickstart, phase_fkl_rkl, chen2025, chen2025_rkl)"
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="zarr store to write")],
    resume: Annotated[bool, typer.Option(help="continue a sweep: skip blocks already in the store")] = False,
    shard: Annotated[str | None, typer.Option(help="run the disjoint slice i of N (e.g. 0/4) into one store")] = None,
    chunk_size: Annotated[
        int | None, typer.Option(help="max configurations per compiled batch (default: memory budget)")
    ] = None,
    x64: Annotated[bool, typer.Option("--x64", help="float64 instead of float32")] = False,
    distributed: Annotated[
        bool, typer.Option(help="multi-host: jax.distributed.initialize, shard by process index")
    ] = False,
    coordinator: Annotated[str | None, typer.Option(help="jax.distributed coordinator host:port")] = None,
    num_processes: Annotated[int | None, typer.Option(help="jax.distributed process count")] = None,
    process_id: Annotated[int | None, typer.Option(help="jax.distributed process id")] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    segment_seconds: Annotated[
        float, typer.Option(help="wall-clock target of one segment: progress and checkpoint interval")
    ] = 10.0,
    segment_logs: Annotated[
        int | None, typer.Option(help="fixed segment length in log points (overrides --segment-seconds)")
    ] = None,
    refuse_damaged: Annotated[
        bool, typer.Option(help="with --resume: refuse a damaged store instead of recomputing its damaged blocks")
    ] = False,
    max_hours: Annotated[
        float | None, typer.Option(help="refuse a run estimated (from its first segment) to take longer")
    ] = None,
    extend: Annotated[
        bool,
        typer.Option(
            help="OUT holds a smaller sweep (fewer seeds / grid values): add the new configurations, copying the rest"
        ),
    ] = False,
    no_limits: NoLimits = False,
    max_configs: MaxConfigs = None,
    max_logged_points: MaxLoggedPoints = None,
    max_store_gb: MaxStoreGb = None,
    max_memory_gb: MaxMemoryGb = None,
):
    """Run a sweep: YAML grid -> labelled arrays in a zarr store (written as it goes).

    A block runs in segments of about --segment-seconds, each checkpointed into the store:
    Ctrl-C (or SIGTERM) finishes the segment, saves, and prints the command that resumes."""
    with user_errors(), interrupt_exit():
        from .runner import initialize_distributed, run

        spec = _load_spec(config, chunk_size, x64)
        shard_tuple = _parse_shard(shard)
        if distributed:
            if shard is not None:
                raise ValueError("--distributed takes its shard from jax.process_index(); drop --shard")
            shard_tuple = initialize_distributed(coordinator, num_processes, process_id)
        ds = run(
            spec,
            out,
            resume=resume,
            shard=shard_tuple,
            chunk_size=chunk_size,
            progress=progress,
            segment_seconds=segment_seconds,
            segment_logs=segment_logs,
            refuse_damaged=refuse_damaged,
            max_hours=max_hours,
            extend=extend,
            limits=_limits(no_limits, max_configs, max_logged_points, max_store_gb, max_memory_gb),
            command=["forget-jax", *sys.argv[1:]],
        )
        done = int(ds["completed"].sum())
        typer.echo(
            f"wrote {out}: {done}/{ds['completed'].size} configurations done, dims "
            + ", ".join(f"{k}={v}" for k, v in ds.sizes.items())
        )


@app.command()
def plan(
    config: Annotated[Path, typer.Argument(help="YAML sweep configuration (a path or a shipped name)")],
    chunk_size: Annotated[int | None, typer.Option(help="max configurations per block (as for sweep)")] = None,
    probe: Annotated[
        bool, typer.Option(help="compile and time one segment of each compile group (nothing is written)")
    ] = True,
    x64: Annotated[bool, typer.Option("--x64", help="float64 instead of float32")] = False,
    no_limits: NoLimits = False,
    max_configs: MaxConfigs = None,
    max_logged_points: MaxLoggedPoints = None,
    max_store_gb: MaxStoreGb = None,
    max_memory_gb: MaxMemoryGb = None,
):
    """Dry run: compile groups, configurations, blocks, segments, memory and estimated time
    (and the resource caps checked, as `sweep` does before anything runs)."""
    with user_errors(), interrupt_exit():
        from .limits import check_limits
        from .runner.dry_run import plan_report
        from .runner.execute import warn_starts
        from .runner.plan import default_chunk_size

        spec = _load_spec(config, chunk_size, x64)
        warn_starts(spec)

        limits = _limits(no_limits, max_configs, max_logged_points, max_store_gb, max_memory_gb)
        check_limits(spec, limits, chunk_size or 1)  # the caps that do not depend on the block size, before any probe
        # then with the block size `sweep` will use (plan.py; remembered for plan_report)
        check_limits(spec, limits, chunk_size or default_chunk_size(spec))
        typer.echo("\n".join(plan_report(spec, chunk_size, probe=probe)))


@app.command()
def info(store: Annotated[Path, typer.Argument(help="zarr store written by `forget-jax sweep`")]):
    """Dims, sizes, what is done, how long it took."""
    with user_errors():
        from .store import block_markers, open_store

        ds = open_store(store)
        attrs = ds.attrs
        completed = ds["completed"].values
        lines = [
            f"store      {store}",
            f"sweep      {attrs.get('name', '?')}  (forget-jax {attrs.get('forget_jax_version')}, "
            f"jax {attrs.get('jax_version')}, {attrs.get('device_kind')} x{attrs.get('local_device_count')})",
            "dims       " + ", ".join(f"{k}={v}" for k, v in ds.sizes.items()),
        ]
        for name, coord in ds.coords.items():
            values = coord.values
            shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
            lines.append(f"  {name:<20} [{shown}]")
        markers = block_markers(store)
        lines.append(
            f"done       {int(completed.sum())}/{completed.size} configurations "
            f"({len(markers)}/{attrs.get('blocks_total', '?')} blocks)"
        )
        diverged = ds["diverged"].values
        line = f"diverged   {int(diverged.sum())} configurations"
        if diverged.any() and "diverged_reason" in ds:
            from .train import DIVERGENCE_REASONS

            codes = ds["diverged_reason"].values[diverged]
            steps = ds["diverged_step"].values[diverged] if "diverged_step" in ds else None
            counts = ", ".join(
                f"{name} {int((codes == i).sum())}" for i, name in enumerate(DIVERGENCE_REASONS) if (codes == i).any()
            )
            line += f" ({counts}" + (f"; first at step {int(steps.min())}" if steps is not None else "") + ")"
        lines.append(line)
        compile_s = sum(m.get("compile_s", 0.0) for m in markers)
        run_s = sum(m.get("run_s", 0.0) for m in markers)
        wall_s = sum(m.get("wall_s", 0.0) for m in markers)
        lines.append(
            f"time       wall {wall_s:.2f} s = compile {compile_s:.2f} s + run {run_s:.2f} s + I/O "
            f"{max(wall_s - compile_s - run_s, 0):.2f} s"
        )
        typer.echo("\n".join(lines))


@app.command()
def export(
    store: Annotated[Path, typer.Argument(help="zarr store written by `forget-jax sweep`")],
    out: Annotated[Path, typer.Option("--out", "-o", help="netCDF file to write (.nc)")],
    force: Annotated[bool, typer.Option("--force", help="overwrite OUT if it exists")] = False,
):
    """Export a store to netCDF (h5netcdf engine)."""
    with user_errors():
        from .store import export_netcdf

        typer.echo(f"wrote {export_netcdf(store, out, force=force)}")


@app.command()
def verify(store: Annotated[Path, typer.Argument(help="zarr store written by `forget-jax sweep`")]):
    """Check every committed chunk, coordinate and metadata file against its checksum and the
    store's bookkeeping; name what is damaged. Exit 0 healthy, 1 damaged (`--resume` repairs it)."""
    with user_errors():
        from .store import verify as verify_store

        report = verify_store(store)
    typer.echo("\n".join(report.lines()))
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def plot(
    store: Annotated[Path, typer.Argument(help="zarr store written by `forget-jax sweep`")],
    x: Annotated[
        str | None,
        typer.Option(
            help="grid field on the x axis, or 'step' for trajectories (default: the first two grid axes with >1 value give a heatmap, one gives a line plot)"
        ),
    ] = None,
    y: Annotated[
        str | None, typer.Option(help="grid field on the y axis (heatmap); omit for a trajectory plot when x is 'step'")
    ] = None,
    var: Annotated[str, typer.Option(help="data variable to plot")] = "old_weight",
    step: Annotated[
        str,
        typer.Option(help="'last', 'mean' (over logged steps) or an integer step (the nearest logged step is used)"),
    ] = "last",
    sel: Annotated[list[str] | None, typer.Option(help="fix a grid axis: field=value (repeatable)")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="output image (.png or .pdf); default STORE.<var>.png")
    ] = None,
    mode: Annotated[
        int | None,
        typer.Option(help="pipeline stores: the mode (task) k of a per-mode variable (mode_weight, mode_drift, ...)"),
    ] = None,
    stage: Annotated[
        int | None,
        typer.Option(help="pipeline stores: plot the value at the last logged step of this stage (instead of --step)"),
    ] = None,
    stacked: Annotated[
        bool,
        typer.Option(
            "--stacked",
            help="pipeline stores: the mode weights of one configuration (--sel picks it) as stacked areas over "
            "the steps, with the stage boundaries and labels",
        ),
    ] = False,
):
    """Phase diagram (heatmap over two grid axes) or trajectories (variable vs step); for pipeline
    stores also per-task variables at the end of a stage (--var mode_weight --mode 1 --stage 1) and
    the stacked mode weights over the stages (--stacked --sel ...)."""
    with user_errors():
        from .plots import default_out, plot_mode_weights, plot_store
        from .store import open_store

        ds = open_store(store)
        selections = {}
        for item in sel or []:
            if "=" not in item:
                raise ValueError(f"--sel {item!r}: expected field=value")
            k, v = item.split("=", 1)
            selections[k.strip()] = v.strip()
        if stacked:
            if x is not None or y is not None or mode is not None or stage is not None:
                raise ValueError("--stacked draws the mode weights over all steps: drop --x, --y, --mode and --stage")
            shown = "mode_weight" if var == "old_weight" else var
            target = out or default_out(ds, f"{shown}_stacked")
            plot_mode_weights(ds, sel=selections, out=target, var=shown)
        else:
            name = var + (f"_mode{mode}" if mode is not None else "") + (f"_stage{stage}" if stage is not None else "")
            target = out or default_out(ds, name)
            plot_store(ds, x=x, y=y, var=var, step=step, sel=selections, out=target, mode=mode, stage=stage)
        typer.echo(f"wrote {target}")


@app.command()
def reproduce(
    name: Annotated[str, typer.Argument(help="study name (pd1, pd2, pd3, pd4, pd6, rates, chen2025) or 'all'")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("runs/reproduce"),
    quick: Annotated[bool, typer.Option(help="reduced grids that run in minutes on a laptop CPU")] = False,
    progress: Annotated[bool, typer.Option(help="one progress bar over all studies")] = True,
):
    """Regenerate a study of docs/science/studies.md: stores, figures and a PASS/FAIL report.

    Ctrl-C finishes the running segments, checkpoints them and prints the command that resumes."""
    with user_errors(), interrupt_exit():
        from .reproduce import run_studies

        report = run_studies(name, out, quick=quick, progress=progress)
        typer.echo(f"wrote {out / 'report.md'}: {report['passed']}/{report['total']} claims PASS")
        if report["passed"] != report["total"]:
            raise typer.Exit(1)


@app.command()
def fields(
    write_readme: Annotated[Path | None, typer.Option(help="rewrite the configuration table of this README")] = None,
):
    """Print the configuration table (every field: default, kind, bounds, symbol, meaning), or
    rewrite it in a README between its `fields:begin` / `fields:end` markers."""
    with user_errors():
        from . import fields as field_table
        from . import items, objectives  # noqa: F401  (declare the objectives' knobs and the item fields)

        table = field_table.markdown_table()
        if write_readme is None:
            typer.echo(table)
            return
        write_readme.write_text(field_table.readme_with_table(write_readme.read_text(), table))
        typer.echo(f"wrote the configuration table into {write_readme}")


@app.command()
def transitions(
    logs: Annotated[
        list[Path],
        typer.Argument(
            help="BEFORE AFTER: per-item logs (file or folder) of the model before and after; repeat the pair for more seeds (B1 A1 B2 A2 ...)"
        ),
    ],
    fmt: Annotated[
        str, typer.Option("--format", help="auto (from file names), lm_eval, lighteval, jsonl or csv")
    ] = "auto",
    metric: Annotated[
        str | None,
        typer.Option(
            help="lm_eval field (default acc; NAME,FILTER picks an lm-eval filter) / LightEval metrics key (default extractive_match)"
        ),
    ] = None,
    id_field: Annotated[str, typer.Option(help="jsonl/csv: item id column")] = "id",
    task_field: Annotated[str, typer.Option(help="jsonl/csv: task column")] = "task",
    correct_field: Annotated[str, typer.Option(help="jsonl/csv: correctness column (0/1 or true/false)")] = "correct",
    seed_field: Annotated[str | None, typer.Option(help="jsonl/csv: seed column (several seeds in one file)")] = None,
    k: Annotated[int | None, typer.Option("--k", help="answer choices of every task (0 = free-form)")] = None,
    k_map: Annotated[Path | None, typer.Option(help="YAML/JSON task -> k (0 or absent = free-form)")] = None,
    category_map: Annotated[
        Path | None, typer.Option(help="YAML/JSON task -> category: category rows, OVERALL over categories")
    ] = None,
    strict: Annotated[bool, typer.Option(help="unmatched or duplicated item ids are an error")] = False,
    seed_consistency: Annotated[
        int | None, typer.Option(help="keep items whose transition agrees across every combination of M seeds")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write the rows to FILE.csv or FILE.json")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="bar plot of chance-adjusted forgetting / backward transfer (.png)")
    ] = None,
):
    """Sample-wise forgetting (1->0) and backward transfer (0->1), chance-adjusted, between two
    models' per-item evaluation logs (docs/science/methods.md E)."""
    with user_errors():
        from . import evaluation as ev

        if len(logs) < 2 or len(logs) % 2:
            raise ValueError(f"expected BEFORE AFTER pairs, got {len(logs)} paths")
        if out is not None and out.suffix not in (".csv", ".json"):
            raise ValueError(f"--out {out}: expected a .csv or .json file")
        if k is not None and k_map is not None:
            raise ValueError("give --k or --k-map, not both")
        if seed_field is not None and len(logs) > 2:
            raise ValueError("--seed-field reads the seeds from the files; give one BEFORE AFTER pair")
        options: dict[str, Any] = dict(
            fmt=fmt,
            metric=metric,
            id_field=id_field,
            task_field=task_field,
            correct_field=correct_field,
            seed_field=seed_field,
        )
        if seed_field is not None:
            sides = [ev.read_log(logs[side], **options) for side in (0, 1)]
        else:
            sides = [ev.merge_seeds([ev.read_log(p, **options) for p in logs[side::2]]) for side in (0, 1)]
        aligned = ev.align(sides[0], sides[1], strict=strict)
        tasks = sorted({t for _, t in aligned.ids})
        k_table = ev.load_mapping(k_map, "--k-map") if k_map is not None else None
        ks = ev.resolve_k(tasks, sides[0], sides[1], k=k, k_map=k_table, k_map_path=f"--k-map {k_map}")
        if seed_consistency is not None:
            if category_map is not None:
                raise ValueError("--seed-consistency reports per task and OVERALL; drop --category-map")
            rows = ev.consistency_rows(aligned, ks, seed_consistency)
        else:
            categories = ev.load_mapping(category_map, "--category-map") if category_map is not None else None
            categories = {t: str(c) for t, c in categories.items()} if categories is not None else None
            rows = ev.summarize(ev.task_metrics(aligned, ks), ks, categories, f"--category-map {category_map}")
        for line in [*sides[0].notes, *sides[1].notes]:
            typer.echo(f"note: {line}", err=True)
        for line in aligned.problems:
            typer.echo(f"warning: {line} (left out of the counts; --strict makes this an error)", err=True)
        seeds = len({s for s, _ in aligned.ids})
        typer.echo(ev.format_table(rows))
        if seeds > 1 and seed_consistency is None:
            typer.echo(f"({seeds} seeds: mean over seeds; --out adds the std columns, ddof = 1)")
        if out is not None:
            typer.echo(f"wrote {ev.write_rows(rows, out)}")
        if plot is not None:
            typer.echo(f"wrote {ev.plot_rows(rows, plot)}")


def _exit_at_once(signum, frame):  # pragma: no cover - exercised by subprocess tests
    """Before a sweep installs its own handler nothing needs saving: exit at once, cleanly."""
    sys.stderr.write("\ninterrupted before anything ran: nothing was written\n")
    sys.stderr.flush()
    os._exit(128 + int(signum))


def main() -> None:  # pragma: no cover - console entry point
    """`forget-jax`: SIGINT / SIGTERM exit cleanly from the first instruction on (sweeps then
    replace this handler by runner/interrupts.py's, which saves a checkpoint first)."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _exit_at_once)
    from . import host_devices

    try:  # one CPU device per core (before JAX initialises its backends): blocks shard over them
        host_devices.configure()
    except ValueError as exc:  # a bad FORGET_JAX_HOST_DEVICES
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
