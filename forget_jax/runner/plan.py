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

import numpy as np

from .. import fields
from ..config import SweepSpec


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


def default_chunk_size(spec: SweepSpec, memory_budget_bytes: int = 256 * 2**20) -> int:
    """Configurations per block from a device-memory budget: per configuration the loop holds
    O(B d) samples, O(quadrature order) nodes and O(num_logs) logged metrics."""
    base = spec.base
    item = 8 if base.x64 else 4
    batch = max(spec.axes.get("batch_size", [base.batch_size]))
    dim = max(spec.axes.get("dim", [base.dim]))
    steps = max(spec.axes.get("steps", [base.steps]))
    log_every = min(spec.axes.get("log_every", [base.log_every]))
    per_config = item * (24 * batch * dim + 16 * base.quadrature_order * 2 + 20 * (steps // log_every + 1) + 256)
    return int(max(1, min(65536, memory_budget_bytes // per_config)))


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
