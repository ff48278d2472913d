"""`forget-jax reproduce`: regenerate the studies of docs/science/studies.md with PASS/FAIL claims.

Studies (one module each; configurations in `configs/reproduce/<study>.yaml`):

=========  ===================================================================================
pd1        mass forgetting vs separation: FKL new-only / FKL with replay / RKL (T1-T3, PD1)
pd2        RKL old-mean drift vs separation: ln delta_max against Delta^2, slope -1/8 (T4, PD2)
pd3        old-mode starvation: (batch size x replay ratio), ((1-lambda)(1-beta))^B (T6, PD3)
pd4        FKL replay: beta_infinity = lambda (T2, PD4)
pd5        SDFT / TTT-Discover / OAPL: old weight and drift over each method's knobs (T7-T9, PD5)
pd6        FKL weight time courses under direct / logit / replicator updates (T1, PD6)
rates      RKL convergence rates vs 1 - eta lambda_min(H), stability 2 / lambda_max (T5)
chen2025   CRNC25's toy: drop / gain of FKL, their surrogate RKL and the exact RKL (section 5)
samplewise sample-wise F_true vs mass loss, generative vs likelihood answering (methods.md E, T1-T3)
pipelines  stage schedules over K modes: FKL replay optimum, SFT -> RL recovery time, starvation (P1-P3)
=========  ===================================================================================

`run_studies(name, out, quick)` runs the sweeps (independent studies concurrently in threads:
on a CPU, XLA compilation dominates and is single-threaded), then analyses each study, writes
`out/figures/*.png|pdf`, `out/report.md` and `out/report.json`, and returns the report dict
(`passed`, `total`, `claims`, ...).
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from .framework import Claim, Context, StoreRecord, ensure_store, study_configs

#: Study names in report order.
STUDY_NAMES: tuple[str, ...] = (
    "pd1",
    "pd2",
    "pd3",
    "pd4",
    "pd5",
    "pd6",
    "rates",
    "chen2025",
    "samplewise",
    "pipelines",
)

__all__ = ["STUDY_NAMES", "Claim", "run_studies", "study_module"]


def study_module(name: str):
    if name not in STUDY_NAMES:
        raise ValueError(f"unknown study {name!r}; choose one of {', '.join(STUDY_NAMES)} or 'all'")
    return importlib.import_module(f"{__name__}.{name}")


_BAR: dict = {}


def _log(verbose: bool, message: str) -> None:
    if not verbose:
        return
    bar = _BAR.get("bar")
    if bar is not None and not bar.disable:
        bar.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr, flush=True)


def _work(config: dict) -> int:
    """Config-steps of one study store (the unit of the aggregated progress bar)."""
    from ..config import load_config
    from ..runner.execute import config_steps
    from ..runner.plan import make_plan

    spec = load_config(config)
    return config_steps(spec, make_plan(spec).blocks)


def _run_sweeps(name: str, out: Path, quick: bool, progress: bool, verbose: bool):
    configs = study_configs(name, quick)
    stores, records = {}, []
    bar = _BAR.get("bar")
    from ..runner import interrupts

    for store_name, config in configs.items():
        if interrupts.requested():  # a queued study does not start after an interrupt
            raise interrupts.Interrupted(f"interrupted before {name}/{store_name} started; {interrupts.hint()}")
        _log(verbose, f"  {name}/{store_name}: started")
        advanced = [0]

        def on_advance(k: int, advanced=advanced) -> None:
            advanced[0] += k
            if bar is not None:
                bar.update(k)

        ds, record = ensure_store(config, out / f"{store_name}.zarr", on_advance=on_advance)
        if bar is not None:  # reused blocks never advance: count them as done
            bar.update(max(0, _work(config) - advanced[0]))
        stores[store_name] = ds
        records.append(record)
        _log(
            verbose,
            f"  {name}/{store_name}: {'reused' if record.reused else 'computed'} "
            f"({record.configs} configurations, {record.seconds:.1f} s)",
        )
    prepare = getattr(study_module(name), "prepare", None)
    if prepare is not None:  # study-specific precomputation, still in the worker thread
        prepare(stores)
    return stores, records


def run_studies(
    name: str, out, quick: bool = False, *, workers: int | None = None, progress: bool = False, verbose: bool = True
) -> dict:
    """Run one study (`name`) or all of them (`"all"`) into the folder `out`.

    Args:
        name: a study name (see STUDY_NAMES) or "all".
        out: output folder (stores `<store>.zarr`, `figures/`, `report.md`, `report.json`).
        quick: reduced grids (the YAML's `quick:` section); about 2-4 minutes for all studies
            on a 2-core CPU, most of it XLA compilation.
        workers: studies whose sweeps run concurrently (threads); default min(4, max(2, cpus)).
        progress: one progress bar for all studies (config-steps, with an ETA), moving from the
            first segment on; lines per store and study are written above it.
        verbose: one line per store and per study on stderr.

    Returns:
        The report dict: `passed`, `total`, `failed` (claim ids), `claims` (list of dicts),
        `studies`, `runtime_s`, ...
    """
    from tqdm.auto import tqdm

    from ..runner import interrupts
    from .report import build_report, write_report

    names = list(STUDY_NAMES) if name == "all" else [name]
    modules = {n: study_module(n) for n in names}
    work = {n: [_work(c) for c in study_configs(n, quick).values()] for n in names}  # validates every config
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    workers = workers or min(4, max(2, os.cpu_count() or 1))
    order = sorted(names, key=lambda n: -getattr(modules[n], "COST", 1.0))
    results: dict[str, dict] = {}
    total = sum(sum(w) for w in work.values())
    _log(
        verbose,
        f"reproduce {name}{' --quick' if quick else ''}: {len(names)} studies, "
        f"{sum(len(w) for w in work.values())} stores, {total:.3g} config-steps -> {out}",
    )
    command = ["forget-jax", "reproduce", name, "--out", str(out), *(["--quick"] if quick else [])]
    hint = "resume with: " + " ".join(command) + " (finished stores are reused, checkpointed blocks continue)"
    _BAR["bar"] = tqdm(
        total=total, unit="config-step", unit_scale=True, desc="reproduce", disable=not progress, mininterval=0.5
    )
    with (
        _BAR["bar"],
        interrupts.handle_interrupts(hint),
        ThreadPoolExecutor(max_workers=min(workers, len(names))) as pool,
    ):
        futures = {}
        for n in order:
            futures[pool.submit(_run_sweeps, n, out, quick, progress, verbose)] = (n, time.perf_counter())
        for future in as_completed(futures):
            n, _submitted = futures[future]
            stores, records = future.result()
            ctx = Context(study=n, out=out, quick=quick)
            t0 = time.perf_counter()
            claims = modules[n].analyze(stores, ctx)
            declared = set(modules[n].CLAIMS)
            produced = [c.id for c in claims]
            if set(produced) != declared or len(produced) != len(declared):
                raise RuntimeError(
                    f"study {n}: produced claims {sorted(produced)} differ from declared {sorted(declared)}"
                )
            seconds = sum(r.seconds for r in records) + time.perf_counter() - t0
            results[n] = dict(
                name=n,
                title=modules[n].TITLE,
                claims=claims,
                figures=ctx.figures,
                stores=records,
                notes=ctx.notes,
                seconds=seconds,
            )
            _log(verbose, f"{n}: {sum(c.passed for c in claims)}/{len(claims)} claims PASS ({seconds:.1f} s)")
    _BAR.pop("bar", None)
    ordered = [results[n] for n in names]
    report = build_report(ordered, quick=quick, runtime_s=time.perf_counter() - start, out=out)
    write_report(report, ordered, out)
    return report


_ = (Claim, StoreRecord)
