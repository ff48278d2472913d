"""Sweeps end to end through `forget_jax.sweep` (the path a user runs), each in a fresh process,
with an empty compilation cache (FORGET_JAX_CACHE_DIR = a new empty folder: `cold`) and then
with the cache that run filled (`warm`):

1. split: configs/phase_fkl_rkl.yaml into a zarr store, its wall time split into compile,
   compute and write. compile / compute are the runner's own per-block timings (the store's
   attrs `compile_time_s`, `run_time_s`, summed over blocks); write = sweep wall - compile -
   compute (store writes, fsync, planning and finalising: everything that is not compile or
   compute). Process wall (imports included) is reported apart.
2. headline (issue 9's target): FKL and RKL pathwise, ancestral, B = 64, d = 1, T = 2000,
   16384 configurations into a store, compile included, in both seed layouts (`own`: 16384
   seeds of one grid point, every configuration its own seed; `sweep`: separation x learning
   rate 32 x 32 grid x 16 seeds); in the same process, after the sweep, the per-configuration
   loops over `train.simulate_one` and the hand-written PyTorch loop, on a subset, per
   config-step. Ratio = the sweep's end-to-end config-steps/s / the loop's.

    python benchmarks/sweep_end_to_end.py           # full (CPU: ~10-20 min, depending on the engine)
    python benchmarks/sweep_end_to_end.py --quick   # smoke test, < 1 min (small sizes, FKL sweep layout)
    python benchmarks/sweep_end_to_end.py --parts headline --objectives fkl,rkl --layouts own,sweep
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C

PHASE = C.ROOT / "forget_jax" / "configs" / "phase_fkl_rkl.yaml"


def child(spec: dict) -> dict:
    """One sweep (and optionally the loops) in this fresh process."""
    import jax

    counts = {"hits": 0, "misses": 0}

    def listen(event, **_):
        if event == "/jax/compilation_cache/cache_hits":
            counts["hits"] += 1
        elif event == "/jax/compilation_cache/cache_misses":
            counts["misses"] += 1

    jax.monitoring.register_event_listener(listen)
    import forget_jax

    out = spec.get("out")
    start = time.perf_counter()
    ds = forget_jax.sweep(spec["config"], out=out, progress=False)
    wall = time.perf_counter() - start
    attrs = dict(ds.attrs)
    sizes = {d: int(n) for d, n in ds.sizes.items()}
    configs = 1
    for d, n in sizes.items():
        if d != "step":
            configs *= n
    steps = int(ds["step"].values[-1])
    compile_s, run_s = float(attrs.get("compile_time_s", 0.0)), float(attrs.get("run_time_s", 0.0))
    result = dict(
        configs=configs,
        steps=steps,
        sizes=sizes,
        sweep_wall_s=wall,
        compile_s=compile_s,
        run_s=run_s,
        runner_wall_s=float(attrs.get("wall_time_s", 0.0)),
        write_s=wall - compile_s - run_s,
        end_to_end_config_steps_per_s=configs * steps / wall,
        compute_config_steps_per_s=configs * steps / run_s if run_s else None,
        cache=counts,
        cache_dir=os.environ.get("FORGET_JAX_CACHE_DIR"),
    )
    loops = spec.get("loops")
    if loops:
        setup = C.make_setup(loops["case"], 64, steps, spec["config"]["log_every"])
        hyper = C.batch_hyper(loops["case"], loops["configs"], "own")
        rows = dict(jax_loop=C.time_jax_loop(setup, hyper, loops["configs"], loops["repeats"]))
        rows["torch_manual"] = C.time_torch_loop(setup, hyper, loops["configs"], loops["torch_steps"], loops["repeats"])
        result["loops"] = rows
        result["ratios"] = {
            name: result["end_to_end_config_steps_per_s"] / row["config_steps_per_s"]
            for name, row in rows.items()
            if row
        }
    return result


def run_pair(label: str, spec: dict, keep: Path) -> dict:
    """The sweep `spec` cold (empty cache folder) then warm (the folder the cold run filled)."""
    cache = Path(tempfile.mkdtemp(prefix="fj-cache-", dir=keep))
    out = {}
    for state in ("cold", "warm"):
        store = Path(tempfile.mkdtemp(prefix="fj-store-", dir=keep)) / "sweep.zarr"
        env = {"FORGET_JAX_CACHE_DIR": str(cache), "FORGET_JAX_NO_CACHE": "0"}
        os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
        r = C.run_child([str(Path(__file__).resolve()), "--child", json.dumps({**spec, "out": str(store)})], env=env)
        shutil.rmtree(store.parent, ignore_errors=True)
        out[state] = r
        ratios = ", ".join(f"{k} x{v:.0f}" for k, v in (r.get("ratios") or {}).items())
        print(
            f"  {label:<22}{state:<5} N={r['configs']:<6} wall {r['sweep_wall_s']:7.2f} s = compile {r['compile_s']:6.2f}"
            f" + compute {r['run_s']:7.2f} + write/other {r['write_s']:6.2f}  (process {r['process_wall_s']:.1f} s, "
            f"cache hits {r['cache']['hits']} misses {r['cache']['misses']})  "
            f"{r['end_to_end_config_steps_per_s']:.3e} config-steps/s {ratios}",
            flush=True,
        )
    shutil.rmtree(cache, ignore_errors=True)
    return out


def phase_config(quick: bool) -> dict:
    import yaml

    config = yaml.safe_load(PHASE.read_text())
    if quick:
        config.update(steps=100, log_every=10, seeds=2)
        config["grid"] = dict(objective=["fkl", "rkl"], batch_size=[8], separation=[2.0, 4.0], replay_ratio=[0.0, 0.3])
    return config


def headline_config(objective: str, layout: str, configs: int, steps: int, log_every: int, seeds: int) -> dict:
    base = dict(
        name=f"headline_{objective}_{layout}",
        objective=objective,
        estimator="pathwise",
        sampling="ancestral",
        batch_size=64,
        dim=1,
        steps=steps,
        log_every=log_every,
    )
    if layout == "own":
        return dict(base, seeds=configs, grid=dict(separation=[4.0]))
    side = round((configs / seeds) ** 0.5)
    if side * side * seeds != configs:
        raise ValueError(f"--configs {configs} must be seeds x a square grid (seeds {seeds})")
    return dict(
        base,
        seeds=seeds,
        grid=dict(separation={"linspace": [1.0, 6.0, side]}, learning_rate={"linspace": [0.01, 0.1, side]}),
    )


def render(results: dict) -> str:
    lines = [f"Machine: {C.facts_line(results['facts'])}. Command: `{results['command']}`.", ""]
    header = [
        "sweep",
        "cache",
        "N",
        "wall s",
        "compile s",
        "compute s",
        "write/other s",
        "process s",
        "cache hits/misses",
    ]
    rows = []
    for label, pair in results.get("split", {}).items():
        for state, r in pair.items():
            rows.append(
                [
                    label,
                    state,
                    r["configs"],
                    r["sweep_wall_s"],
                    r["compile_s"],
                    r["run_s"],
                    r["write_s"],
                    r["process_wall_s"],
                    f"{r['cache']['hits']}/{r['cache']['misses']}",
                ]
            )
    if rows:
        lines += ["Split of the phase_fkl_rkl sweep:", "", C.markdown_table(header, rows), ""]
    header = [
        "objective / layout",
        "cache",
        "N",
        "wall s (compile + compute + write)",
        "end-to-end config-steps/s",
        "jax loop config-steps/s",
        "torch loop config-steps/s",
        "x jax loop",
        "x torch loop",
        "target 1000x",
    ]
    rows = []
    for label, pair in results.get("headline", {}).items():
        for state, r in pair.items():
            loops = r.get("loops") or {}
            torch_row = loops.get("torch_manual")
            ratio = (r.get("ratios") or {}).get("torch_manual")
            rows.append(
                [
                    label,
                    state,
                    r["configs"],
                    f"{C.fmt(r['sweep_wall_s'])} ({C.fmt(r['compile_s'])} + {C.fmt(r['run_s'])} + {C.fmt(r['write_s'])})",
                    r["end_to_end_config_steps_per_s"],
                    (loops.get("jax_loop") or {}).get("config_steps_per_s"),
                    torch_row["config_steps_per_s"] if torch_row else "torch not installed",
                    (r.get("ratios") or {}).get("jax_loop"),
                    ratio,
                    "-" if ratio is None else ("met" if ratio >= 1000 else "not met"),
                ]
            )
    if rows:
        lines += ["Headline (B = 64, d = 1, pathwise, ancestral), end to end through forget_jax.sweep:", ""]
        lines += [C.markdown_table(header, rows)]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--parts", default="split,headline")
    parser.add_argument("--objectives", default="fkl,rkl")
    parser.add_argument("--layouts", default="own,sweep")
    parser.add_argument("--configs", type=int, default=16384)
    parser.add_argument("--seeds", type=int, default=16, help="seeds of the `sweep` layout")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--log-every", type=int, default=200)
    parser.add_argument("--loop-configs", type=int, default=16)
    parser.add_argument("--torch-steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the loops (the sweeps run once)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child)), default=str))
        return {}
    if args.quick:
        args.configs, args.steps, args.log_every, args.loop_configs, args.torch_steps, args.repeats = (
            256,
            100,
            10,
            2,
            20,
            1,
        )
        if args.objectives == parser.get_default("objectives"):
            args.objectives = "fkl"
        if args.layouts == parser.get_default("layouts"):
            args.layouts = "sweep"
    folder = C.out_dir(args.quick, args.out)
    keep = Path(tempfile.mkdtemp(prefix="fj-e2e-"))
    start = time.perf_counter()
    facts = C.machine_facts()
    print(C.facts_line(facts), flush=True)
    results: dict = dict(
        facts=facts,
        command="python benchmarks/sweep_end_to_end.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    )
    try:
        if "split" in args.parts:
            results["split"] = {"phase_fkl_rkl": run_pair("phase_fkl_rkl", dict(config=phase_config(args.quick)), keep)}
        if "headline" in args.parts:
            results["headline"] = {}
            for objective in args.objectives.split(","):
                for layout in args.layouts.split(","):
                    config = headline_config(objective, layout, args.configs, args.steps, args.log_every, args.seeds)
                    loops = dict(
                        case=objective, configs=args.loop_configs, torch_steps=args.torch_steps, repeats=args.repeats
                    )
                    label = f"{objective} / {layout}"
                    results["headline"][label] = run_pair(label, dict(config=config, loops=loops), keep)
    finally:
        shutil.rmtree(keep, ignore_errors=True)
    results["wall_s"] = time.perf_counter() - start
    C.write_json(folder / "sweep_end_to_end.json", results)
    text = render(results)
    (folder / "sweep_end_to_end.md").write_text(text + "\n")
    print("\n" + text)
    print(f"\nsweep_end_to_end.py wall time {results['wall_s']:.1f} s")
    return results


if __name__ == "__main__":
    main()
