"""Operations and bytes per config-step from XLA's `cost_analysis()`, and the achieved fraction of
the device's float32 peak.

XLA's cost analysis counts the body of every while loop ONCE, whatever its trip count (checked:
the same program at T = 100 and T = 200 reports identical flops), so the raw figure of the T-step
batch program is init + one step + one log point per configuration, not T steps. The per-step
cost is therefore taken from the batch size: a step's work is linear in the B samples while
init and the log-point metrics do not depend on B, so for the one-step program (T = log_every = 1)

    ops per config-step  ~=  B * (C(B) - C(B / 2)) / (n * B / 2)

(C = cost_analysis of the batch of n configurations; B-independent per-step work, a handful of
parameter updates, is left out, and loops inside the step, e.g. threefry's rolled rounds on
CPU, stay counted once: a lower bound, stated as such). "ops" = flops + transcendentals (the
issue's "cost-analysis operations"); flops alone are reported too.

Achieved = ops per config-step x n x T / run time of the T-step program (median, warm, after
AOT compilation). Peaks:
  theoretical  cores x GHz x FMA units x fp32 lanes per unit x 2 (FMA = 2 flops), from lscpu /
               /proc/cpuinfo (AMD family 25, Zen 3/4: two 256-bit FMA pipes, AVX-512 double-pumped
               -> 2 x 8 lanes; Zen 5: 2 x 16; other AVX-512: 2 x 16; AVX2: 2 x 8; override with
               --fma-units / --simd-lanes); GPU: the vendor's fp32 (non-tensor) figure for known
               device kinds, else not given
  measured     jnp.dot of two float32 M x M matrices (precision HIGHEST), 2 M^3 / median time

    python benchmarks/cost.py            # full: FKL, RKL, population, d = 16; N = 4096, T = 2000
    python benchmarks/cost.py --quick    # smoke test (FKL), < 1 min
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C

#: fp32 non-tensor-core peaks (flop/s) of GPUs by device_kind prefix: vendor data sheets.
GPU_FP32_PEAK = {
    "NVIDIA H100 80GB HBM3": 66.9e12,  # H100 SXM5
    "NVIDIA H200": 66.9e12,  # H200 SXM (same GH100 die as H100 SXM)
    "NVIDIA H100 PCIe": 51.2e12,
    "NVIDIA A100": 19.5e12,
}


def theoretical_peak(fma_units: int | None, simd_lanes: int | None) -> dict:
    """cores x GHz x FMA units x lanes x 2 of this CPU (see the module docstring)."""
    cpu = C.cpu_facts()
    family = str(cpu["family"])
    if cpu["vendor"] == "AuthenticAMD" and family in ("23", "25"):
        units, lanes, rule = 2, 8, "AMD Zen 1-4: two 256-bit FMA pipes (AVX-512 double-pumped on Zen 4)"
    elif cpu["vendor"] == "AuthenticAMD" and family == "26":
        units, lanes, rule = 2, 16, "AMD Zen 5: two 512-bit FMA pipes"
    elif cpu["avx512f"]:
        units, lanes, rule = 2, 16, "AVX-512: two 512-bit FMA units assumed"
    elif cpu["avx2"] and cpu["fma"]:
        units, lanes, rule = 2, 8, "AVX2 + FMA: two 256-bit FMA units assumed"
    else:
        units, lanes, rule = 1, 4, "SSE: one 128-bit unit assumed"
    units = fma_units or units
    lanes = simd_lanes or lanes
    ghz = (cpu["mhz"] or 0.0) / 1e3
    peak = cpu["cores"] * ghz * 1e9 * units * lanes * 2
    return dict(
        flops_per_s=peak,
        cores=cpu["cores"],
        ghz=ghz,
        fma_units=units,
        simd_lanes=lanes,
        rule=rule,
        formula=f"{cpu['cores']} cores x {ghz:.3g} GHz x {units} FMA units x {lanes} lanes x 2",
    )


def measured_matmul_peak(m: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    key = jax.random.key(0)
    a = jax.random.normal(key, (m, m), jnp.float32)
    b = jax.random.normal(jax.random.fold_in(key, 1), (m, m), jnp.float32)
    dot = jax.jit(lambda x, y: jnp.dot(x, y, precision=jax.lax.Precision.HIGHEST)).lower(a, b).compile()
    jax.block_until_ready(dot(a, b))
    run_s, times = C.median_time(lambda: jax.block_until_ready(dot(a, b)), repeats)
    return dict(m=m, run_s=run_s, times=times, flops_per_s=2 * m**3 / run_s)


def costs(compiled) -> dict:
    ca = compiled.cost_analysis()
    if isinstance(ca, list):  # older jax: one dict per program
        ca = ca[0]
    return {k: float(ca.get(k, 0.0)) for k in ("flops", "transcendentals", "bytes accessed")}


def one_step_costs(case: str, n: int, layout: str, seeds: int, batch_size: int) -> dict:
    """cost_analysis per configuration of the one-step program (T = log_every = 1) at B and B / 2."""
    from forget_jax.train import compiled_call, precision

    out = {}
    for b in (batch_size, batch_size // 2):
        setup = C.make_setup(case, b, 1, 1)
        hyper = C.batch_hyper(case, n, layout, seeds)
        with precision(setup):
            compiled, _ = compiled_call(setup, hyper)
        out[b] = {k: v / n for k, v in costs(compiled).items()}
    return out


def measure_case(case: str, layout: str, args, peaks: dict) -> dict:
    setup = C.make_setup(case, args.batch_size, args.steps)
    hyper = C.batch_hyper(case, args.configs, layout, args.seeds)
    timed = C.time_engine(setup, hyper, args.repeats)
    raw = {k: v / args.configs for k, v in costs(timed["_compiled"]).items()}
    b = args.batch_size
    one = one_step_costs(case, args.configs, layout, args.seeds, b)
    per_step = {k: b * (one[b][k] - one[b // 2][k]) / (b - b // 2) for k in raw}
    ops = per_step["flops"] + per_step["transcendentals"]
    achieved_ops = ops * args.configs * setup.steps / timed["run_s"]
    achieved_flops = per_step["flops"] * args.configs * setup.steps / timed["run_s"]
    row = dict(
        case=case,
        layout=layout,
        timing=C.public(timed),
        raw_program_per_config=raw,
        one_step_per_config={str(k): v for k, v in one.items()},
        per_config_step=per_step,
        ops_per_config_step=ops,
        achieved_ops_per_s=achieved_ops,
        achieved_flops_per_s=achieved_flops,
    )
    for name, peak in peaks.items():
        if peak:
            row[f"fraction_of_{name}_peak_ops"] = achieved_ops / peak
            row[f"fraction_of_{name}_peak_flops"] = achieved_flops / peak
    print(
        f"  {case:<15}{layout:<6} ops/config-step {ops:10.4g} (flops {per_step['flops']:.4g}, transc "
        f"{per_step['transcendentals']:.4g}, bytes {per_step['bytes accessed']:.4g})  achieved {achieved_ops:.3e} "
        f"op/s  = {100 * row.get('fraction_of_measured_peak_ops', float('nan')):.2f}% of measured peak",
        flush=True,
    )
    return row


def render(results: dict) -> str:
    p = results["peaks"]
    th = p["theoretical"]
    lines = [
        f"Machine: {C.facts_line(results['facts'])}. Command: `{results['command']}`.",
        "",
        f"Peaks (float32): theoretical {C.fmt(th['flops_per_s'])} flop/s ({th['formula']}; {th['rule']}); "
        f"measured {C.fmt(p['measured']['flops_per_s'])} flop/s (jnp.dot {p['measured']['m']}^2 float32, "
        f"median {C.fmt(p['measured']['run_s'])} s).",
        "",
    ]
    header = [
        "case",
        "layout",
        "ops / config-step",
        "flops",
        "transcendentals",
        "bytes",
        "raw program ops / config",
        "achieved op/s",
        "% theoretical peak",
        "% measured peak",
    ]
    rows = []
    for r in results["rows"]:
        s = r["per_config_step"]
        raw = r["raw_program_per_config"]
        rows.append(
            [
                r["case"],
                r["layout"],
                r["ops_per_config_step"],
                s["flops"],
                s["transcendentals"],
                s["bytes accessed"],
                raw["flops"] + raw["transcendentals"],
                r["achieved_ops_per_s"],
                100 * r.get("fraction_of_theoretical_peak_ops", float("nan")),
                100 * r.get("fraction_of_measured_peak_ops", float("nan")),
            ]
        )
    lines += [C.markdown_table(header, rows)]
    if results["facts"]["platform"] == "cpu":
        lines += ["", "GPU: not measured (run this script on a GPU machine)."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="fkl,rkl,fkl_population,fkl_d16")
    parser.add_argument("--layouts", default="own,sweep")
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--configs", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--matmul", type=int, default=4096, help="M of the M x M matmul peak")
    parser.add_argument("--fma-units", type=int, default=None)
    parser.add_argument("--simd-lanes", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.configs, args.steps, args.repeats, args.matmul, args.layouts = 64, 100, 1, 1024, "sweep"
        if args.cases == parser.get_default("cases"):
            args.cases = "fkl"
    folder = C.out_dir(args.quick, args.out)
    start = time.perf_counter()
    facts = C.machine_facts()
    print(C.facts_line(facts), flush=True)
    measured = measured_matmul_peak(args.matmul, max(args.repeats, 3))
    if facts["platform"] == "cpu":
        theoretical = theoretical_peak(args.fma_units, args.simd_lanes)
    else:
        kind = facts["device_kind"]
        value = next((v for k, v in GPU_FP32_PEAK.items() if kind.startswith(k)), None)
        theoretical = dict(flops_per_s=value, formula=f"vendor fp32 figure for {kind}", rule="data sheet")
    print(f"  peak: theoretical {theoretical['flops_per_s']:.3e} flop/s, measured matmul {measured['flops_per_s']:.3e}")
    peaks = {"theoretical": theoretical["flops_per_s"], "measured": measured["flops_per_s"]}
    rows = [
        measure_case(case, layout, args, peaks) for case in args.cases.split(",") for layout in args.layouts.split(",")
    ]
    results = dict(
        facts=facts,
        command="python benchmarks/cost.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        peaks=dict(theoretical=theoretical, measured=measured),
        rows=rows,
        wall_s=time.perf_counter() - start,
    )
    C.write_json(folder / "cost.json", results)
    text = render(results)
    (folder / "cost.md").write_text(text + "\n")
    print("\n" + text)
    print(f"\ncost.py wall time {results['wall_s']:.1f} s")
    return results


if __name__ == "__main__":
    main()
