"""Shared helpers of the benchmark scripts: machine facts, cases, batches in both seed layouts,
the timing protocol, the per-configuration loops (jit(train) and PyTorch) and JSON / plot output.

Only public, stable interfaces of forget_jax are used (`spec.Setup`, `spec.make_hyper`,
`train.simulate_one`, `train.compiled_call`, `train.precision`, `train.program_memory`,
`forget_jax.sweep`), so the scripts keep working while the engine's inside changes.

Seed layouts (issue 9): `own` gives every configuration its own seed (the worst case for noise
shared by configurations with one seed); `sweep` is a realistic sweep, a grid of distinct values
times S seeds (seed s of every grid point is the same seed). In both layouts the traced values
(separation, learning rate, replay ratio where the case allows it) differ across grid points.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"
PLOTS = ROOT / "benchmarks" / "plots"
QUICK = Path(os.environ.get("TMPDIR", "/tmp")) / "forget-jax-bench-quick"

#: Static fields of each benchmark case (B, T, log_every are set per run). d = 16 needs equal,
#: fixed scales (fields.py): the defaults (all scales 1, train_scales false) satisfy it.
CASES: dict[str, dict[str, Any]] = {
    "fkl": dict(objective="fkl", estimator="pathwise", sampling="ancestral"),
    "rkl": dict(objective="rkl", estimator="pathwise", sampling="ancestral"),
    "fkl_population": dict(objective="fkl", estimator="population"),
    "rkl_population": dict(objective="rkl", estimator="population"),
    "fkl_d16": dict(objective="fkl", estimator="pathwise", sampling="ancestral", dim=16),
}
#: The cases whose hand-written PyTorch loop exists (d = 1 Monte Carlo).
TORCH_CASES = ("fkl", "rkl")
LAYOUTS = ("own", "sweep")


def out_dir(quick: bool, given: Path | None = None) -> Path:
    """Where a script writes its JSON / txt / png: `given`, else benchmarks/results (full runs) or a
    temporary folder (--quick, so a smoke test never overwrites measured numbers)."""
    path = given or (QUICK if quick else RESULTS)
    path.mkdir(parents=True, exist_ok=True)
    return path


def plot_dir(quick: bool, results: Path) -> Path:
    path = results / "plots" if quick else PLOTS
    path.mkdir(parents=True, exist_ok=True)
    return path


def _lscpu() -> dict[str, str]:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    out = {}
    for line in text.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            out[key.strip()] = value.strip()
    return out


def cpu_facts() -> dict[str, Any]:
    """CPU model, cores, clock (cpuinfo MHz), vendor / family and SIMD flags (lscpu, /proc/cpuinfo)."""
    info = _lscpu()
    mhz = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                mhz = float(line.split(":")[1])
                break
    except OSError:
        pass
    flags = set(info.get("Flags", "").split())
    return dict(
        model=info.get("Model name") or platform.processor() or platform.machine(),
        vendor=info.get("Vendor ID", ""),
        family=info.get("CPU family", ""),
        cpu_model_number=info.get("Model", ""),
        cores=os.cpu_count(),
        mhz=mhz or (float(info["CPU max MHz"]) if "CPU max MHz" in info else None),
        avx512f="avx512f" in flags,
        avx2="avx2" in flags,
        fma="fma" in flags,
        hypervisor=info.get("Hypervisor vendor", ""),
    )


def machine_facts() -> dict[str, Any]:
    """Facts recorded beside every result: date, CPU, cores, load, jax / device, torch."""
    import jax

    device = jax.devices()[0]
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    return dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        python=platform.python_version(),
        jax_version=jax.__version__,
        platform=device.platform,
        device_kind=device.device_kind,
        device_count=len(jax.devices()),
        cpu=cpu_facts(),
        load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        torch_version=torch_version,
        xla_flags=os.environ.get("XLA_FLAGS", ""),
    )


def facts_line(facts: dict) -> str:
    cpu = facts["cpu"]
    load = ", ".join(f"{v:.2f}" for v in facts["load_average"] or [])
    return (
        f"{facts['date']} | jax {facts['jax_version']} | {facts['platform']}: {facts['device_kind']} "
        f"x{facts['device_count']} | CPU {cpu['model']} ({cpu['cores']} cores, {cpu['mhz']} MHz) | load {load}"
        f" | torch {facts['torch_version'] or 'not installed'}"
    )


def make_setup(case: str, batch_size: int = 64, steps: int = 2000, log_every: int | None = None, **extra):
    """The Setup of a case; log_every defaults to steps / 10 (11 log points)."""
    from forget_jax.spec import Setup

    log_every = log_every or max(steps // 10, 1)
    return Setup(**CASES[case], batch_size=batch_size, steps=steps, log_every=log_every, **extra)


def uses_replay(case: str) -> bool:
    """RKL with the pathwise estimator and replay is refused by design (a replayed sample is not a
    function of theta): those cases keep replay_ratio = 0."""
    fields = CASES[case]
    return not (fields["objective"] == "rkl" and fields.get("estimator") == "pathwise")


def seeds_of(n: int, layout: str, seeds: int) -> np.ndarray:
    """Seed of each of n configurations: `own` 0..n-1; `sweep` grid point g, seed s -> s (a grid of
    n / S points times S seeds, S = min(seeds, n))."""
    if layout == "own":
        return np.arange(n)
    if layout != "sweep":
        raise ValueError(f"layout {layout!r}: one of {LAYOUTS}")
    s = max(1, min(seeds, n))
    return np.arange(n) % s


def batch_hyper(case: str, n: int, layout: str = "own", seeds: int = 16, dtype=np.float32):
    """n configurations with distinct traced values across grid points (separation in [1, 6],
    learning rate in [0.01, 0.1], replay ratio in [0, 0.3] where allowed) and seeds by layout.
    In the `sweep` layout the S configurations of one grid point share its values."""
    import forget_jax.train  # noqa: F401  (registers every field, e.g. items.py's, before make_hyper)
    from forget_jax.spec import make_hyper

    seed = seeds_of(n, layout, seeds)
    s = int(seed.max()) + 1 if layout == "sweep" else 1
    points = math.ceil(n / s)
    rng = np.random.default_rng(12345)
    point = np.arange(n) // s  # grid point of each configuration
    values = dict(
        separation=rng.uniform(1.0, 6.0, points)[point],
        learning_rate=rng.uniform(0.01, 0.1, points)[point],
    )
    if uses_replay(case):
        values["replay_ratio"] = rng.uniform(0.0, 0.3, points)[point]
    return make_hyper(dtype, **values, seed=seed)


def one(hyper, i: int):
    """Configuration i of a batched Hyper (host arrays)."""
    import jax

    return jax.tree.map(lambda x: x[i], hyper)


def median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def time_engine(setup, hyper, repeats: int = 3, long_s: float = 10.0, guard=None) -> dict[str, Any]:
    """Engine throughput of one batch: `compiled_call` (AOT compile timed apart), one warm-up
    call, then the median of `repeats` timed calls with block_until_ready (1 repeat when the
    warm-up took longer than `long_s`: stated in the row). Returns the row and keeps the compiled
    program under key "_compiled" (dropped before JSON). `guard(compiled)` may return a reason
    not to run it (e.g. memory): the row is then {"configs", "compile_s", "skipped": reason}."""
    import jax

    from forget_jax.train import compiled_call, precision

    n = int(np.asarray(hyper.seed).shape[0])
    with precision(setup):
        start = time.perf_counter()
        compiled, args = compiled_call(setup, hyper)
        compile_s = time.perf_counter() - start
        reason = guard(compiled) if guard else None
        if reason:
            return dict(configs=n, compile_s=compile_s, skipped=reason, _compiled=compiled)
        args = jax.block_until_ready(jax.device_put(args))
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        warmup_s = time.perf_counter() - start
        reps = repeats if warmup_s < long_s else 1
        run_s, times = median_time(lambda: jax.block_until_ready(compiled(*args)), reps)
    return dict(
        configs=n,
        steps=setup.steps,
        batch_size=setup.batch_size,
        compile_s=compile_s,
        warmup_s=warmup_s,
        run_s=run_s,
        times=times,
        repeats=reps,
        config_steps_per_s=n * setup.steps / run_s,
        _compiled=compiled,
    )


def public(row: dict) -> dict:
    """A row without its private objects (compiled programs): what goes to JSON."""
    return {k: v for k, v in row.items() if not k.startswith("_")}


def time_jax_loop(setup, hyper, n: int, repeats: int = 3) -> dict[str, Any]:
    """A Python loop over configurations, each a call of `train.simulate_one` (the jitted
    single-configuration function, host arrays in and out): the first call (compile) is apart."""
    from forget_jax.train import simulate_one

    configs = [one(hyper, i) for i in range(n)]
    start = time.perf_counter()
    simulate_one(setup, configs[0])
    first_s = time.perf_counter() - start
    run_s, times = median_time(lambda: [simulate_one(setup, h) for h in configs], repeats)
    return dict(
        configs=n,
        steps=setup.steps,
        compile_s=first_s,
        run_s=run_s,
        times=times,
        repeats=repeats,
        config_steps_per_s=n * setup.steps / run_s,
    )


def time_torch_loop(setup, hyper, n: int, steps: int, repeats: int = 3, style: str = "manual") -> dict | None:
    """Per-configuration PyTorch eager loop with the same model and estimator (FKL: -mean log q(x),
    x ~ p_train; RKL pathwise: reparameterised within components plus the label's score term with
    a leave-one-out baseline), logit weight, plain SGD: the code a user would write without
    forget-jax. Timed on n configurations of `steps` steps each (linear in both), reported per
    config-step. style "manual": hand-written log-densities; "distributions": torch.distributions
    (MixtureSameFamily of Normals). Returns None (and says so) when torch is not installed."""
    try:
        import torch
        import torch.distributions as D
    except ImportError:
        print("torch is not installed: skipping the PyTorch baseline (pip install -e '.[bench]')")
        return None
    if setup.dim != 1 or setup.estimator != "pathwise" or setup.objective not in ("fkl", "rkl"):
        return None
    log2pi = math.log(2 * math.pi)
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
    run_s, times = median_time(lambda: [run_config(i) for i in range(n)], repeats)
    return dict(
        configs=n,
        steps=steps,
        run_s=run_s,
        times=times,
        repeats=repeats,
        config_steps_per_s=n * steps / run_s,
        torch_version=torch.__version__,
        torch_threads=torch.get_num_threads(),
        style=style,
    )


def run_child(module_args: list[str], env: dict[str, str] | None = None, timeout: float | None = None) -> dict:
    """Run `python <module_args>` in a fresh process whose last stdout line is a JSON object;
    returns that object plus the child's wall time (`process_wall_s`, imports included)."""
    full_env = {**os.environ, **(env or {})}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *module_args], capture_output=True, text=True, env=full_env, timeout=timeout, cwd=ROOT
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"child {module_args} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"child {module_args} printed no JSON:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    result = json.loads(lines[-1])
    result["process_wall_s"] = wall
    return result


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, default=str))
    print(f"wrote {path}")


def fmt(x, digits: int = 3) -> str:
    """A number for a table: 3 significant digits, '-' for None."""
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, (int, np.integer)) and abs(x) < 1e6:
        return str(int(x))
    x = float(x)
    if x == 0:
        return "0"
    if 1e-2 <= abs(x) < 1e4:
        return f"{x:.{digits}g}"
    return f"{x:.{digits - 1}e}"


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def plot_lines(path: Path, series: dict[str, tuple[list, list]], xlabel: str, ylabel: str, title: str, logx=True):
    """One PNG with a line per series (x, y); log axes by default."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, (x, y) in series.items():
        if x:
            ax.plot(x, y, marker="o", label=label)
    if logx:
        ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")
