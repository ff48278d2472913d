"""Throughput of forget-jax: config-steps per second (configurations x optimisation steps / second)

* vs configurations per launch (1 ... 1e6: a point is skipped when its predicted run time
  exceeds --max-point-s or its program does not fit in memory, and the row says so),
* vs the batch size B (8, 64, 512),

for the cases of _common.CASES (FKL and RKL pathwise with ancestral sampling, population mode,
FKL at d = 16) in both seed layouts (`own`: every configuration its own seed; `sweep`: a grid
times --seeds seeds), and, in the same process, the per-configuration loops a user would
otherwise write: a Python loop over `train.simulate_one` (the jitted single-configuration
function) and the hand-written PyTorch eager loop (d = 1 FKL / RKL), each timed on a subset and
reported per config-step. "engine x" is the engine's rate at --configs divided by the loop's.

Protocol: `train.compiled_call` (ahead-of-time compilation, timed apart), one warm-up call,
block_until_ready, the median of --repeats timed calls (1 when the warm-up took > 10 s).

    python benchmarks/throughput.py                 # full (CPU: about an hour; GPU: minutes)
    python benchmarks/throughput.py --quick         # smoke test (FKL, RKL), < 1 min
    python benchmarks/throughput.py --quick --cases fkl_population,fkl_d16   # the other cases
    python benchmarks/throughput.py --cases fkl --layouts sweep --scaling 1024,4096

Writes throughput.json / throughput.md to benchmarks/results (--quick: a temporary folder) and
plots throughput_vs_configs.png / throughput_vs_batch.png to benchmarks/plots.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C


def available_bytes() -> int | None:
    """Memory a launch may use: the device's free memory (bytes_limit - bytes_in_use) on an
    accelerator, the host's MemAvailable on CPU."""
    import jax

    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def program_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def scaling_curve(case, layout, counts, args) -> dict:
    """Engine rows for each configuration count; stops at the first count whose predicted run
    time (linear in n from the previous point) exceeds --max-point-s."""
    setup = C.make_setup(case, args.batch_size, args.steps)
    rows, stopped = [], None
    rate = None
    for n in counts:
        if rate is not None:
            predicted = n * setup.steps / rate
            if predicted > args.max_point_s:
                stopped = dict(
                    configs=n, reason=f"predicted {predicted:.0f} s per run > --max-point-s {args.max_point_s:g}"
                )
                break
        hyper = C.batch_hyper(case, n, layout, args.seeds)
        free = available_bytes()

        def guard(compiled, free=free):
            need = program_bytes(compiled)
            if free is not None and need > 0.9 * free:
                return f"program needs {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
            return None

        full = C.time_engine(setup, hyper, args.repeats, guard=guard)
        if "skipped" in full:
            stopped = dict(configs=n, reason=full["skipped"])
            break
        row = C.public(full)
        row["program_bytes"] = program_bytes(full["_compiled"])
        rows.append(row)
        rate = row["config_steps_per_s"]
        print(
            f"  {case:<15}{layout:<6} N={n:<8} compile {row['compile_s']:6.2f} s  run {row['run_s']:8.3f} s "
            f"({row['repeats']} rep)  {rate:10.3e} config-steps/s",
            flush=True,
        )
    if stopped:
        print(f"  {case:<15}{layout:<6} stopped at N={stopped['configs']}: {stopped['reason']}", flush=True)
    return dict(rows=rows, stopped=stopped)


def batch_curve(case, layout, args) -> list[dict]:
    rows = []
    for b in args.b_values:
        setup = C.make_setup(case, b, args.steps)
        hyper = C.batch_hyper(case, args.b_configs, layout, args.seeds)
        row = C.public(C.time_engine(setup, hyper, args.repeats))
        rows.append(row)
        print(
            f"  {case:<15}{layout:<6} B={b:<5} N={args.b_configs:<6} run {row['run_s']:8.3f} s "
            f"{row['config_steps_per_s']:10.3e} config-steps/s",
            flush=True,
        )
    return rows


def loops(case, args) -> dict:
    setup = C.make_setup(case, args.batch_size, args.steps)
    hyper = C.batch_hyper(case, args.loop_configs, "own")
    out = dict(jax_loop=C.time_jax_loop(setup, hyper, args.loop_configs, args.repeats))
    if case in C.TORCH_CASES:
        for style in ("manual", "distributions"):
            out[f"torch_{style}"] = C.time_torch_loop(
                setup, hyper, args.loop_configs, args.torch_steps, args.repeats, style
            )
    for name, row in out.items():
        if row:
            print(f"  {case:<15}{name:<21} {row['config_steps_per_s']:10.3e} config-steps/s", flush=True)
    return out


def render(results: dict) -> str:
    """Markdown tables of a throughput.json (also used by report.py)."""
    f = results["facts"]
    parts = [f"Machine: {C.facts_line(f)}. Command: `{results['command']}`.", ""]
    ref = results["args"]["configs"]
    header = ["case", "layout", *[f"N={n}" for n in results["args"]["scaling"]], "stopped"]
    rows = []
    for case, per in results["cases"].items():
        for layout in results["args"]["layouts"]:
            curve = per["layouts"][layout]["scaling"]
            by_n = {r["configs"]: r["config_steps_per_s"] for r in curve["rows"]}
            stop = curve["stopped"]
            rows.append(
                [case, layout, *[by_n.get(n) for n in results["args"]["scaling"]], stop["reason"] if stop else ""]
            )
    parts += [
        "Engine config-steps/s vs configurations per launch (B = "
        f"{results['args']['batch_size']}, T = {results['args']['steps']}):",
        "",
        C.markdown_table(header, rows),
        "",
    ]
    header = ["case", "layout", *[f"B={b}" for b in results["args"]["b_values"]]]
    rows = []
    for case, per in results["cases"].items():
        for layout in results["args"]["layouts"]:
            b_rows = per["layouts"][layout].get("batch_size") or []
            values = [r["config_steps_per_s"] for r in b_rows]
            rows.append([case, layout, *(values + ["-"] * (len(results["args"]["b_values"]) - len(values)))])
    parts += [
        f"Engine config-steps/s vs B (N = {results['args']['b_configs']}):",
        "",
        C.markdown_table(header, rows),
        "",
    ]
    header = [
        "case",
        "loop",
        "loop config-steps/s",
        *[f"engine x ({layout}, N={ref})" for layout in results["args"]["layouts"]],
    ]
    rows = []
    for case, per in results["cases"].items():
        for name, row in (per.get("loops") or {}).items():
            if not row:
                rows.append(
                    [case, name, "not measured (torch not installed)", *["-" for _ in results["args"]["layouts"]]]
                )
                continue
            ratios = [per["ratios"].get(f"{layout}/{name}") for layout in results["args"]["layouts"]]
            rows.append([case, name, row["config_steps_per_s"], *ratios])
    parts += [
        f"Per-configuration loops (jax: {results['args']['loop_configs']} configurations x T steps; torch: "
        f"{results['args']['loop_configs']} x {results['args']['torch_steps']} steps), same process:",
        "",
        C.markdown_table(header, rows),
    ]
    return "\n".join(parts)


def plot(results: dict, folder: Path) -> None:
    series = {}
    for case, per in results["cases"].items():
        for layout in results["args"]["layouts"]:
            rows = per["layouts"][layout]["scaling"]["rows"]
            series[f"{case} ({layout})"] = ([r["configs"] for r in rows], [r["config_steps_per_s"] for r in rows])
    f = results["facts"]
    C.plot_lines(
        folder / "throughput_vs_configs.png",
        series,
        "configurations per launch",
        "config-steps / s",
        f"{f['platform']} {f['device_kind']}, B={results['args']['batch_size']}, T={results['args']['steps']}",
    )
    series = {}
    for case, per in results["cases"].items():
        for layout in results["args"]["layouts"]:
            rows = per["layouts"][layout].get("batch_size") or []
            series[f"{case} ({layout})"] = ([r["batch_size"] for r in rows], [r["config_steps_per_s"] for r in rows])
    C.plot_lines(
        folder / "throughput_vs_batch.png",
        series,
        "batch size B",
        "config-steps / s",
        f"{f['platform']} {f['device_kind']}, N={results['args']['b_configs']}, T={results['args']['steps']}",
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(C.CASES), help=f"comma list of {list(C.CASES)}")
    parser.add_argument("--layouts", default="own,sweep")
    parser.add_argument("--seeds", type=int, default=16, help="seeds of the `sweep` layout (grid x seeds)")
    parser.add_argument("--configs", type=int, default=4096, help="configurations of the loop comparison")
    parser.add_argument(
        "--scaling", default="1,16,256,1024,4096,16384,65536,262144,1048576", help="configurations per launch"
    )
    parser.add_argument("--max-point-s", type=float, default=60.0, help="skip points predicted to run longer")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--b-values", default="8,64,512")
    parser.add_argument("--b-configs", type=int, default=1024, help="configurations of the B curve")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loop-configs", type=int, default=16, help="configurations timed in the loops")
    parser.add_argument("--torch-steps", type=int, default=200, help="steps per configuration of the torch loop")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test (< 1 min)")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.loop_configs, args.torch_steps = 100, 1, 2, 20
        args.scaling, args.configs, args.b_values, args.b_configs, args.max_point_s = "64", 64, "8,64", 64, 5.0
        if args.cases == ",".join(C.CASES):
            args.cases = "fkl,rkl"
    args.cases = args.cases.split(",")
    args.layouts = args.layouts.split(",")
    args.scaling = [int(v) for v in args.scaling.split(",")]
    args.b_values = [int(v) for v in args.b_values.split(",")]
    if args.configs not in args.scaling:
        args.scaling = sorted({*args.scaling, args.configs})
    folder = C.out_dir(args.quick, args.out)
    start = time.perf_counter()
    facts = C.machine_facts()
    print(C.facts_line(facts), flush=True)
    results: dict = dict(
        facts=facts,
        command="python benchmarks/throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        cases={},
    )
    for case in args.cases:
        per: dict = dict(layouts={})
        for layout in args.layouts:
            curve = scaling_curve(case, layout, args.scaling, args)
            b_rows = batch_curve(case, layout, args) if case in ("fkl", "rkl") or not args.quick else []
            per["layouts"][layout] = dict(scaling=curve, batch_size=b_rows)
        per["loops"] = loops(case, args) if case in C.TORCH_CASES or case.endswith("d16") else {}
        per["ratios"] = {}
        for layout in args.layouts:
            ref = {r["configs"]: r for r in per["layouts"][layout]["scaling"]["rows"]}.get(args.configs)
            for name, row in per["loops"].items():
                if ref and row:
                    per["ratios"][f"{layout}/{name}"] = ref["config_steps_per_s"] / row["config_steps_per_s"]
        results["cases"][case] = per
    results["wall_s"] = time.perf_counter() - start
    C.write_json(folder / "throughput.json", results)
    text = render(results)
    (folder / "throughput.md").write_text(text + "\n")
    print("\n" + text)
    plot(results, C.plot_dir(args.quick, folder))
    print(f"\nthroughput.py wall time {results['wall_s']:.1f} s (pid {os.getpid()})")
    return results


if __name__ == "__main__":
    main()
