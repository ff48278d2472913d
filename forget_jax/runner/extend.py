"""Extend a finished (or partial) sweep with more seeds or more values of its grid axes.

`forget-jax sweep BIGGER.yaml --out STORE --extend` writes the bigger sweep into a new store next
to STORE (`STORE.extending`), block by block like any sweep: a configuration that the old store
already holds (same values of every field, same seed) is copied from it, only the new ones are
simulated (`run_block(..., subset=...)`), so nothing that exists is recomputed. Copying is exact
because a configuration's result depends only on its own seed and values. When every block is
committed, the new store replaces the old one (two renames; a crash between them is finished by
the next `--extend` or `--resume`).

Allowed changes: more values on existing grid axes (any position), more seeds (same
`seed_offset`). Everything else must be equal: the same axes in the same order, the same fields
outside the grid. Grid values are matched exactly (write them as lists when extending a
`linspace`, whose values move with its count).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import xarray as xr
import yaml

from ..config import ConfigError, SweepSpec, load_config
from ..metrics import METRIC_NAMES
from ..store import coordinates, open_store, read_attrs

EXTENDING = ".extending"
REPLACED = ".replaced"


def stored_spec(path: Path) -> SweepSpec:
    """The sweep a store holds (its `config` attribute)."""
    return load_config(yaml.safe_load(read_attrs(path)["config"]))


def index_maps(old: SweepSpec, new: SweepSpec) -> dict[str, np.ndarray]:
    """Per dimension of `new` (and `step`), the position of each new coordinate value in `old`
    (-1: a new value). Raises ConfigError naming the first change that is not an extension."""
    if old.dims != new.dims:
        raise ConfigError(
            f"--extend: the grid axes differ (store: {', '.join(old.dims)}; config: {', '.join(new.dims)}); "
            "extending adds values to existing axes or seeds only"
        )
    before, after = old.base.model_dump(), new.base.model_dump()
    for key in before:
        if key in ("grid", "seeds") or before[key] == after.get(key):
            continue
        raise ConfigError(
            f"--extend: {key}={after.get(key)!r} differs from the store's {before[key]!r}; "
            "extending adds grid values or seeds only (use another --out for a different sweep)"
        )
    old_coords, new_coords = coordinates(old), coordinates(new)
    maps = {}
    for dim in (*new.dims, "step"):
        was, now = old_coords[dim].tolist(), new_coords[dim].tolist()
        lost = [v for v in was if v not in now]
        if lost:
            raise ConfigError(
                f"--extend: {dim} value(s) {lost[:3]!r} of the store are missing from the config; "
                "extending keeps every existing value"
            )
        position = {v: i for i, v in enumerate(was)}
        maps[dim] = np.array([position.get(v, -1) for v in now], dtype=np.int64)
    return maps


class Source:
    """The old store, read block-wise into the new grid's layout."""

    def __init__(self, path: Path, maps: dict[str, np.ndarray], dims: tuple[str, ...]):
        self.ds = open_store(path)
        self.maps = maps
        self.dims = dims

    def present(self, region: tuple[slice, ...]) -> np.ndarray:
        """Boolean (block shape): configurations the old store holds, committed."""
        idx = [self.maps[d][s] for d, s in zip(self.dims, region)]
        mask = np.ones(tuple(len(i) for i in idx), dtype=bool)
        for axis, i in enumerate(idx):
            shape = [1] * len(idx)
            shape[axis] = len(i)
            mask &= (i >= 0).reshape(shape)
        if not mask.any():
            return mask
        completed = self._take("completed", idx)
        return mask & completed.astype(bool)

    def _take(self, name: str, idx: list[np.ndarray], steps: bool = False) -> np.ndarray:
        clipped = {d: np.maximum(i, 0) for d, i in zip(self.dims, idx)}
        if steps:
            clipped["step"] = np.maximum(self.maps["step"], 0)
        values = self.ds[name].isel(clipped).values
        if steps:
            values = np.where((self.maps["step"] >= 0), values, np.nan)
        return values

    def read(self, region: tuple[slice, ...], names) -> dict[str, np.ndarray]:
        """Every variable of `names` over the block (new values: whatever the clipped index
        points at; callers overwrite them)."""
        idx = [self.maps[d][s] for d, s in zip(self.dims, region)]
        return {n: self._take(n, idx, steps=n in METRIC_NAMES) for n in names if n in self.ds}


def staging_path(out: Path) -> Path:
    return out.with_name(out.name + EXTENDING)


def finish_swap(out: Path) -> bool:
    """Complete an interrupted swap (old store moved aside, new one not yet in place)."""
    staging, replaced = staging_path(out), out.with_name(out.name + REPLACED)
    if not out.exists() and staging.exists() and replaced.exists():
        staging.rename(out)
    if out.exists() and replaced.exists():
        shutil.rmtree(replaced)
        return True
    return False


def swap(out: Path) -> None:
    """Put the finished staging store in place of the old one."""
    staging, replaced = staging_path(out), out.with_name(out.name + REPLACED)
    out.rename(replaced)
    staging.rename(out)
    shutil.rmtree(replaced)


def merge(
    computed: dict[str, np.ndarray], copied: dict[str, np.ndarray], present: np.ndarray, subset: np.ndarray
) -> dict[str, np.ndarray]:
    """Block arrays (flattened configurations first) from the copied ones, with the computed
    `subset` of configurations written over them."""
    merged = {}
    for name, values in computed.items():
        base = copied[name].reshape(present.size, *copied[name].shape[present.ndim :]).copy()
        base[subset] = values
        merged[name] = base
    return merged


_ = xr
