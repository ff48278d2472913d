"""Resource caps checked before a sweep runs: a plan that would take more configurations, logged
points, store bytes or memory than a cap is refused with one line naming the quantity, its value,
the cap and the override (CLI flag), instead of hanging or running out of memory hours later.

The estimate (`footprint`) is arithmetic on the sweep's shape, no array is built:

* configurations N = (product of the grid axis lengths) x seeds;
* logged points per configuration P = steps // log_every + 1 (the largest over the grid: the
  largest `steps` over the smallest `log_every`);
* logged values V = N P M with M the numbers a configuration logs per step (metrics.values_per_logged_step), and
  store bytes V x itemsize (4 in float32, 8 in float64);
* per block (the configurations computed at once: `chunk_size`, or the runner's default without
  a memory probe, runner.plan.choose_chunk_size(probe=False)), the host memory of its logged
  values C P M itemsize and the device memory C x (samples 24 B d + quadrature nodes 32 Q +
  logged values P M + 256) x itemsize, the terms of runner.plan.formula_bytes_per_config.

The hard caps of config.py (values per axis, grid points) protect the loader itself; these caps
are the second line, generous for real work and each overridable.

CLI flags (sweep / plan): `--no-limits`, `--max-configs N`, `--max-logged-points N`,
`--max-store-gb X`, `--max-memory-gb X` (host and device memory of a block); Python:
`check_limits(spec, Limits(max_configs=...))` or `Limits.from_overrides(...)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

from .config import ConfigError

if TYPE_CHECKING:
    from .config import SweepSpec

GIB = 2**30


@dataclass(frozen=True)
class Limits:
    """Caps of one sweep; None switches a cap off.

    Attributes:
        max_configs: configurations (grid points x seeds).
        max_logged_points: logged points per configuration (steps // log_every + 1).
        max_store_bytes: bytes of the logged values in the store (configurations x logged
            points x metrics x itemsize).
        max_host_bytes: bytes of one block's logged values in host memory.
        max_device_bytes: estimated device memory of one block.
    """

    max_configs: int | None = 10**7
    max_logged_points: int | None = 10**5
    max_store_bytes: int | None = 200 * GIB
    max_host_bytes: int | None = 4 * GIB
    max_device_bytes: int | None = 64 * GIB

    @classmethod
    def none(cls) -> Limits:
        """Every cap off (`--no-limits`)."""
        return cls(**{f.name: None for f in fields(cls)})

    @classmethod
    def from_overrides(
        cls,
        no_limits: bool = False,
        max_configs: int | None = None,
        max_logged_points: int | None = None,
        max_store_gb: float | None = None,
        max_memory_gb: float | None = None,
    ) -> Limits:
        """The caps after the CLI flags: `--no-limits` switches every cap off, each `--max-*` flag
        given (not None) replaces its cap (`--max-memory-gb` both memory caps; GiB)."""
        limits = cls.none() if no_limits else cls()
        update: dict[str, int | None] = {}
        for name, value in (("max_configs", max_configs), ("max_logged_points", max_logged_points)):
            if value is not None:
                if isinstance(value, bool) or not float(value).is_integer() or value < 1:
                    raise ConfigError(f"--{name.replace('_', '-')} {value!r}: must be a whole number >= 1")
                update[name] = int(value)
        for names, flag, gib in (
            (("max_store_bytes",), "--max-store-gb", max_store_gb),
            (("max_host_bytes", "max_device_bytes"), "--max-memory-gb", max_memory_gb),
        ):
            if gib is not None:
                if isinstance(gib, bool) or not math.isfinite(gib) or gib <= 0:
                    raise ConfigError(f"{flag} {gib!r}: must be a positive number of GiB")
                update.update({n: int(gib * GIB) for n in names})
        return replace(limits, **update)


@dataclass(frozen=True)
class Footprint:
    """What a sweep will take (module doc): counts, and bytes at the run's float width."""

    configs: int
    logged_points: int
    metrics: int
    itemsize: int
    block_configs: int
    store_bytes: int
    block_host_bytes: int
    block_device_bytes: int

    @property
    def logged_values(self) -> int:
        return self.configs * self.logged_points * self.metrics


def _largest(spec: SweepSpec, name: str) -> list:
    return list(spec.axes.get(name, [getattr(spec.base, name)]))


def footprint(spec: SweepSpec, chunk_size: int | None = None) -> Footprint:
    """The estimate of the module doc for `spec` run in blocks of `chunk_size` configurations
    (default: the runner's memory-budget default)."""
    from .metrics import values_per_logged_step

    configs = math.prod(len(v) for v in spec.axes.values()) * len(spec.seeds)
    logged = max(_largest(spec, "steps")) // min(_largest(spec, "log_every")) + 1
    metrics = values_per_logged_step(spec.base.modes if spec.base.stages else 0)
    itemsize = 8 if (True in _largest(spec, "x64")) else 4
    if chunk_size is None:
        from .runner.plan import default_chunk_size

        chunk_size = default_chunk_size(spec, probe=False)  # no compilation: run() passes its real size
    block = max(1, min(int(chunk_size), configs))
    batch = max(_largest(spec, "batch_size"))
    dim = max(_largest(spec, "dim"))
    order = max(max(_largest(spec, "quadrature_order")), max(_largest(spec, "metric_quadrature_order")))
    per_config_device = itemsize * (24 * batch * dim + 32 * order + logged * metrics + 256)
    return Footprint(
        configs=configs,
        logged_points=logged,
        metrics=metrics,
        itemsize=itemsize,
        block_configs=block,
        store_bytes=configs * logged * metrics * itemsize,
        block_host_bytes=block * logged * metrics * itemsize,
        block_device_bytes=block * per_config_device,
    )


def _bytes(n: float) -> str:
    return f"{n / GIB:.3g} GiB"


def check_limits(spec: SweepSpec, limits: Limits = Limits(), chunk_size: int | None = None) -> None:
    """Refuse a sweep whose footprint exceeds a cap: ConfigError, one line naming the quantity,
    its value, the cap and the flag that overrides it (checked in the order of `Limits`)."""
    f = footprint(spec, chunk_size)
    how = "raise the cap with {flag} or switch every cap off with --no-limits"
    checks = (
        (
            limits.max_configs,
            f.configs,
            f"configurations ({' x '.join(str(len(v)) for v in spec.axes.values()) or '1'} grid points x "
            f"{len(spec.seeds)} seeds) = {f.configs:,}",
            lambda cap: f"{cap:,}",
            "--max-configs N",
            "grid",
        ),
        (
            limits.max_logged_points,
            f.logged_points,
            f"logged points per configuration (steps // log_every + 1) = {f.logged_points:,}",
            lambda cap: f"{cap:,}; raise log_every, or",
            "--max-logged-points N",
            "log_every",
        ),
        (
            limits.max_store_bytes,
            f.store_bytes,
            f"store size ({f.configs:,} configurations x {f.logged_points:,} logged points x {f.metrics} metrics "
            f"x {f.itemsize} bytes) = {_bytes(f.store_bytes)}",
            _bytes,
            "--max-store-gb X",
            "grid",
        ),
        (
            limits.max_host_bytes,
            f.block_host_bytes,
            f"host memory of one block's logged values ({f.block_configs:,} configurations) = "
            f"{_bytes(f.block_host_bytes)}",
            lambda cap: f"{_bytes(cap)}; give a smaller --chunk-size, or",
            "--max-memory-gb X",
            "grid",
        ),
        (
            limits.max_device_bytes,
            f.block_device_bytes,
            f"estimated device memory of one block ({f.block_configs:,} configurations) = "
            f"{_bytes(f.block_device_bytes)}",
            lambda cap: f"{_bytes(cap)}; give a smaller --chunk-size, or",
            "--max-memory-gb X",
            "grid",
        ),
    )
    for cap, value, what, cap_text, flag, field in checks:
        if cap is not None and value > cap:
            text = cap_text(cap)
            glue = " " if text.endswith(" or") else "; "
            raise ConfigError(f"{what} exceeds the cap of {text}{glue}{how.format(flag=flag)}", field=field)
