"""Config-steps/s of the engine of one checkout; run it for two checkouts, alternated, to compare
engine versions on one machine (the ratio is what counts).

    git worktree add /tmp/forget-jax-old 60abda9      # the engine before issue 9
    python benchmarks/engine_versions.py /tmp/forget-jax-old fkl 4096 16 400
    python benchmarks/engine_versions.py . fkl 4096 16 400

Arguments: ROOT (a checkout), OBJECTIVE, N, SEEDS, T. Prints the config-steps/s of the compiled
batch program (`jit(vmap(train))`, compile excluded) over N configurations with seeds
0 .. SEEDS - 1 repeated (pathwise, ancestral, B = 64, d = 1), the median of 3 runs.
"""

from __future__ import annotations

import importlib
import statistics
import sys
import time


def main() -> None:
    root, objective = sys.argv[1], sys.argv[2]
    n, seeds, steps = (int(v) for v in sys.argv[3:6])
    sys.path.insert(0, root)
    jax = importlib.import_module("jax")
    jnp = importlib.import_module("jax.numpy")
    np = importlib.import_module("numpy")
    spec = importlib.import_module("forget_jax.spec")
    train = importlib.import_module("forget_jax.train")
    setup = spec.Setup(
        objective=objective,
        estimator="pathwise",
        sampling="ancestral",
        steps=steps,
        log_every=steps // 10,
        batch_size=64,
    )
    rng = np.random.default_rng(0)
    hyper = spec.make_hyper(
        separation=rng.uniform(1, 6, n), learning_rate=rng.uniform(0.01, 0.1, n), seed=np.arange(n) % seeds
    )
    with train.precision(setup):
        if hasattr(train, "compiled_call"):  # since issue 9: noise layout and compiler options
            program, args = train.compiled_call(setup, hyper)
        else:
            cast = lambda x: jnp.asarray(x, jnp.int32 if x.dtype.kind in "iu" else setup.dtype)
            args = (jax.tree.map(cast, hyper),)
            program = train.compiled_batch(setup).lower(*args).compile()
        jax.block_until_ready(program(*args))
        times = []
        for _ in range(3):
            start = time.perf_counter()
            jax.block_until_ready(program(*args))
            times.append(time.perf_counter() - start)
    print(f"{n * steps / statistics.median(times):.4g}")


if __name__ == "__main__":
    main()
