"""Peak host and device memory vs configurations per launch and vs logged steps.

Each point runs in a fresh process (clean peaks) that builds the batch, compiles it with
`train.compiled_call`, runs it once and reports

  program     XLA's memory_analysis() of the compiled batch program (argument + output + temp -
              alias bytes: what must fit in device memory at once), and `train.program_memory`
              (the same for the sweep runner's segment program, which the chunk size is derived from)
  host RSS    the process's peak resident set (VmHWM, else ru_maxrss) after imports, after
              compilation and after the run (the peak includes the compiler's own memory)
  device      peak_bytes_in_use of jax.devices()[0].memory_stats() on an accelerator; on CPU
              device memory is host memory ("-")

    python benchmarks/memory.py           # full: FKL, N = 1 ... 65536 (T = 2000), logged steps 3 ... 1001
    python benchmarks/memory.py --quick   # smoke test, < 1 min
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C


def _rss() -> int:
    """Peak resident set of this process in bytes: VmHWM of /proc/self/status (reset by exec;
    ru_maxrss is not: a child started by a big parent inherits the parent's peak), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB


def child(spec: dict) -> dict:
    """One point, in this (fresh) process."""
    out: dict = dict(spec, rss_after_import=None)
    import jax

    from forget_jax.train import compiled_call, precision, program_memory

    setup = C.make_setup(spec["case"], spec["batch_size"], spec["steps"], spec["log_every"])
    hyper = C.batch_hyper(spec["case"], spec["configs"], spec["layout"], spec["seeds"])
    out["rss_after_import"] = _rss()
    with precision(setup):
        start = time.perf_counter()
        compiled, args = compiled_call(setup, hyper)
        out["compile_s"] = time.perf_counter() - start
        m = compiled.memory_analysis()
        out["program"] = dict(
            argument=int(m.argument_size_in_bytes),
            output=int(m.output_size_in_bytes),
            temp=int(m.temp_size_in_bytes),
            alias=int(m.alias_size_in_bytes),
        )
        out["program"]["total"] = (
            out["program"]["argument"] + out["program"]["output"] + out["program"]["temp"] - out["program"]["alias"]
        )
        out["rss_after_compile"] = _rss()
        start = time.perf_counter()
        result = jax.block_until_ready(compiled(*args))
        out["run_s"] = time.perf_counter() - start
        host = jax.tree.map(lambda x: jax.device_get(x), result)
        out["result_bytes"] = int(sum(v.nbytes for v in jax.tree.leaves(host)))
        out["rss_after_run"] = _rss()
        out["segment_program"] = program_memory(setup, spec["configs"]) if spec.get("segment", True) else None
    stats = jax.devices()[0].memory_stats() if jax.devices()[0].platform != "cpu" else None
    out["device_peak_bytes"] = int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None
    out["num_logs"] = setup.num_logs
    return out


def point(spec: dict) -> dict:
    result = C.run_child([str(Path(__file__).resolve()), "--child", json.dumps(spec)])
    print(
        f"  N={result['configs']:<7} logs={result['num_logs']:<5} program {result['program']['total'] / 2**20:9.2f} MiB "
        f" segment {(result['segment_program'] or {}).get('total', 0) / 2**20:9.2f} MiB  host peak "
        f"{result['rss_after_run'] / 2**20:8.1f} MiB (after import {result['rss_after_import'] / 2**20:.1f})  "
        f"run {result['run_s']:.2f} s",
        flush=True,
    )
    return result


def render(results: dict) -> str:
    a = results["args"]
    lines = [f"Machine: {C.facts_line(results['facts'])}. Command: `{results['command']}`.", ""]
    header = [
        "N",
        "logged steps",
        "program MiB",
        "segment program MiB",
        "host RSS after import MiB",
        "host RSS peak MiB",
        "device peak MiB",
        "results MiB",
    ]

    def row(r):
        mib = lambda v: None if v is None else v / 2**20
        return [
            r["configs"],
            r["num_logs"],
            mib(r["program"]["total"]),
            mib((r["segment_program"] or {}).get("total")),
            mib(r["rss_after_import"]),
            mib(r["rss_after_run"]),
            mib(r["device_peak_bytes"]),
            mib(r["result_bytes"]),
        ]

    lines += [
        f"vs configurations ({a['case']}, B = {a['batch_size']}, T = {a['steps']}, log every {a['log_every']}):",
        "",
        C.markdown_table(header, [row(r) for r in results["vs_configs"]]),
        "",
        f"vs logged steps ({a['case']}, N = {a['log_configs']}, T = {a['steps']}):",
        "",
        C.markdown_table(header, [row(r) for r in results["vs_logs"]]),
    ]
    return "\n".join(lines)


def plot(results: dict, folder: Path) -> None:
    for key, x_name, label in (
        ("vs_configs", "configs", "configurations per launch"),
        ("vs_logs", "num_logs", "logged steps"),
    ):
        rows = results[key]
        x = [r[x_name] for r in rows]
        series = {
            "program (memory_analysis)": (x, [r["program"]["total"] / 2**20 for r in rows]),
            "host RSS peak": (x, [r["rss_after_run"] / 2**20 for r in rows]),
            "results on host": (x, [max(r["result_bytes"], 1) / 2**20 for r in rows]),
        }
        if rows and rows[0]["segment_program"]:
            series["segment program (runner)"] = (x, [r["segment_program"]["total"] / 2**20 for r in rows])
        if rows and rows[0]["device_peak_bytes"]:
            series["device peak"] = (x, [r["device_peak_bytes"] / 2**20 for r in rows])
        C.plot_lines(folder / f"memory_{key}.png", series, label, "MiB", f"{results['args']['case']}: memory {label}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--case", default="fkl")
    parser.add_argument("--layout", default="sweep")
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--log-every", type=int, default=200, help="log interval of the configurations curve")
    parser.add_argument("--configs", default="1,16,256,4096,16384,65536")
    parser.add_argument("--log-configs", type=int, default=1024, help="N of the logged-steps curve")
    parser.add_argument("--log-everys", default="1000,200,50,10,2", help="log intervals of the logged-steps curve")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return {}
    if args.quick:
        args.steps, args.log_every, args.configs, args.log_configs, args.log_everys = 100, 10, "16,256", 16, "10,1"
    folder = C.out_dir(args.quick, args.out)
    start = time.perf_counter()
    facts = C.machine_facts()
    print(C.facts_line(facts), flush=True)
    base = dict(case=args.case, layout=args.layout, seeds=args.seeds, batch_size=args.batch_size, steps=args.steps)
    vs_configs = [point(dict(base, configs=int(n), log_every=args.log_every)) for n in args.configs.split(",")]
    vs_logs = []
    for k in (int(v) for v in args.log_everys.split(",")):
        same = [r for r in vs_configs if r["configs"] == args.log_configs and r["log_every"] == k]
        vs_logs.append(same[0] if same else point(dict(base, configs=args.log_configs, log_every=k)))
    results = dict(
        facts=facts,
        command="python benchmarks/memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        vs_configs=vs_configs,
        vs_logs=vs_logs,
        wall_s=time.perf_counter() - start,
    )
    C.write_json(folder / "memory.json", results)
    text = render(results)
    (folder / "memory.md").write_text(text + "\n")
    print("\n" + text)
    plot(results, C.plot_dir(args.quick, folder))
    print(f"\nmemory.py wall time {results['wall_s']:.1f} s")
    return results


if __name__ == "__main__":
    main()
