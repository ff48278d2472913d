"""Fault-injection campaign for long sweeps: kill, interrupt and corrupt a sweep, then resume.

    python benchmarks/fault_injection.py [--tries 6] [--out runs/faults]

Every scenario runs the CLI (`forget-jax sweep`) on a small Monte Carlo sweep with several
blocks and many segments, injects a fault, resumes with `forget-jax sweep ... --resume` and
compares the final store bitwise (every variable, NaN-aware) with a clean run of the same
command. A scenario *survives* when every process exits cleanly or by the injected signal (never
by a crash of its own: SIGABRT, SIGSEGV, a traceback) and the resumed store equals the clean one;
*data lost* counts resumed stores that differ. Results go to stdout (a table) and to
`<out>/fault_injection.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr
import yaml

CONFIG = {
    "name": "faults",
    "objective": "fkl",
    "estimator": "pathwise",
    "batch_size": 64,
    "learning_rate": 0.05,
    "steps": 3000,
    "log_every": 20,
    "seeds": 4,
    "grid": {"separation": [1.5, 2.0, 2.5, 3.0, 3.5, 4.0]},
}
SWEEP = ["--chunk-size", "8", "--segment-seconds", "0.3", "--no-progress"]


def _cmd(config: Path, store: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "forget_jax.cli", "sweep", str(config), "--out", str(store), *SWEEP, *extra]


def _same(a: Path, b: Path) -> bool:
    x, y = xr.open_zarr(a), xr.open_zarr(b)
    if dict(x.sizes) != dict(y.sizes):
        return False
    for name in y.data_vars:
        u, v = x[name].values, y[name].values
        if not np.array_equal(u, v, equal_nan=u.dtype.kind == "f"):
            return False
    return True


def _clean_exit(code: int, err: str, allowed: set[int]) -> bool:
    return code in allowed and "Traceback" not in err and "pure virtual" not in err


def _resume(config: Path, store: Path, env) -> tuple[int, str]:
    p = subprocess.run(_cmd(config, store, "--resume"), env=env, capture_output=True, text=True, timeout=900)
    return p.returncode, p.stderr


def _signal_run(config, store, env, sig, delay, twice=False) -> tuple[int, str]:
    proc = subprocess.Popen(_cmd(config, store, "--resume"), env=env, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(sig)
    if twice:
        time.sleep(0.05)
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=900)
    return proc.returncode, err


def _corrupt(store: Path, kind: str, rng: random.Random) -> str:
    chunks = [p for p in (store / "old_weight").iterdir() if not p.name.startswith(".")]
    target = rng.choice(chunks)
    if kind == "delete chunk":
        target.unlink()
    elif kind == "truncate chunk":
        target.write_bytes(target.read_bytes()[: max(1, target.stat().st_size // 2)])
    elif kind == "flip a bit":
        data = bytearray(target.read_bytes())
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(data))
    elif kind == "delete coordinate":
        coord = next(p for p in (store / "separation").iterdir() if not p.name.startswith("."))
        coord.unlink()
        target = coord
    elif kind == "delete ready marker":
        target = store / ".forget_jax" / "ready"
        target.unlink()
    elif kind == "delete manifest":
        target = store / ".forget_jax" / "manifest.json"
        target.unlink()
    elif kind == "garbage marker":
        target = rng.choice(sorted((store / ".forget_jax" / "done").glob("*.json")))
        target.write_text("{not json")
    return str(target.relative_to(store))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=6, help="tries per signal scenario")
    parser.add_argument("--out", type=Path, default=Path("runs/faults"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    config = out / "faults.yaml"
    config.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"), "PYTHONUNBUFFERED": "1"}
    env.setdefault("FORGET_JAX_CACHE_DIR", str(out / "cache"))

    clean = out / "clean.zarr"
    t0 = time.perf_counter()
    subprocess.run(_cmd(config, clean), env=env, check=True, capture_output=True, timeout=900)
    clean_s = time.perf_counter() - t0
    print(f"clean run: {clean_s:.1f} s (first run compiles; later runs hit the compilation cache)")
    t0 = time.perf_counter()
    subprocess.run(_cmd(config, out / "timing.zarr"), env=env, check=True, capture_output=True, timeout=900)
    rerun_s = time.perf_counter() - t0
    horizon = max(2.0, rerun_s)

    rows = []

    def record(name, tries, survived, lost, detail):
        rows.append(dict(scenario=name, tries=tries, survived=survived, data_lost=lost, detail=detail))
        print(f"{name:<34} {tries:>3} tried  {survived:>3} survived  {lost} lost   {detail}", flush=True)

    for name, sig, twice in (
        ("SIGKILL at a random time", signal.SIGKILL, False),
        ("SIGINT at a random time", signal.SIGINT, False),
        ("SIGTERM at a random time", signal.SIGTERM, False),
        ("SIGINT twice (exit at once)", signal.SIGINT, True),
    ):
        survived = lost = 0
        codes = []
        for i in range(args.tries):
            store = out / f"{name.split()[0].lower()}{'2' if twice else ''}_{i}.zarr"
            code, err = _signal_run(config, store, env, sig, rng.uniform(0.3, horizon), twice)
            codes.append(code)
            ok = _clean_exit(code, err, {0, 128 + int(sig), -int(sig)})
            rcode, _ = _resume(config, store, env)
            same = rcode == 0 and _same(store, clean)
            survived += ok and same
            lost += not same
        record(name, args.tries, survived, lost, f"exit codes {sorted(set(codes))}")

    survived = lost = 0
    for i in range(args.tries):  # kill during store creation (the first ~2 s of a fresh run)
        store = out / f"create_{i}.zarr"
        code, err = _signal_run(config, store, env, signal.SIGKILL, rng.uniform(0.5, 3.0))
        rcode, _ = _resume(config, store, env)
        same = rcode == 0 and _same(store, clean)
        survived += same
        lost += not same
    record("SIGKILL early (during creation)", args.tries, survived, lost, "recovered by --resume")

    kinds = [
        "delete chunk",
        "truncate chunk",
        "flip a bit",
        "delete coordinate",
        "delete ready marker",
        "delete manifest",
        "garbage marker",
    ]
    for kind in kinds:
        store = out / f"corrupt_{kind.replace(' ', '_')}.zarr"
        shutil.copytree(clean, store)
        what = _corrupt(store, kind, rng)
        verify = subprocess.run(
            [sys.executable, "-m", "forget_jax.cli", "verify", str(store)], env=env, capture_output=True, text=True
        )
        named = verify.returncode == 1 and (Path(what).name in verify.stdout or kind in ("delete ready marker",))
        rcode, _ = _resume(config, store, env)
        same = rcode == 0 and _same(store, clean)
        record(f"corrupt: {kind}", 1, int(named and same), int(not same), f"verify exit {verify.returncode}: {what}")

    survived = lost = 0
    for i in range(max(2, args.tries // 2)):  # two writers, no --shard
        store = out / f"writers_{i}.zarr"
        procs = [
            subprocess.Popen(_cmd(config, store, "--resume"), env=env, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        errs = [p.communicate(timeout=900)[1] for p in procs]
        ok = all(p.returncode == 0 for p in procs)
        markers = [json.loads(p.read_text()) for p in (store / ".forget_jax" / "done").glob("*.json")]
        same = _same(store, clean)
        survived += ok and same
        lost += not same
        _ = (errs, markers)
    record("two writers without --shard", max(2, args.tries // 2), survived, lost, "leases")

    (out / "fault_injection.json").write_text(json.dumps(dict(config=CONFIG, rows=rows, clean_s=clean_s), indent=2))
    total = sum(r["tries"] for r in rows)
    print(
        f"total: {total} scenarios tried, {sum(r['survived'] for r in rows)} survived, "
        f"{sum(r['data_lost'] for r in rows)} with data lost"
    )


if __name__ == "__main__":
    main()
