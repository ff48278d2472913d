"""Throughput of forget-jax against the loops a user would otherwise write.

Measures config-steps per second (configurations x optimisation steps / second) for FKL and RKL
with Monte Carlo estimators (B samples per step, d = 1, T steps) for

  engine      `compiled_batch(setup)` = jit(vmap(train)) over N configurations (one launch)
  jax-loop    a Python loop over configurations calling jit(train) for one configuration
  torch-loop  a per-configuration PyTorch eager loop (autograd + torch.optim.SGD), the code a
              user would write without forget-jax; skipped with a message if torch is absent

all in one process. Protocol (JAX docs): ahead-of-time compilation timed apart from running,
a warm-up call, `block_until_ready`, the median of several repeats. The two loops are timed on a
subset of configurations (their cost is linear in the count) and reported per config-step.

    python benchmarks/throughput.py                    # full: N = 4096, T = 2000, B = 64
    python benchmarks/throughput.py --quick            # smoke test, seconds
    python benchmarks/throughput.py --json out.json    # also save the numbers
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax

from forget_jax.spec import Setup, make_hyper
from forget_jax.train import compiled_batch, make_train

CASES = {
    "fkl": dict(objective="fkl", estimator="pathwise", sampling="ancestral"),
    "rkl": dict(objective="rkl", estimator="pathwise", sampling="ancestral"),
}


def batch_hyper(n: int, seed0: int = 0):
    """n distinct configurations: separations, learning rates and seeds vary."""
    rng = np.random.default_rng(seed0)
    return make_hyper(
        separation=rng.uniform(1.0, 6.0, n),
        learning_rate=rng.uniform(0.01, 0.1, n),
        replay_ratio=rng.uniform(0.0, 0.3, n),
        seed=np.arange(n) + seed0,
    )


def one(hyper, i):
    return jax.tree.map(lambda x: x[i], hyper)


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_engine(setup: Setup, n: int, repeats: int) -> dict:
    hyper = jax.device_put(batch_hyper(n))
    start = time.perf_counter()
    compiled = compiled_batch(setup).lower(hyper).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(hyper))  # warm-up
    run_s = median_time(lambda: jax.block_until_ready(compiled(hyper)), repeats)
    return dict(configs=n, compile_s=compile_s, run_s=run_s, config_steps_per_s=n * setup.steps / run_s)


def bench_jax_loop(setup: Setup, n: int, repeats: int) -> dict:
    hyper = jax.device_put(batch_hyper(n))
    single = jax.jit(make_train(setup))
    start = time.perf_counter()
    compiled = single.lower(one(hyper, 0)).compile()
    compile_s = time.perf_counter() - start
    configs = [one(hyper, i) for i in range(n)]
    jax.block_until_ready(compiled(configs[0]))

    def loop():
        for h in configs:
            jax.block_until_ready(compiled(h))

    run_s = median_time(loop, repeats)
    return dict(configs=n, compile_s=compile_s, run_s=run_s, config_steps_per_s=n * setup.steps / run_s)


def bench_torch_loop(setup: Setup, n: int, steps: int, repeats: int, style: str = "manual") -> dict | None:
    """Per-configuration PyTorch eager loop with the same model and estimator (FKL: -mean log q(x),
    x ~ p_train; RKL pathwise: reparameterised within components plus the label's score term
    with a leave-one-out baseline), logit weight, plain SGD.

    style="manual": log-densities written by hand (the fastest eager code we could write);
    style="distributions": the idiomatic torch.distributions model (MixtureSameFamily of Normals).
    """
    try:
        import torch
        import torch.distributions as D
    except ImportError:
        print("torch is not installed: skipping the PyTorch baseline (pip install -e '.[bench]')")
        return None
    log2pi = math.log(2 * math.pi)
    hyper = batch_hyper(n)
    B = setup.batch_size

    def log_normal(x, m, s):
        return -0.5 * ((x - m) / s) ** 2 - math.log(s) - 0.5 * log2pi

    def manual_log_q(x, a, mo, mn):
        beta = torch.sigmoid(a)
        return torch.logaddexp(torch.log(beta) + log_normal(x, mo, 1.0), torch.log1p(-beta) + log_normal(x, mn, 1.0))

    def dist_log_q(x, a, mo, mn):
        logits = torch.stack([torch.nn.functional.logsigmoid(a), torch.nn.functional.logsigmoid(-a)])
        mixture = D.MixtureSameFamily(D.Categorical(logits=logits), D.Normal(torch.stack([mo, mn]), torch.ones(2)))
        return mixture.log_prob(x)

    log_q = manual_log_q if style == "manual" else dist_log_q

    def run_config(i):
        sep = float(hyper.separation[i])
        lr = float(hyper.learning_rate[i])
        lam = float(hyper.replay_ratio[i])
        gen = torch.Generator().manual_seed(int(hyper.seed[i]))
        a = torch.zeros((), requires_grad=True)
        mo = torch.zeros((), requires_grad=True)
        mn = torch.tensor(sep - 1.0, requires_grad=True)
        opt = torch.optim.SGD([a, mo, mn], lr=lr)
        target = torch.tensor([0.0, sep])
        for _ in range(steps):
            opt.zero_grad()
            eps = torch.randn(B, generator=gen)
            if setup.objective == "fkl":
                replay = torch.rand(B, generator=gen) < lam
                x = torch.where(replay, eps, sep + eps)
                loss = -log_q(x, a, mo, mn).mean()
            else:
                beta = torch.sigmoid(a)
                is_old = torch.rand(B, generator=gen) < beta.detach()
                x = torch.where(is_old, mo + eps, mn + eps)
                log_p = log_q(x, torch.zeros(()), target[0], target[1])
                f = log_q(x, a, mo, mn) - log_p
                fd = f.detach()
                baseline = (fd.sum() - fd) / max(B - 1, 1)
                log_label = torch.where(is_old, torch.log(beta), torch.log1p(-beta))
                loss = (f + (fd - baseline) * log_label).mean()
            loss.backward()
            opt.step()

    run_config(0)  # warm-up
    run_s = median_time(lambda: [run_config(i) for i in range(n)], repeats)
    return dict(
        configs=n,
        steps=steps,
        run_s=run_s,
        config_steps_per_s=n * steps / run_s,
        torch_version=torch.__version__,
        torch_threads=torch.get_num_threads(),
        style=style,
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=int, default=4096, help="configurations per engine launch")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loop-configs", type=int, default=16, help="configurations timed in the per-config loops")
    parser.add_argument("--torch-steps", type=int, default=200, help="steps per configuration in the torch loop")
    parser.add_argument("--scaling", type=str, default="256,1024,4096", help="engine configs per launch to sweep")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.configs, args.steps, args.loop_configs, args.torch_steps, args.repeats = 64, 100, 2, 20, 1
        args.scaling = "16,64"

    device = jax.devices()[0]
    print(
        f"forget-jax throughput | jax {jax.__version__} | {device.platform}: {device.device_kind} x{len(jax.devices())} "
        f"| {platform.processor() or platform.machine()} | B={args.batch_size} d=1 T={args.steps}"
    )
    results: dict = dict(
        jax_version=jax.__version__,
        platform=device.platform,
        device_kind=device.device_kind,
        batch_size=args.batch_size,
        steps=args.steps,
        date=time.strftime("%Y-%m-%d"),
        cases={},
    )
    for name, fields in CASES.items():
        setup = Setup(**fields, batch_size=args.batch_size, steps=args.steps, log_every=args.steps // 10 or 1)
        engine = bench_engine(setup, args.configs, args.repeats)
        loop = bench_jax_loop(setup, args.loop_configs, args.repeats)
        torch_res = bench_torch_loop(setup, args.loop_configs, args.torch_steps, args.repeats, "manual")
        torch_dist = bench_torch_loop(setup, args.loop_configs, args.torch_steps, args.repeats, "distributions")
        scaling = {}
        for n in (int(v) for v in args.scaling.split(",")):
            r = engine if n == args.configs else bench_engine(setup, n, args.repeats)
            scaling[n] = r
        case = dict(
            engine=engine, jax_loop=loop, torch_loop=torch_res, torch_distributions_loop=torch_dist, scaling=scaling
        )
        case["speedup_vs_jax_loop"] = engine["config_steps_per_s"] / loop["config_steps_per_s"]
        if torch_res:
            case["speedup_vs_torch_loop"] = engine["config_steps_per_s"] / torch_res["config_steps_per_s"]
            case["speedup_vs_torch_distributions_loop"] = (
                engine["config_steps_per_s"] / torch_dist["config_steps_per_s"]
            )
        results["cases"][name] = case

        print(f"\n[{name}] {fields['estimator']} estimator, {fields['sampling']} sampling")
        print(
            f"  {'implementation':<34}{'configs':>8}{'compile s':>11}{'run s':>10}{'config-steps/s':>16}{'engine x':>10}"
        )
        rows = [("engine jit(vmap(train))", engine), ("python loop over jit(train)", loop)]
        if torch_res:
            rows.append((f"torch eager, hand-written ({torch_res['steps']} st)", torch_res))
            rows.append((f"torch eager, distributions ({torch_dist['steps']} st)", torch_dist))
        for label, r in rows:
            ratio = engine["config_steps_per_s"] / r["config_steps_per_s"]
            compile_s = f"{r['compile_s']:.2f}" if "compile_s" in r else "-"
            print(
                f"  {label:<34}{r['configs']:>8}{compile_s:>11}{r['run_s']:>10.3f}{r['config_steps_per_s']:>16.3e}{ratio:>10.1f}"
            )
        print("  engine scaling: " + ", ".join(f"N={n}: {r['config_steps_per_s']:.3e}/s" for n, r in scaling.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
        print(f"\nwrote {args.json}")
    return results


if __name__ == "__main__":
    main()
