"""XLA CPU compiler options for the training program, timed interleaved in one process (ratios
robust to the machine's load): JAX's default against forget-jax's `train.CPU_COMPILER_OPTIONS`
(no YNNPACK fusions), for FKL and RKL (pathwise, ancestral, B = 64, d = 1) in both seed layouts.

    python benchmarks/compiler_options.py               # N = 4096, T = 200, 5 interleaved repeats
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

import forget_jax
from forget_jax import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    n, steps = args.configs, args.steps
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, N = {n}, T = {steps}, median of {args.repeats}")
    print("| objective | layout | JAX default cfg-steps/s | forget-jax options cfg-steps/s | ratio |")
    print("| --- | --- | ---: | ---: | ---: |")
    rng = np.random.default_rng(0)
    for objective in ("fkl", "rkl"):
        for layout, seeds in (("sweep (16 seeds)", 16), ("own seed", n)):
            setup = forget_jax.Setup(
                objective=objective,
                estimator="pathwise",
                sampling="ancestral",
                steps=steps,
                log_every=steps // 2,
                batch_size=64,
            )
            hyper = forget_jax.make_hyper(
                separation=rng.uniform(1, 6, n), learning_rate=rng.uniform(0.01, 0.1, n), seed=np.arange(n) % seeds
            )
            with train.precision(setup):
                _, call = train.compiled_call(setup, hyper)
                batched = train._with_noise_layout(jax.vmap(train.make_train(setup), in_axes=(0, None, 0)), 1)
                programs = {
                    name: jax.jit(batched, compiler_options=options).lower(*call).compile()
                    for name, options in (("default", None), ("forget-jax", train.compiler_options("cpu")))
                }
                times: dict[str, list[float]] = {name: [] for name in programs}
                for program in programs.values():
                    jax.block_until_ready(program(*call))
                for _ in range(args.repeats):
                    for name, program in programs.items():
                        start = time.perf_counter()
                        jax.block_until_ready(program(*call))
                        times[name].append(time.perf_counter() - start)
            rate = {name: n * steps / statistics.median(t) for name, t in times.items()}
            print(
                f"| {objective} | {layout} | {rate['default']:.3g} | {rate['forget-jax']:.3g} | "
                f"{rate['forget-jax'] / rate['default']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
