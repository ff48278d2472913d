"""One vs two (or N) XLA host devices on CPU: the same sweep, in memory, interleaved in one process.

    FORGET_JAX_HOST_DEVICES=2 python benchmarks/host_devices.py [CONFIG.yaml] [--pairs 3]

CONFIG defaults to `FKL_16K`: FKL, score estimator, B = 64, T = 500, a 32 x 32 grid of separation
x replay ratio x 16 seeds = 16,384 configurations.

The process exposes N host devices (forget_jax/host_devices.py, N from FORGET_JAX_HOST_DEVICES or
the cores); each pair runs `forget_jax.sweep(CONFIG, devices=devices[:1])` and
`devices[:N]` back to back, in alternating order, after one warm-up run of each (compilation).
Interleaving in one process keeps a shared machine's varying load out of the ratio as far as
possible. Prints every time, the median of each, and the median of the per-pair ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

from forget_jax import host_devices

FKL_16K = {
    "name": "fkl16k",
    "objective": "fkl",
    "estimator": "score",
    "batch_size": 64,
    "steps": 500,
    "log_every": 50,
    "seeds": 16,
    "grid": {"separation": {"linspace": [1.5, 6.0, 32]}, "replay_ratio": {"linspace": [0.0, 0.5, 32]}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", help="sweep YAML (default: FKL_16K)")
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    config = args.config or FKL_16K
    print(host_devices.configure())
    import jax

    import forget_jax

    devices = jax.devices("cpu")
    if len(devices) < 2:
        raise SystemExit(f"{len(devices)} CPU device: set FORGET_JAX_HOST_DEVICES=2 (or more)")
    counts = (1, len(devices))
    for n in counts:  # warm-up: compile both programs
        forget_jax.sweep(config, None, devices=devices[:n], progress=False)
    times: dict[int, list[float]] = {n: [] for n in counts}
    for i in range(args.pairs):
        for n in counts if i % 2 == 0 else counts[::-1]:
            t0 = time.perf_counter()
            forget_jax.sweep(config, None, devices=devices[:n], progress=False)
            times[n].append(time.perf_counter() - t0)
            print(f"pair {i}: {n} device(s) {times[n][-1]:.2f} s", flush=True)
    one, many = (statistics.median(times[n]) for n in counts)
    pairs = statistics.median(a / b for a, b in zip(times[counts[0]], times[counts[1]]))
    print(
        f"median: 1 device {one:.2f} s, {counts[1]} devices {many:.2f} s (ratio {one / many:.2f}); "
        f"median per-pair ratio {pairs:.2f}"
    )


if __name__ == "__main__":
    main()
