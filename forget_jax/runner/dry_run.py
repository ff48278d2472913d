"""`forget-jax plan CONFIG`: what a sweep will do, before it does it.

Compile groups (distinct static `Setup`s), configurations, blocks and the default block size with
its origin (plan.choose_chunk_size: XLA's memory analysis and the free memory), segments, device
memory of a block's training carry, the store's size, and the run time estimated from a
one-segment probe of the first block of each compile group (compiled for real, so the persistent
compilation cache makes the sweep that follows start faster). Nothing is written.
"""

from __future__ import annotations

import math

import numpy as np

from .. import fields
from ..config import SweepSpec
from ..metrics import values_per_logged_step
from ..store import coordinates
from .execute import SEGMENT_SECONDS, block_steps, config_steps, probe_block
from .plan import Block, choose_chunk_size, make_plan


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def compile_groups(spec: SweepSpec, blocks) -> dict[tuple, list[Block]]:
    """Blocks grouped by their static values (one compiled program per group and block size)."""
    static = [i for i, k in enumerate(spec.dims[:-1]) if k in fields.names("static")]
    groups: dict[tuple, list[Block]] = {}
    for b in blocks:
        key = tuple((spec.dims[i], spec.axes[spec.dims[i]][b.region[i].start]) for i in static)
        groups.setdefault(key, []).append(b)
    return groups


def plan_report(
    spec: SweepSpec,
    chunk_size: int | None = None,
    *,
    probe: bool = True,
    max_probe_groups: int = 4,
    segment_seconds: float = SEGMENT_SECONDS,
    devices=None,
) -> list[str]:
    """Lines describing the sweep's plan (and, with `probe`, measured compile and run rates)."""
    if chunk_size is None:
        choice = choose_chunk_size(spec, devices)
        chunk_size, chunk_line = choice.size, choice.describe()
    else:
        chunk_line = f"{chunk_size} configurations per block (given)"
    plan = make_plan(spec, chunk_size)
    groups = compile_groups(spec, plan.blocks)
    coords = coordinates(spec)
    item = 8 if spec.base.x64 else 4
    n_steps = len(coords["step"])
    store_bytes = spec.size * n_steps * values_per_logged_step(spec.base.modes if spec.base.stages else 0) * item
    lines = [
        f"sweep        {spec.base.name}: {spec.size} configurations = "
        + " x ".join(f"{k} {n}" for k, n in zip(spec.dims, spec.shape)),
        f"compile      {len(groups)} group(s) (distinct static fields)",
        f"blocks       {len(plan.blocks)} of up to {math.prod(plan.chunk_shape)} configurations "
        f"(chunk {tuple(plan.chunk_shape)})",
        f"chunk size   {chunk_line}",
        f"work         {config_steps(spec, plan.blocks):.4g} config-steps, {n_steps} logged steps per configuration",
        f"store        {_bytes(store_bytes)} of metrics before compression",
    ]
    for key, blocks in list(groups.items())[:8]:
        label = ", ".join(f"{k}={v}" for k, v in key) or "all fields fixed"
        lines.append(f"  group      {label}: {len(blocks)} block(s), {block_steps(spec, blocks[0])} steps")
    if len(groups) > 8:
        lines.append(f"  ... and {len(groups) - 8} more group(s)")
    if not probe:
        return lines
    total_run = total_compile = 0.0
    probed = 0
    per_config_step = []
    for key, blocks in groups.items():
        if probed >= max_probe_groups:
            break
        p = probe_block(spec, plan, blocks[0], devices)
        probed += 1
        setup = p["setup"]
        logs = p["num_logs"]
        segment = max(1, min(logs, int(segment_seconds / max(p["seconds_per_log"], 1e-12))))
        group_run = p["seconds_per_log"] * max(logs - 1, 0) * len(blocks)
        total_run += group_run
        total_compile += p["compile_s"]
        per_config_step.append(p["seconds_per_log"] / (p["padded"] * setup.log_every))
        label = ", ".join(f"{k}={v}" for k, v in key) or "all fields fixed"
        lines.append(
            f"  probe      {label}: compile {p['compile_s']:.1f} s, {p['seconds_per_log'] * 1e3:.3g} ms per "
            f"log point, ~{math.ceil(logs / segment)} segment(s) per block, carry {_bytes(p['carry_bytes'])} on device"
        )
    unprobed = [b for i, bs in enumerate(groups.values()) if i >= probed for b in bs]
    if unprobed:
        rate = float(np.median(per_config_step))
        total_run += rate * config_steps(spec, unprobed)
        lines.append(f"  ({len(groups) - probed} group(s) not probed: extrapolated at the probed median rate)")
    lines.append(
        f"estimate     run {_duration(total_run)} + compile {_duration(total_compile)}"
        + (" (probed groups only)" if len(groups) > probed else "")
    )
    return lines
