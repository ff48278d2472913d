"""Run a sweep: blocks -> compiled, sharded, vmapped batches -> store (or an in-memory Dataset).

Each block (plan.py) has one static `Setup`; its configurations become one `Hyper` batch, padded
to a fixed size (the block shape, rounded up to a multiple of the device count) so that every
block of a compile group reuses one compiled program, and sharded over all local devices along
the configuration axis with `jax.sharding`. Padding repeats the last configuration and is dropped
after the run; since each configuration's PRNG stream depends only on its own seed, results do
not depend on chunk size, device count or which process ran them (beyond float rounding).
"""

from __future__ import annotations

import datetime as _dt
import math
import platform
import time
from pathlib import Path

import jax
import numpy as np
import xarray as xr

from .. import fields
from .._version import __version__
from ..config import SweepSpec
from ..metrics import METRIC_NAMES
from ..spec import make_hyper
from ..store import StoreError, check_compatible, coordinates, create, done_blocks, finalize, open_store, write_block
from ..train import compiled_batch, precision
from .plan import Block, Plan, block_values, make_plan

_COMPILED: dict = {}


def _mesh_sharding(devices):
    mesh = jax.sharding.Mesh(np.array(devices), ("config",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("config"))


def _compiled(setup, hyper, devices):
    """AOT-compile jit(vmap(train)) for this Setup, batch size and device set; returns (fn, seconds)."""
    key = (setup, int(hyper.separation.shape[0]), tuple(d.id for d in devices))
    if key in _COMPILED:
        return _COMPILED[key], 0.0
    start = time.perf_counter()
    fn = compiled_batch(setup).lower(hyper).compile()
    seconds = time.perf_counter() - start
    _COMPILED[key] = fn
    return fn, seconds


def run_block(spec: SweepSpec, plan: Plan, block: Block, devices) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """Simulate one block; returns metrics (block.shape + (n_steps,)), diverged (block.shape), timing."""
    t0 = time.perf_counter()
    values = block_values(spec, block)
    traced = fields.names("traced")
    static = {k: values[k][0] for k in spec.axes if k not in traced}
    config = spec.with_values(static)
    setup = config.setup()
    with precision(setup):
        return _run_block(spec, plan, block, devices, setup, config, values, t0)


def _run_block(spec, plan, block, devices, setup, config, values, t0):
    n = block.size
    padded = math.ceil(math.prod(plan.chunk_shape) / len(devices)) * len(devices)
    take = np.minimum(np.arange(padded), n - 1)
    arrays = {}
    for field in fields.names("traced"):
        column = np.asarray(values[field], dtype=np.float64) if field in values else np.full(n, getattr(config, field))
        arrays[field] = column[take]
    arrays["seed"] = np.asarray(values["seed"], dtype=np.int64)[take]
    hyper = make_hyper(setup.dtype, **arrays)
    hyper = jax.device_put(hyper, _mesh_sharding(devices))
    fn, compile_s = _compiled(setup, hyper, devices)
    t1 = time.perf_counter()
    out = jax.block_until_ready(fn(hyper))
    run_s = time.perf_counter() - t1
    steps = coordinates(spec)["step"]
    positions = np.searchsorted(steps, setup.logged_steps())
    metrics = {}
    for name in METRIC_NAMES:
        full = np.full((n, len(steps)), np.nan, dtype=np.asarray(out[name]).dtype)
        full[:, positions] = np.asarray(out[name])[:n]
        metrics[name] = full.reshape(*block.shape, len(steps))
    diverged = np.asarray(out["diverged"])[:n].reshape(block.shape)
    timing = dict(compile_s=compile_s, run_s=run_s, wall_s=time.perf_counter() - t0)
    return metrics, diverged, timing


def store_attrs(spec: SweepSpec) -> dict:
    devices = jax.local_devices()
    return {
        "config": spec.to_yaml(),
        "name": spec.base.name,
        "forget_jax_version": __version__,
        "jax_version": jax.__version__,
        "device_kind": devices[0].device_kind,
        "platform": devices[0].platform,
        "local_device_count": len(devices),
        "host": platform.node(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(),
    }


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="config", desc=desc, disable=not enabled, smoothing=0.1, dynamic_ncols=True)


def run(
    spec: SweepSpec,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    shard: tuple[int, int] = (0, 1),
    chunk_size: int | None = None,
    progress: bool = True,
    devices=None,
) -> xr.Dataset:
    """Run (this process's share of) a sweep. With `out`, writes a zarr store as it goes and
    returns it opened lazily; without, returns an in-memory Dataset with the same layout."""
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"shard={index}/{count}: needs 0 <= i < N")
    devices = list(devices or jax.local_devices())
    if out is None:
        return _run_in_memory(spec, make_plan(spec, chunk_size), devices, progress)

    out = Path(out)
    if out.exists():
        chunk_shape = check_compatible(out, spec)
        plan = make_plan(spec, chunk_shape=chunk_shape)
        mine = plan.shard(index, count)
        done = done_blocks(out)
        if not resume and any(b.index in done for b in mine):
            raise StoreError(
                f"{out} already holds results of this sweep; pass --resume to continue it, or choose another --out"
            )
    else:
        plan = make_plan(spec, chunk_size)
        create(out, spec, plan, store_attrs(spec))
        plan = make_plan(spec, chunk_shape=check_compatible(out, spec))
        mine = plan.shard(index, count)
        done = done_blocks(out)
    todo = [b for b in mine if b.index not in done]
    bar = _progress(sum(b.size for b in mine), progress, spec.base.name)
    bar.update(sum(b.size for b in mine if b.index in done))
    for block in todo:
        metrics, diverged, timing = run_block(spec, plan, block, devices)
        write_block(out, spec, block, metrics, diverged, timing)
        bar.update(block.size)
        if diverged.any():
            bar.write(f"block {block.index}: {int(diverged.sum())} configuration(s) diverged (flagged in `diverged`)")
    bar.close()
    finalize(out, plan)
    return open_store(out)


def _run_in_memory(spec: SweepSpec, plan: Plan, devices, progress: bool) -> xr.Dataset:
    coords = coordinates(spec)
    n_steps = len(coords["step"])
    dtype = np.float64 if spec.base.x64 else np.float32
    arrays = {name: np.full((*spec.shape, n_steps), np.nan, dtype=dtype) for name in METRIC_NAMES}
    diverged = np.zeros(spec.shape, dtype=bool)
    compile_s = run_s = 0.0
    start = time.perf_counter()
    bar = _progress(spec.size, progress, spec.base.name)
    for block in plan.blocks:
        metrics, div, timing = run_block(spec, plan, block, devices)
        for name in METRIC_NAMES:
            arrays[name][block.region] = metrics[name]
        diverged[block.region] = div
        compile_s += timing["compile_s"]
        run_s += timing["run_s"]
        bar.update(block.size)
    bar.close()
    dims = spec.dims
    data_vars = {name: ((*dims, "step"), arrays[name]) for name in METRIC_NAMES}
    data_vars["diverged"] = (dims, diverged)
    data_vars["completed"] = (dims, np.ones(spec.shape, dtype=bool))
    attrs = {
        **store_attrs(spec),
        "compile_time_s": compile_s,
        "run_time_s": run_s,
        "wall_time_s": time.perf_counter() - start,
        "chunk_shape": list(plan.chunk_shape),
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def initialize_distributed(
    coordinator: str | None, num_processes: int | None, process_id: int | None
) -> tuple[int, int]:
    """`jax.distributed.initialize` (arguments or the cluster's environment); returns this
    process's shard (jax.process_index(), jax.process_count())."""
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    return jax.process_index(), jax.process_count()
