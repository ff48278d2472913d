"""Work plan of a sweep: rectangular blocks of the grid, each one compile group and one store chunk.

Grid dimensions are ordered static fields first, then traced fields, then `seed` (config.SweepSpec).
A block fixes every dimension before a split dimension, takes a contiguous range of the split
dimension and the full range of every later dimension, so that

* each block has a single static `Setup` (the split dimension is never a static one), and
* each block is exactly one zarr chunk of every variable: processes writing different blocks
  never touch the same file, which makes `--shard i/N` and multi-host runs safe.

Batch size is a static field (it sets the sample array's shape): a grid over batch sizes is
bucketed into one compile group per value rather than padded and masked. Padding to the largest B
would spend compute on masked samples and change each configuration's random draws with the
grid's largest B, breaking "a result depends on its own seed and values only"; bucketing keeps
results independent of the rest of the grid and costs one compilation per distinct B.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import fields
from ..config import ConfigBase, SweepSpec


@dataclass(frozen=True)
class Block:
    """A rectangular region of the grid (one slice per grid dimension, seed last)."""

    index: int
    region: tuple[slice, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.region)

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Plan:
    spec_shape: tuple[int, ...]
    chunk_shape: tuple[int, ...]
    blocks: tuple[Block, ...]

    def shard(self, index: int, count: int) -> tuple[Block, ...]:
        """The blocks of process `index` out of `count` (round robin, disjoint, covering)."""
        return tuple(b for b in self.blocks if b.index % count == index)


#: Most configurations per block, whatever the memory: a block is one zarr chunk of every
#: variable and one checkpoint, so larger blocks mean larger chunk files, a coarser resume and
#: longer segments (kept from the former default's cap).
MAX_CHUNK = 65536
#: Share of the free memory a block's segment program may take. The program's own arguments,
#: outputs and temporaries (what `memory_analysis` counts) are not all the runner holds: the
#: init program's fresh carry and the segment's carry live together while the first segment
#: starts, a checkpoint copies the carry to the host, the logged metrics are gathered to the
#: host and compressed into the store, and on CPU that host memory is the same RAM; the
#: allocator fragments and other processes of a shared machine take memory while a sweep runs.
#: A quarter leaves room for those copies (about x2) and a factor 2 of drift.
MEMORY_FRACTION = 0.25
#: Batch sizes at which the segment program is compiled to read bytes per configuration (the
#: slope) and the fixed part off XLA's memory analysis. Compile time does not grow with n.
PROBE_SIZES = (64, 512)
#: A compile group of G configurations runs in one block, with no probe at all, when G times
#: this multiple of the fallback formula's bytes per configuration fits the budget. Measured
#: memory_analysis slope / formula (jax 0.10.2, CPU, T = 2000): 0.88 (FKL score B = 512), 1.4-2.6
#: (FKL / RKL score and population at B = 64, pathwise, x64, log_every 1), 10.7 (FKL B = 64,
#: d = 16): 64 is 6x above the worst seen, and MEMORY_FRACTION leaves 4x more. It keeps small
#: sweeps (quickstart: 72 configurations a group, phase_fkl_rkl: 360) from compiling programs
#: only to learn that they fit; larger groups (16384 FKL configurations) are probed.
FORMULA_MARGIN = 64


def formula_bytes_per_config(spec: SweepSpec) -> int:
    """Fallback estimate of a configuration's device memory, from the largest values over the
    grid: the loop holds O(B d) samples, O(quadrature order) nodes and O(num_logs) logged metrics."""
    base = spec.base
    item = 8 if base.x64 else 4
    batch = max(spec.axes.get("batch_size", [base.batch_size]))
    dim = max(spec.axes.get("dim", [base.dim]))
    steps = max(spec.axes.get("steps", [base.steps]))
    log_every = min(spec.axes.get("log_every", [base.log_every]))
    return item * (24 * batch * dim + 16 * base.quadrature_order * 2 + 20 * (steps // log_every + 1) + 256)


def formula_chunk_size(spec: SweepSpec, memory_budget_bytes: int = 256 * 2**20) -> int:
    """The former default (kept as the fallback where XLA's memory analysis is unavailable):
    configurations per block from a fixed device-memory budget and `formula_bytes_per_config`."""
    return int(max(1, min(MAX_CHUNK, memory_budget_bytes // formula_bytes_per_config(spec))))


@dataclass(frozen=True)
class ChunkChoice:
    """The default block size of a sweep and where it came from (`forget-jax plan` prints it).

    size = clip(n, 1, min(MAX_CHUNK, G)), G the configurations of one compile group, with n the
    largest batch whose segment program fits `fraction` x free memory by XLA's memory analysis,
    total(n) = fixed + per_config n (per_config and fixed fitted from two probe sizes):
    CPU, D host devices sharing the host's memory: D fixed + per_config n <= fraction free;
    D accelerators, n / D configurations each: fixed + per_config n / D <= fraction free_min.
    (A fit in RSS: a 16,384-configuration FKL block grew peak RSS by 679 MiB over a 1,024 one,
    where per_config = 43.3 KiB predicts 650 MiB.)"""

    size: int
    source: str  # "memory analysis", "whole group fits" or "formula fallback"
    group_configs: int
    per_config_bytes: float | None = None
    fixed_bytes: float | None = None
    free_bytes: int | None = None
    free_source: str = ""
    fraction: float = MEMORY_FRACTION
    probed: str = ""
    reason: str = ""

    def describe(self) -> str:
        """One line: the size and its origin."""
        free = f"{self.fraction:g} of {_gib(self.free_bytes)} free ({self.free_source})"
        if self.source == "memory analysis":
            return (
                f"{self.size} configurations per block: XLA memory analysis of {self.probed} "
                f"{_kib(self.per_config_bytes)}/config + {_kib(self.fixed_bytes)} fixed, {free}"
                + (f", {self.reason}" if self.reason else "")
            )
        if self.source == "whole group fits":
            return (
                f"{self.size} configurations per block = one compile group, no probe: {self.group_configs} x "
                f"{FORMULA_MARGIN} x formula {_kib(self.per_config_bytes)}/config fits {free}"
            )
        return f"{self.size} configurations per block from the fallback formula (256 MiB budget): {self.reason}"


def _kib(n: float | None) -> str:
    return "?" if n is None else f"{n / 1024:.3g} KiB"


def _gib(n: float | None) -> str:
    return "?" if n is None else f"{n / 2**30:.3g} GiB"


def free_memory(devices) -> tuple[int | None, str]:
    """Free bytes for one block and where the number came from.

    Accelerators: the smallest `bytes_limit - bytes_in_use` of `device.memory_stats()` over the
    devices (per device: a block is split over them). CPU: `host_free_memory()` (shared by all
    host devices). None where it cannot be read."""
    if devices and devices[0].platform != "cpu":
        free = []
        for d in devices:
            try:
                stats = d.memory_stats()
            except Exception:  # a backend without memory statistics
                stats = None
            if not stats or "bytes_limit" not in stats:
                return None, f"{d.platform} memory_stats unavailable"
            free.append(int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)))
        return min(free), f"{devices[0].platform} memory_stats, per device"
    return host_free_memory()


def host_free_memory() -> tuple[int | None, str]:
    """The host's MemAvailable (/proc/meminfo), lowered to the cgroup's `memory.max -
    memory.current` in a container with a memory limit; None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: line.split()[1:] for line in f}
        available = int(info["MemAvailable"][0]) * 1024
    except (OSError, KeyError, ValueError, IndexError):
        return None, "host MemAvailable unavailable"
    where = "host MemAvailable"
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        if limit != "max":
            left = int(limit) - int(open("/sys/fs/cgroup/memory.current").read())
            if left < available:
                available, where = max(0, left), "cgroup memory.max - memory.current"
    except (OSError, ValueError):
        pass
    return available, where


def _group_configs(spec: SweepSpec) -> list[tuple[str, ConfigBase]]:
    """(label, config) of every compile group (one per combination of the static grid values)."""
    static = fields.names("static")
    names = [k for k in spec.dims[:-1] if k in static]
    out: list[tuple[str, ConfigBase]] = []
    for combo in itertools.product(*(spec.axes[k] for k in names)):
        values = dict(zip(names, combo))
        label = ", ".join(f"{k}={v}" for k, v in values.items()) or "the sweep"
        out.append((label, spec.with_values(values)))
    return out


def _host_log_cap(spec: SweepSpec, host_free: int | None) -> int:
    """Most configurations whose logged values (logged points x metrics x itemsize each) a
    block gathers on the host: within `MEMORY_FRACTION` of the host's free memory and within the
    default host-memory cap of limits.py (so the default never trips that cap by itself)."""
    from ..limits import Limits
    from ..metrics import values_per_logged_step

    steps = max(spec.axes.get("steps", [spec.base.steps]))
    log_every = min(spec.axes.get("log_every", [spec.base.log_every]))
    itemsize = 8 if True in spec.axes.get("x64", [spec.base.x64]) else 4
    per_config = (
        (steps // log_every + 1) * values_per_logged_step(spec.base.modes if spec.base.stages else 0) * itemsize
    )
    cap = float(Limits().max_host_bytes or 2**62)
    if host_free is not None:
        cap = min(cap, MEMORY_FRACTION * host_free)
    return int(max(1, min(MAX_CHUNK, cap // per_config)))


_CHOICES: dict[tuple, ChunkChoice] = {}


def choose_chunk_size(spec: SweepSpec, devices=None, *, probe: bool = True) -> ChunkChoice:
    """The default block size of `spec` on `devices` (default: jax.local_devices()), see
    `ChunkChoice`. Probes one compile group: the one with the largest fallback-formula bytes per
    configuration (largest B d, most logged points), compiled at the `PROBE_SIZES` (two
    compilations, cached on disk by the persistent compilation cache); compile groups that differ
    only in objective or estimator are not told apart, which `MEMORY_FRACTION` absorbs.
    Remembered per (sweep, devices) for the process.

    Args:
        spec: the sweep.
        devices: the devices a block is sharded over (default: jax.local_devices()).
        probe: False: compile nothing; where a probe would be needed, the fallback formula's
            size (the cheap estimate limits.py uses).

    Returns:
        The `ChunkChoice` (its `size` is `default_chunk_size`)."""
    import jax

    devices = list(devices or jax.local_devices())
    key = (spec.to_yaml(), tuple((d.platform, d.id) for d in devices))
    if key in _CHOICES:
        return _CHOICES[key]
    choice = _choose(spec, devices, probe)
    if probe:
        _CHOICES[key] = choice
    return choice


def _choose(spec: SweepSpec, devices, probe: bool = True) -> ChunkChoice:
    groups = _group_configs(spec)
    group = spec.size // len(groups)
    most = min(group, MAX_CHUNK)
    free, where = free_memory(devices)
    host_free = free if devices[0].platform == "cpu" else host_free_memory()[0]
    most = min(most, _host_log_cap(spec, host_free))
    if free is None:
        return ChunkChoice(formula_chunk_size(spec), "formula fallback", group, reason=where)
    budget = MEMORY_FRACTION * free
    # CPU host devices share the host's memory; accelerators each hold 1/len(devices) of a block
    share = 1 if devices[0].platform == "cpu" else len(devices)
    pools = len(devices) if devices[0].platform == "cpu" else 1  # fixed parts in one pool
    formula = formula_bytes_per_config(spec)
    if most == group and group * FORMULA_MARGIN * formula / share <= budget:
        return ChunkChoice(group, "whole group fits", group, float(formula), None, free, where)
    if not probe:
        return ChunkChoice(formula_chunk_size(spec), "formula fallback", group, reason="no probe wanted")
    label, config = max(groups, key=lambda g: formula_bytes_per_config(SweepSpec(g[1], {})))
    try:
        from .._cache import enable_compilation_cache

        folder = enable_compilation_cache()  # the probes' programs are loaded from disk on a rerun

        setup = config.setup()
        small, large = _probe_memory(setup, devices[0].platform, folder)
        if small is None or large is None:
            raise RuntimeError("memory_analysis returned nothing")
        per_config = (large["total"] - small["total"]) / (PROBE_SIZES[1] - PROBE_SIZES[0])
        if per_config <= 0:  # not linear in n: the larger probe's mean, an upper bound above it
            per_config = large["total"] / PROBE_SIZES[1]
        fixed = max(0.0, small["total"] - per_config * PROBE_SIZES[0])
    except Exception as exc:  # a backend or program without memory analysis
        return ChunkChoice(formula_chunk_size(spec), "formula fallback", group, reason=f"memory analysis failed: {exc}")
    n = share * (budget - pools * fixed) / per_config
    size = int(max(1, min(most, n)))
    reason = ""
    if n >= most:
        reason = (
            "capped at the group size"
            if most == group
            else f"capped at {MAX_CHUNK}"
            if most == MAX_CHUNK
            else "capped by the host memory of its logged values"
        )
    return ChunkChoice(size, "memory analysis", group, per_config, fixed, free, where, probed=label, reason=reason)


def _probe_memory(setup, platform: str, folder: str | None) -> tuple[dict | None, dict | None]:
    """`train.program_memory` at the two `PROBE_SIZES`, remembered on disk beside the compilation
    cache (`memory-probes.json`, keyed by Setup, platform and the jax / forget-jax versions), so a
    rerun neither traces nor loads the probe programs. Without a cache folder, or when
    `program_memory` has been replaced (tests), nothing is read or written."""
    import json
    import os

    import jax

    from .. import train
    from .._version import __version__

    measure = train.program_memory
    memo = Path(folder) / "memory-probes.json" if folder and getattr(measure, "memoisable", False) else None
    key = repr((sorted(setup._values.items()), platform, jax.__version__, __version__, PROBE_SIZES))
    known: dict = {}
    if memo is not None and memo.is_file():
        try:
            known = json.loads(memo.read_text())
        except (OSError, ValueError):
            known = {}
        if key in known:
            small, large = known[key]
            return small, large
    with train.precision(setup):
        small, large = (measure(setup, n) for n in PROBE_SIZES)
    if memo is not None and small is not None and large is not None:
        known[key] = [small, large]
        tmp = memo.with_name(f"{memo.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(known))
            os.replace(tmp, memo)
        except OSError:
            pass
    return small, large


def default_chunk_size(spec: SweepSpec, devices=None, *, probe: bool = True) -> int:
    """Configurations per block when the user gives none: `choose_chunk_size(spec, devices).size`."""
    return choose_chunk_size(spec, devices, probe=probe).size


def make_plan(spec: SweepSpec, chunk_size: int | None = None, chunk_shape: tuple[int, ...] | None = None) -> Plan:
    """Split the grid into blocks of at most `chunk_size` configurations (or reuse `chunk_shape`,
    e.g. the chunking of an existing store on resume)."""
    shape = spec.shape
    static = fields.names("static")
    n_static = sum(1 for k in spec.axes if k in static)
    if chunk_shape is None:
        chunk_size = chunk_size or default_chunk_size(spec)
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size} must be >= 1")
        chunk = [1] * len(shape)
        suffix = 1
        j = len(shape) - 1
        while j >= n_static and suffix * shape[j] <= chunk_size:
            chunk[j] = shape[j]
            suffix *= shape[j]
            j -= 1
        if j >= n_static:
            chunk[j] = max(1, chunk_size // suffix)
        chunk_shape = tuple(chunk)
    ranges = [range(0, n, c) for n, c in zip(shape, chunk_shape)]
    blocks = []
    for i, starts in enumerate(itertools.product(*ranges)):
        region = tuple(slice(s, min(s + c, n)) for s, c, n in zip(starts, chunk_shape, shape))
        blocks.append(Block(i, region))
    return Plan(shape, tuple(chunk_shape), tuple(blocks))


def block_values(spec: SweepSpec, block: Block) -> dict[str, np.ndarray]:
    """Per-configuration values of every grid field (and `seed`) in the block, flattened in C order."""
    names = list(spec.dims)
    axes = [list(spec.axes[k]) if k != "seed" else spec.seeds for k in names]
    pieces = [np.asarray(a[s], dtype=object) for a, s in zip(axes, block.region)]
    mesh = np.meshgrid(*[np.arange(len(p)) for p in pieces], indexing="ij")
    return {k: p[m.ravel()] for k, p, m in zip(names, pieces, mesh)}
