"""Common random numbers vs independent noise across a phase diagram (docs/science/objectives.md,
"Noise"): the variance of the difference of the final old weight between two neighbouring grid
points (separation 3.0 and 3.2), over seeds, with the default shared draws and with
`independent_noise: true`.

    python benchmarks/common_random_numbers.py            # 128 seeds, FKL pathwise ancestral
"""

from __future__ import annotations

import argparse

import numpy as np

import forget_jax


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=128)
    args = parser.parse_args()
    seeds = args.seeds
    print(
        "FKL pathwise ancestral, B = 16, T = 200, lr 0.1, replay 0.1; final old weight at separation 3.0 (a) and 3.2 (b)"
    )
    print(
        f"{'noise':12s} {'Var w_a':>10s} {'Var w_b':>10s} {'Var(w_a - w_b)':>15s} {'ratio to Var w_a + Var w_b':>27s}"
    )
    for independent in (False, True):
        setup = forget_jax.Setup(
            objective="fkl",
            estimator="pathwise",
            sampling="ancestral",
            steps=200,
            log_every=100,
            batch_size=16,
            independent_noise=independent,
        )
        hyper = forget_jax.make_hyper(
            separation=np.repeat([3.0, 3.2], seeds),
            replay_ratio=0.1,
            learning_rate=0.1,
            seed=np.tile(np.arange(seeds), 2),
        )
        w = forget_jax.simulate(setup, hyper)["old_weight"][:, -1].astype(np.float64)
        a, b = w[:seeds], w[seeds:]
        diff = np.var(a - b, ddof=1)
        total = np.var(a, ddof=1) + np.var(b, ddof=1)
        name = "independent" if independent else "shared (CRN)"
        print(f"{name:12s} {np.var(a, ddof=1):10.3g} {np.var(b, ddof=1):10.3g} {diff:15.3g} {diff / total:27.3f}")


if __name__ == "__main__":
    main()
