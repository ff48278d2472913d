"""Run a sweep: blocks -> compiled segments -> store (or an in-memory Dataset).

Each block (plan.py) has one static `Setup`; its configurations become one `Hyper` batch, padded
to a fixed size (the block shape, rounded up to a multiple of the device count) so that every
block of a compile group reuses one compiled program, and sharded over all local devices along
the configuration axis with `jax.sharding`. Padding repeats the last configuration and is dropped
after the run; since each configuration's PRNG stream depends only on its own seed, results do
not depend on chunk size, device count or which process ran them (beyond float rounding).

Time-segmented execution (long sweeps). A block runs as a sequence of *segments* over its log
points, all served by one compiled program (`train.make_segments`, jitted here with explicit shardings: the segment bounds are
traced, the training carry is donated): after each segment the progress bar moves (in
config-steps, with an ETA), the claim on the block is renewed and, when writing a store, the
carry is checkpointed into the store. A sweep killed mid-block resumes from its last segment, and
the result is bitwise equal to a run straight through (same program, same per-step arithmetic,
an exact host round trip of the carry). Segment lengths follow a time target (`segment_seconds`,
default 10 s, from the measured seconds per log point; the first segment of a compile group is a
short probe) or a fixed `segment_logs`.

Interrupts (interrupts.py): SIGINT / SIGTERM finish the current segment, save the checkpoint and
raise `Interrupted` with the exact resume command; a second signal exits at once, leaving the
store resumable. Concurrent writers on one store take blocks through leases (store.claim), so
two processes without `--shard` share the work instead of duplicating it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from .. import fields
from .. import store as store_mod
from .._cache import enable_compilation_cache
from .._version import __version__
from ..config import ConfigError, SweepSpec
from ..limits import Limits, check_limits
from ..pipeline.schedule import split_name
from ..spec import make_hyper
from ..store import (
    StoreError,
    check_compatible,
    coordinates,
    create,
    dataset_coordinates,
    done_blocks,
    finalize,
    metric_dims,
    open_store,
    write_block,
)
from ..train import PER_CONFIG_OUTPUTS, compiler_options, make_segments, precision, seed_layout
from . import extend as extend_mod
from . import interrupts
from .checks import start_warnings
from .interrupts import Interrupted
from .plan import Block, Plan, block_values, default_chunk_size, make_plan

_COMPILED: dict = {}

#: Default wall-clock target of one segment, seconds (`--segment-seconds`).
SEGMENT_SECONDS = 10.0


def _mesh_sharding(devices):
    mesh = jax.sharding.Mesh(np.array(devices), ("config",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("config"))


@dataclass
class SegmentClock:
    """Chooses segment lengths (in log points) from a wall-clock target.

    The first segment of a compile group is a probe of two log points (the initial record and
    one interval of `log_every` steps); afterwards a segment is `target_s / seconds_per_log`
    log points, growing at most fourfold per segment (a noisy first estimate cannot produce one
    huge segment). `fixed` overrides the target.
    """

    target_s: float = SEGMENT_SECONDS
    fixed: int | None = None
    seconds_per_log: float | None = None
    last: int = 1

    def length(self, start: int, num_logs: int) -> int:
        remaining = num_logs - start
        if self.fixed is not None:
            return max(1, min(self.fixed, remaining))
        if self.seconds_per_log is None:
            return max(1, min(2, remaining))
        n = int(self.target_s / max(self.seconds_per_log, 1e-12))
        return max(1, min(n, 4 * self.last, remaining))

    def observe(self, start: int, stop: int, seconds: float) -> None:
        self.last = stop - start
        intervals = stop - max(start, 1)  # log point 0 runs no steps
        if intervals <= 0:
            return
        rate = seconds / intervals
        self.seconds_per_log = rate if self.seconds_per_log is None else 0.5 * (self.seconds_per_log + rate)


@dataclass
class RunContext:
    """What the block loop needs besides the block: where to checkpoint, how to report."""

    out: Path | None = None
    owner: str | None = None
    lease_s: float = 120.0
    clocks: dict = field(default_factory=dict)
    segment_seconds: float = SEGMENT_SECONDS
    segment_logs: int | None = None
    on_advance: object = None  # callable(config_steps: int) or None
    on_status: object = None  # callable(text: str) or None
    on_segment: object = None  # callable(block, stop, num_logs) after each checkpoint (tests, caps)

    def clock(self, key) -> SegmentClock:
        if key not in self.clocks:
            self.clocks[key] = SegmentClock(self.segment_seconds, self.segment_logs)
        return self.clocks[key]

    def status(self, text: str) -> None:
        if callable(self.on_status):
            self.on_status(text)

    def advance(self, config_steps: int) -> None:
        if callable(self.on_advance):
            self.on_advance(config_steps)


def _compiled(setup, hyper, noise, devices):
    """AOT-compile the segment programs for this Setup, batch size, noise layout and device set.

    Every leaf of the carry (and of `hyper`) has the configuration axis first and is sharded
    along it, in and out of every program (explicit shardings: a checkpointed carry is put back
    exactly as a fresh one, and a segment's output feeds the next segment unchanged). The segment
    bounds are replicated scalars. `noise` is () (every configuration draws its own noise) or
    (noise_seeds, seed_slot) of `train.seed_layout`: the seed table replicated (each device draws
    it; it is small by construction), the slots sharded with the configurations.
    Returns ((init, segment, finish), seconds)."""
    table = int(noise[0].shape[0]) if noise else None
    key = (setup, int(hyper.separation.shape[0]), table, tuple((d.platform, d.id) for d in devices))
    if key in _COMPILED:
        return _COMPILED[key], 0.0
    start = time.perf_counter()
    sharded = _mesh_sharding(devices)
    replicated = jax.sharding.NamedSharding(sharded.mesh, jax.sharding.PartitionSpec())
    init_fn, segment_fn, finish_fn = make_segments(setup)
    options = compiler_options(devices[0].platform)
    init_b = jax.jit(jax.vmap(init_fn), in_shardings=sharded, out_shardings=sharded, compiler_options=options)
    noise_axes, noise_shardings = ((None, 0), (replicated, sharded)) if noise else ((), ())
    segment_b = jax.jit(
        jax.vmap(segment_fn, in_axes=(0, 0, None, None, *noise_axes)),
        in_shardings=(sharded, sharded, replicated, replicated, *noise_shardings),
        out_shardings=sharded,
        donate_argnums=0,
        compiler_options=options,
    )
    finish_b = jax.jit(jax.vmap(finish_fn), in_shardings=sharded, out_shardings=sharded)
    init = init_b.lower(hyper).compile()
    carry = jax.eval_shape(init_b, hyper)
    bound = jax.ShapeDtypeStruct((), jnp.int32)
    segment = segment_b.lower(carry, hyper, bound, bound, *noise).compile()
    finish = finish_b.lower(carry).compile()
    seconds = time.perf_counter() - start
    _COMPILED[key] = (init, segment, finish)
    return _COMPILED[key], seconds


@contextlib.contextmanager
def _running(setup):
    """Where a block's programs run: the Setup's precision, and without the warning that a
    backend (CPU) cannot reuse the donated carry buffers."""
    with precision(setup), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
        yield


def _block_setup(spec: SweepSpec, values: dict):
    traced = fields.names("traced")
    static = {k: values[k][0] for k in spec.axes if k not in traced and split_name(k) is None}
    config = spec.with_values(static)
    return config, config.setup()


def block_steps(spec: SweepSpec, block: Block) -> int:
    """Optimisation steps of every configuration in the block (steps is a static axis)."""
    if "steps" not in spec.axes:
        return int(spec.base.steps)
    return int(spec.axes["steps"][block.region[spec.dims.index("steps")].start])


def run_block(
    spec: SweepSpec,
    plan: Plan,
    block: Block,
    devices,
    ctx: RunContext | None = None,
    subset: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """Simulate one block (or the `subset` of its flattened configurations, C order).

    Returns (metrics: name -> (n, n_store_steps), per_config: name -> (n,), timing), n being the
    block size or len(subset). With `ctx.out`, resumes from and writes the block's checkpoint.
    """
    ctx = ctx or RunContext()
    t0 = time.perf_counter()
    values = block_values(spec, block)
    if subset is not None:
        values = {k: v[subset] for k, v in values.items()}
    config, setup = _block_setup(spec, values)
    with _running(setup):
        return _run_block(spec, plan, block, devices, setup, config, values, t0, ctx, subset)


def _block_hyper(plan: Plan, values: dict, config, setup, devices):
    """The block's `Hyper` batch, padded to the plan's block size (a multiple of the device count,
    the last configuration repeated) and sharded over the devices, and its noise layout (() or
    (noise_seeds, seed_slot), `train.seed_layout`: the draws once per seed of the block); returns
    (hyper, noise, n, padded)."""
    n = len(values["seed"])
    padded = math.ceil(math.prod(plan.chunk_shape) / len(devices)) * len(devices)
    take = np.minimum(np.arange(padded), n - 1)
    arrays = {}
    defaults = config.hyper_values()  # a pipeline's stages.<i>.<field> too
    for name, default in defaults.items():
        column = np.asarray(values[name], dtype=np.float64) if name in values else np.full(n, default)
        arrays[name] = column[take]
    for name in values:  # a top-level traced axis is the value of every stage that does not set it
        stage_names = [k for k in defaults if (s := split_name(k)) is not None and s[1] == name]
        for k in stage_names:
            if k not in values and _stage_inherits(config, k):
                arrays[k] = arrays[name]
    arrays["seed"] = np.asarray(values["seed"], dtype=np.int64)[take]
    sharded = _mesh_sharding(devices)
    hyper = jax.device_put(make_hyper(setup.dtype, **arrays), sharded)
    noise_seeds, seed_slot = seed_layout(setup, arrays["seed"])
    noise: tuple = ()
    if noise_seeds is not None:
        replicated = jax.sharding.NamedSharding(sharded.mesh, jax.sharding.PartitionSpec())
        noise = (jax.device_put(noise_seeds, replicated), jax.device_put(seed_slot, sharded))
    return hyper, noise, n, padded


def _stage_inherits(config, key: str) -> bool:
    """Whether stage i takes its value of a field from the top level (it does not set it itself)."""
    i, name = split_name(key)  # type: ignore[misc]
    return name not in config.stages[i]


def _run_block(spec, plan, block, devices, setup, config, values, t0, ctx: RunContext, subset):
    hyper, noise, n, padded = _block_hyper(plan, values, config, setup, devices)
    ctx.status(f"block {block.index}: compiling")
    (init, segment, finish), compile_s = _compiled(setup, hyper, noise, devices)
    if interrupts.requested():
        raise _interrupted(ctx, block, None)
    num_logs = setup.num_logs
    carry = init(hyper)
    start = 0
    run_s = 0.0
    meta = {
        "block": block.index,
        "padded": padded,
        "configs": n,
        "num_logs": num_logs,
        "subset": None if subset is None else [int(i) for i in subset],
        "treedef": str(jax.tree.structure(carry)),
    }
    if ctx.out is not None:
        restored = _restore(ctx.out, carry, meta)
        if restored is not None:
            carry, start, run_s = restored
            ctx.status(f"block {block.index}: resumed at log point {start}/{num_logs}")
            ctx.advance(n * int(setup.logged_steps()[start - 1]) if start > 0 else 0)
    clock = ctx.clock((setup, padded))
    steps_of = setup.logged_steps()
    while start < num_logs:
        stop = start + clock.length(start, num_logs)
        ctx.status(f"block {block.index}: log points {start}-{stop - 1} of {num_logs}")
        t1 = time.perf_counter()
        carry = segment(carry, hyper, jnp.asarray(start, jnp.int32), jnp.asarray(stop, jnp.int32), *noise)
        host = jax.tree.map(np.asarray, carry) if (ctx.out is not None and stop < num_logs) else None
        jax.block_until_ready(carry)
        seconds = time.perf_counter() - t1
        run_s += seconds
        clock.observe(start, stop, seconds)
        done_before = int(steps_of[start - 1]) if start > 0 else 0
        work = n * (int(steps_of[stop - 1]) - done_before)
        start = stop
        if host is not None and ctx.out is not None:
            store_mod.write_checkpoint(ctx.out, block.index, _leaves(host), {**meta, "stop": start, "run_s": run_s})
        if ctx.out is not None and ctx.owner is not None:
            store_mod.renew(ctx.out, block.index, ctx.owner, ctx.lease_s)
        ctx.advance(work)  # after the checkpoint: a cap that trips here loses nothing
        if callable(ctx.on_segment):
            ctx.on_segment(block, start, num_logs)
        if interrupts.requested() and start < num_logs:
            raise _interrupted(ctx, block, (start, num_logs))
    out = jax.tree.map(np.asarray, finish(carry))
    steps = coordinates(spec)["step"]
    positions = np.searchsorted(steps, steps_of)
    metrics = {}
    for name in metric_dims(spec):  # METRIC_NAMES (n, num_logs); a pipeline's per-mode ones (n, num_logs, K)
        full = np.full((n, len(steps), *out[name].shape[2:]), np.nan, dtype=out[name].dtype)
        full[:, positions] = out[name][:n]
        metrics[name] = full
    per_config = {name: out[name][:n] for name in PER_CONFIG_OUTPUTS if name in out}
    timing = dict(compile_s=compile_s, run_s=run_s, wall_s=time.perf_counter() - t0)
    return metrics, per_config, timing


def _leaves(host_carry) -> dict[str, np.ndarray]:
    return {f"leaf_{i:03d}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(host_carry))}


def _restore(out: Path, fresh_carry, meta: dict):
    """The block's checkpointed carry (put on the devices with the fresh carry's shardings), its
    next log point and run seconds; None when there is no usable checkpoint."""
    found = store_mod.read_checkpoint(out, meta["block"])
    if found is None:
        return None
    arrays, saved = found
    fresh = jax.tree.leaves(fresh_carry)
    keys = sorted(arrays)
    usable = all(saved.get(k) == meta[k] for k in ("padded", "configs", "num_logs", "subset", "treedef"))
    usable = usable and len(keys) == len(fresh)
    usable = usable and all(
        arrays[k].shape == x.shape and arrays[k].dtype == x.dtype for k, x in zip(keys, fresh, strict=False)
    )
    if not usable:
        warnings.warn(
            f"{out}: the checkpoint of block {meta['block']} does not match this run (other code or settings); "
            "the block restarts from its beginning",
            stacklevel=2,
        )
        store_mod.drop_checkpoint(out, meta["block"])
        return None
    leaves = [jax.device_put(arrays[k], x.sharding) for k, x in zip(keys, fresh, strict=True)]
    carry = jax.tree.unflatten(jax.tree.structure(fresh_carry), leaves)
    return carry, int(saved["stop"]), float(saved.get("run_s", 0.0))


def _interrupted(ctx: RunContext, block: Block, where) -> Interrupted:
    saved = (
        f"block {block.index} checkpointed at log point {where[0]}/{where[1]}"
        if where is not None and ctx.out is not None
        else f"stopped before block {block.index} ran"
    )
    message = f"interrupted: {saved}; " + (interrupts.hint() or "nothing was written")
    return Interrupted(message, interrupts.signal_number())


def resume_hint(out: Path | None, command: list[str] | None = None) -> str:
    """The one line that says how to resume a sweep into `out`: the exact command line when run
    from the CLI (with `--resume` added), else the Python call."""
    if out is None:
        return "" if command is None else "rerun: " + " ".join(command)
    if command is not None:
        import shlex

        argv = list(command)
        if "--resume" not in argv:
            argv.append("--resume")
        return "resume with: " + shlex.join(argv)
    return f"resume with: forget_jax.sweep(<same config>, out={str(out)!r}, resume=True)"


def store_attrs(spec: SweepSpec) -> dict:
    devices = jax.local_devices()
    attrs = {
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
    attrs.update({f"provenance_{k}" if k in attrs else k: v for k, v in store_mod.provenance().items()})
    return attrs


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        unit="config-step",
        unit_scale=True,
        desc=desc,
        disable=not enabled,
        smoothing=0.1,
        dynamic_ncols=True,
        mininterval=0.5,
    )


def config_steps(spec: SweepSpec, blocks) -> int:
    """Work of some blocks in config-steps (configurations x optimisation steps)."""
    return int(sum(b.size * block_steps(spec, b) for b in blocks))


def run(
    spec: SweepSpec,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    shard: tuple[int, int] = (0, 1),
    chunk_size: int | None = None,
    progress: bool = True,
    devices=None,
    segment_seconds: float = SEGMENT_SECONDS,
    segment_logs: int | None = None,
    refuse_damaged: bool = False,
    command: list[str] | None = None,
    on_advance=None,
    on_segment=None,
    max_hours: float | None = None,
    extend: bool = False,
    limits: Limits | None = None,
) -> xr.Dataset:
    """Run (this process's share of) a sweep. With `out`, writes a zarr store as it goes and
    returns it opened lazily; without, returns an in-memory Dataset with the same layout.

    Args:
        spec: the validated sweep (config.load_config).
        out: zarr store path, or None for an in-memory Dataset.
        resume: continue a store: verify it, repair or recompute damaged blocks, skip the
            committed ones, continue checkpointed blocks from their last segment.
        shard: (i, N): run the disjoint slice i of N of the blocks.
        chunk_size: configurations per block (default: plan.choose_chunk_size, from XLA's memory
            analysis of the block program and the devices' free memory).
        progress: show a progress bar (config-steps, with an ETA).
        devices: devices to shard each block over (default: all local devices).
        segment_seconds: wall-clock target of one segment (checkpoint and progress interval).
        segment_logs: fixed segment length in log points (overrides segment_seconds).
        refuse_damaged: with resume, refuse a damaged store (naming the damaged blocks) instead
            of recomputing what is damaged.
        command: the command line that started the run (CLI), for the resume hint.
        on_advance: callable(config_steps) after each segment (aggregated progress).
        on_segment: callable(block, stop, num_logs) after each segment (and its checkpoint).
        max_hours: refuse (after the first segment, checkpoint kept) a run whose estimated time
            exceeds this many hours; None: no cap.
        extend: `out` holds a smaller sweep (fewer seeds or grid values): write this bigger one
            in its place, copying the configurations it holds and simulating only the new ones
            (runner/extend.py).
        limits: resource caps checked before anything runs (limits.py; default `Limits()`,
            `Limits.none()` switches them off).
    """
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"shard={index}/{count}: needs 0 <= i < N")
    if segment_seconds <= 0 or not math.isfinite(segment_seconds):
        raise ValueError(f"segment_seconds={segment_seconds}: must be a positive number of seconds")
    if segment_logs is not None and segment_logs < 1:
        raise ValueError(f"segment_logs={segment_logs}: must be >= 1")
    limits = Limits() if limits is None else limits
    check_limits(spec, limits, chunk_size or 1)  # the caps that do not depend on the block size, before any probe
    enable_compilation_cache()
    devices = list(devices or jax.local_devices())
    chunk_size = chunk_size or default_chunk_size(spec, devices)  # from XLA's memory analysis (plan.py)
    check_limits(spec, limits, chunk_size)
    out = None if out is None else Path(out)
    ctx = RunContext(out=out, segment_seconds=segment_seconds, segment_logs=segment_logs, on_segment=on_segment)
    with interrupts.handle_interrupts(resume_hint(out, command)):
        if out is None:
            if extend:
                raise ValueError("extend needs a store (out) to extend")
            return _run_in_memory(spec, make_plan(spec, chunk_size), devices, progress, ctx, on_advance, max_hours)
        args = (shard, chunk_size, progress, devices, ctx, refuse_damaged, on_advance, max_hours)
        if extend:
            extend_mod.finish_swap(out)
            if out.exists() and extend_mod.stored_spec(out).to_yaml() != spec.to_yaml():
                source = extend_mod.Source(out, extend_mod.index_maps(extend_mod.stored_spec(out), spec), spec.dims)
                try:
                    _run_store(spec, extend_mod.staging_path(out), True, *args, source=source)
                finally:
                    source.ds.close()
                extend_mod.swap(out)
                return open_store(out)
            resume = True
        return _run_store(spec, out, resume, *args)


def _open_or_create(spec, out: Path, resume: bool, chunk_size, refuse_damaged: bool, say) -> Plan:
    """The plan of the store at `out`: created if absent; with `resume`, verified and repaired
    first (store.prepare_resume: damaged blocks are recomputed, a killed creation is redone)."""
    lock = out.with_name(out.name + ".creating")
    if out.exists() or lock.exists():
        if resume:
            for line in store_mod.prepare_resume(out, spec, refuse_damaged=refuse_damaged):
                say(line)
        return make_plan(spec, chunk_shape=check_compatible(out, spec))
    plan = make_plan(spec, chunk_size)
    create(out, spec, plan, store_attrs(spec))
    return make_plan(spec, chunk_shape=check_compatible(out, spec))


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def warn_starts(spec: SweepSpec) -> None:
    """One line on stderr per grid point whose starting values are an artefact (checks.py)."""
    for line in start_warnings(spec):
        _say(f"warning: {line}")


def _run_store(
    spec, out, resume, shard, chunk_size, progress, devices, ctx, refuse_damaged, on_advance, max_hours, source=None
):
    index, count = shard
    existed = out.exists()
    plan = _open_or_create(spec, out, resume, chunk_size, refuse_damaged, _say)
    mine = plan.shard(index, count)
    done = done_blocks(out)
    if existed and not resume and any(b.index in done for b in mine):
        raise StoreError(
            f"{out} already holds results of this sweep; pass --resume to continue it, or choose another --out"
        )
    warn_starts(spec)
    bar = _progress(config_steps(spec, mine), progress, spec.base.name)
    say = bar.write if progress else _say
    bar.update(config_steps(spec, [b for b in mine if b.index in done]))
    started = time.perf_counter()
    work_total = config_steps(spec, [b for b in mine if b.index not in done])
    work_done = [0]

    def advance(n: int) -> None:
        bar.update(n)
        work_done[0] += n
        if callable(on_advance):
            on_advance(n)
        if max_hours is not None and work_done[0] > 0:
            elapsed = time.perf_counter() - started
            estimate = elapsed * work_total / work_done[0]
            if estimate > 3600 * max_hours and work_done[0] < work_total:
                raise ConfigError(
                    f"{out}: estimated run time {estimate / 3600:.1f} h (measured {work_done[0] / elapsed:.3g} "
                    f"config-steps/s over {work_total:.3g} config-steps) exceeds --max-hours {max_hours:g}; "
                    "pass a larger --max-hours (the checkpoint is kept: rerun with --resume)"
                )

    ctx.on_advance = advance
    ctx.on_status = lambda text: bar.set_postfix_str(text, refresh=True)
    owner = ctx.owner = store_mod.owner_id()
    ctx.lease_s = max(120.0, 6.0 * ctx.segment_seconds)
    pending = [b for b in mine if b.index not in done]
    try:
        while pending:
            progressed = False
            finished = done_blocks(out)
            for block in list(pending):
                if block.index in finished:  # another writer committed it
                    pending.remove(block)
                    bar.update(config_steps(spec, [block]))
                    continue
                if not store_mod.claim(out, block.index, owner, ctx.lease_s):
                    continue  # another live writer holds it
                try:
                    if block.index not in done_blocks(out):
                        metrics, per_config, timing = _compute_block(spec, plan, block, devices, ctx, source)
                        _write(out, spec, block, metrics, per_config, timing)
                        if per_config.get("diverged") is not None and per_config["diverged"].any():
                            say(
                                f"block {block.index}: {int(per_config['diverged'].sum())} configuration(s) "
                                "diverged (flagged in `diverged`, reason in `diverged_reason`)"
                            )
                    else:
                        bar.update(config_steps(spec, [block]))
                finally:
                    store_mod.release(out, block.index, owner)
                pending.remove(block)
                progressed = True
            if pending and not progressed:
                bar.set_postfix_str(f"waiting for {len(pending)} block(s) another process is computing", refresh=True)
                time.sleep(1.0)
    finally:
        bar.close()
    finalize(out, plan)
    return open_store(out)


def _compute_block(spec, plan, block, devices, ctx: RunContext, source):
    """run_block, or (extending a store) copy what the old store holds and simulate the rest."""
    if source is None:
        return run_block(spec, plan, block, devices, ctx)
    present = source.present(block.region).ravel()
    names = (*metric_dims(spec), *PER_CONFIG_OUTPUTS)
    copied = source.read(block.region, names) if present.any() else {}
    if present.all():
        ctx.advance(config_steps(spec, [block]))
        metrics = {k: copied[k].reshape(block.size, *copied[k].shape[len(block.shape) :]) for k in metric_dims(spec)}
        per_config = {k: copied[k].reshape(block.size) for k in PER_CONFIG_OUTPUTS if k in copied}
        return metrics, per_config, dict(compile_s=0.0, run_s=0.0, wall_s=0.0, copied=block.size)
    subset = np.flatnonzero(~present)
    metrics, per_config, timing = run_block(spec, plan, block, devices, ctx, subset=subset)
    if present.any():
        ctx.advance(int(present.sum()) * block_steps(spec, block))
        metrics = extend_mod.merge(metrics, copied, present.reshape(block.shape), subset)
        per_config = extend_mod.merge(
            {k: v for k, v in per_config.items() if k in copied}, copied, present.reshape(block.shape), subset
        )
    return metrics, per_config, {**timing, "copied": int(present.sum())}


def _write(out, spec, block, metrics, per_config, timing) -> None:
    shaped = {k: v.reshape(*block.shape, *v.shape[1:]) for k, v in metrics.items()}
    extra = {k: v.reshape(block.shape) for k, v in per_config.items()}
    diverged = extra.pop("diverged")
    write_block(out, spec, block, shaped, diverged, timing, extra=extra)
    store_mod.drop_checkpoint(out, block.index)


def _run_in_memory(spec: SweepSpec, plan: Plan, devices, progress: bool, ctx, on_advance, max_hours) -> xr.Dataset:
    coords = coordinates(spec)
    dtype = np.float64 if spec.base.x64 else np.float32
    var_dims = metric_dims(spec)  # METRIC_NAMES over (grid..., seed, step); a pipeline's per-mode ones add `mode`
    trailing = {name: tuple(len(coords[d]) for d in dims[len(spec.dims) :]) for name, dims in var_dims.items()}
    arrays = {name: np.full((*spec.shape, *trailing[name]), np.nan, dtype=dtype) for name in var_dims}
    per_config = {
        "diverged": np.zeros(spec.shape, dtype=bool),
        "diverged_reason": np.zeros(spec.shape, dtype=np.int32),
        "diverged_step": np.full(spec.shape, -1, dtype=np.int32),
    }
    compile_s = run_s = 0.0
    start = time.perf_counter()
    warn_starts(spec)
    bar = _progress(config_steps(spec, plan.blocks), progress, spec.base.name)

    def advance(n: int) -> None:
        bar.update(n)
        if callable(on_advance):
            on_advance(n)

    ctx.on_advance = advance
    ctx.on_status = lambda text: bar.set_postfix_str(text, refresh=True)
    try:
        for block in plan.blocks:
            metrics, outputs, timing = run_block(spec, plan, block, devices, ctx)
            for name in var_dims:
                arrays[name][block.region] = metrics[name].reshape(*block.shape, *trailing[name])
            for name, value in outputs.items():
                per_config[name][block.region] = value.reshape(block.shape)
            compile_s += timing["compile_s"]
            run_s += timing["run_s"]
    finally:
        bar.close()
    dims = spec.dims
    data_vars = {name: (var_dims[name], arrays[name]) for name in var_dims}
    for name, value in per_config.items():
        data_vars[name] = (dims, value)
    data_vars["completed"] = (dims, np.ones(spec.shape, dtype=bool))
    attrs = {
        **store_attrs(spec),
        "compile_time_s": compile_s,
        "run_time_s": run_s,
        "wall_time_s": time.perf_counter() - start,
        "chunk_shape": list(plan.chunk_shape),
    }
    ds = xr.Dataset(data_vars, coords=dataset_coordinates(spec), attrs=attrs)
    if store_mod.is_pipeline(spec):  # a pipeline's Dataset carries the store's attributes (two-mode: as before)
        ds.attrs.update(store_mod.schedule_attrs(spec))
        for name, values in store_mod.variable_attrs(spec).items():
            ds[name].attrs.update(values)
    return ds


def initialize_distributed(
    coordinator: str | None, num_processes: int | None, process_id: int | None
) -> tuple[int, int]:
    """`jax.distributed.initialize` (arguments or the cluster's environment); returns this
    process's shard (jax.process_index(), jax.process_count())."""
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    return jax.process_index(), jax.process_count()


def probe_block(spec: SweepSpec, plan: Plan, block: Block, devices=None) -> dict:
    """Compile a block's programs and time one probe segment (two log points), nothing written.

    Returns compile_s, seconds_per_log (per interval of log_every steps, for the padded batch),
    carry_bytes (device memory of the block's training carry), num_logs and padded."""
    devices = list(devices or jax.local_devices())
    values = block_values(spec, block)
    config, setup = _block_setup(spec, values)
    with _running(setup):
        hyper, noise, _n, padded = _block_hyper(plan, values, config, setup, devices)
        (init, segment, _finish), compile_s = _compiled(setup, hyper, noise, devices)
        carry = init(hyper)
        carry_bytes = int(sum(x.nbytes for x in jax.tree.leaves(carry)))
        stop = min(2, setup.num_logs)
        t0 = time.perf_counter()
        carry = jax.block_until_ready(
            segment(carry, hyper, jnp.asarray(0, jnp.int32), jnp.asarray(stop, jnp.int32), *noise)
        )
        seconds = time.perf_counter() - t0
    return dict(
        compile_s=compile_s,
        seconds_per_log=seconds / max(1, stop - 1),
        carry_bytes=carry_bytes,
        num_logs=setup.num_logs,
        padded=padded,
        setup=setup,
    )
