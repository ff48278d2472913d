"""The results store: an xarray Dataset in a zarr store, written block by block.

Layout (the public contract):
  dims      one per grid axis (named after the field, coordinate = grid values), then `seed`,
            then `step` (logged steps, starting at 0 = the initial state)
  data vars every name of metrics.METRIC_NAMES over (grid..., seed, step); `diverged` and
            `completed` (bool) over (grid..., seed)
  attrs     config (the full resolved YAML), forget_jax_version, jax_version, device_kind,
            created, chunk_shape, and after a run wall_time_s, compile_time_s, run_time_s.

Crash safety: the template (metadata only) is written first; each block's arrays are then written
into their own zarr chunk, and only after that is the block's marker file
`<store>/.forget_jax/done/<block>.json` created by an atomic rename. `--resume` trusts markers
only, so a block interrupted half-way (even by SIGKILL) is recomputed.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from .config import SweepSpec
from .metrics import METRIC_NAMES

if TYPE_CHECKING:  # plan.py imports nothing from here; avoid the import cycle at runtime
    from .runner.plan import Block, Plan

PROGRESS_DIR = ".forget_jax"


class StoreError(ValueError):
    """A store that cannot be used as asked (exists with another sweep, missing, ...)."""


def logged_steps(spec: SweepSpec) -> np.ndarray:
    """Union of the logged steps of every compile group (steps / log_every may be grid axes)."""
    steps = spec.axes.get("steps", [spec.base.steps])
    every = spec.axes.get("log_every", [spec.base.log_every])
    union: set[int] = set()
    for s in steps:
        for k in every:
            union.update(range(0, s + 1, k))
    return np.array(sorted(union), dtype=np.int64)


def coordinates(spec: SweepSpec) -> dict[str, np.ndarray]:
    coords = {k: np.asarray(v) for k, v in spec.axes.items()}
    coords["seed"] = np.asarray(spec.seeds, dtype=np.int64)
    coords["step"] = logged_steps(spec)
    return coords


def _template(spec: SweepSpec, chunk_shape: tuple[int, ...], attrs: dict) -> xr.Dataset:
    import dask.array as da

    coords = coordinates(spec)
    dims = spec.dims
    shape = spec.shape
    n_steps = len(coords["step"])
    dtype = np.float64 if spec.base.x64 else np.float32
    data_vars = {
        name: ((*dims, "step"), da.full((*shape, n_steps), np.nan, dtype=dtype, chunks=(*chunk_shape, n_steps)))
        for name in METRIC_NAMES
    }
    data_vars["diverged"] = (dims, da.zeros(shape, dtype=bool, chunks=chunk_shape))
    data_vars["completed"] = (dims, da.zeros(shape, dtype=bool, chunks=chunk_shape))
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


@contextlib.contextmanager
def _quiet_progress_folder():
    """zarr warns that the progress folder is not part of the hierarchy when it lists members; it
    is ours and deliberately not zarr, so that one warning is silenced (readers using the
    consolidated metadata never list members)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy")
        yield


def _done_dir(path: Path) -> Path:
    return Path(path) / PROGRESS_DIR / "done"


def create(path: str | Path, spec: SweepSpec, plan: Plan, attrs: dict) -> None:
    """Write the store's metadata (no chunk data). Safe to race: one process wins, others wait."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".creating")
    ready = path / PROGRESS_DIR / "ready"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        _wait_while_creating(path)  # another process holds the lock: its store is ours too
        return
    try:
        os.close(fd)
        if ready.exists():
            return
        ds = _template(spec, plan.chunk_shape, {**attrs, "chunk_shape": list(plan.chunk_shape)})
        # zarr format 2 with consolidated metadata: read everywhere, and readers never list the
        # progress folder (format 3 would warn about it as an unknown hierarchy member)
        ds.to_zarr(path, mode="w", compute=False, consolidated=True, zarr_format=2)
        _done_dir(path).mkdir(parents=True, exist_ok=True)
        ready.write_text(_dt.datetime.now(_dt.UTC).isoformat())
    finally:
        lock.unlink(missing_ok=True)


def read_attrs(path: str | Path) -> dict:
    import zarr

    return dict(zarr.open_group(str(path), mode="r", zarr_format=2).attrs)


def _wait_while_creating(path: Path, timeout_s: float = 300.0) -> None:
    """Processes started together (`--shard i/N`, `--distributed`) may find the store folder while
    another one is still writing its metadata: wait for that creation (its lock file exists from
    before the folder appears until after the ready marker is written)."""
    ready = path / PROGRESS_DIR / "ready"
    lock = path.with_name(path.name + ".creating")
    deadline = time.time() + timeout_s
    while not ready.exists() and lock.exists():
        if time.time() > deadline:
            raise StoreError(
                f"{path}: another process is creating this store and has not finished in "
                f"{timeout_s:.0f} s (delete {lock} if it crashed)"
            )
        time.sleep(0.1)


def check_compatible(path: str | Path, spec: SweepSpec) -> tuple[int, ...]:
    """Raise unless the store at `path` holds the same sweep; return its chunk shape."""
    path = Path(path)
    _wait_while_creating(path)
    if not (path / PROGRESS_DIR / "ready").exists():
        raise StoreError(
            f"{path} exists but is not a forget-jax store (or its creation was interrupted); "
            "delete it or choose another --out"
        )
    attrs = read_attrs(path)
    if attrs.get("config") != spec.to_yaml():
        raise StoreError(f"{path} holds a different sweep (its config differs); use another --out, or delete it")
    return tuple(attrs["chunk_shape"])


def done_blocks(path: str | Path) -> set[int]:
    d = _done_dir(Path(path))
    if not d.exists():
        return set()
    return {int(p.stem) for p in d.glob("*.json")}


def block_markers(path: str | Path) -> list[dict]:
    d = _done_dir(Path(path))
    return [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))] if d.exists() else []


def write_block(
    path: str | Path, spec: SweepSpec, block: Block, metrics: dict[str, np.ndarray], diverged: np.ndarray, timing: dict
) -> None:
    """Write one block's arrays into its own chunk, then commit it with an atomic marker."""
    path = Path(path)
    dims = spec.dims
    data_vars = {name: ((*dims, "step"), metrics[name]) for name in METRIC_NAMES}
    data_vars["diverged"] = (dims, diverged.astype(bool))
    data_vars["completed"] = (dims, np.ones(block.shape, dtype=bool))
    region = dict(zip(dims, block.region))
    region["step"] = slice(None)
    with _quiet_progress_folder():
        xr.Dataset(data_vars).to_zarr(path, region=region, mode="r+", consolidated=False)  # chunks only
    marker = _done_dir(path) / f"{block.index}.json"
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"block": block.index, "configs": block.size, **timing}))
    os.replace(tmp, marker)


def finalize(path: str | Path, plan: Plan) -> dict:
    """Record totals from the block markers in the store's attributes."""
    import zarr

    markers = block_markers(path)
    totals = {
        "blocks_done": len(markers),
        "blocks_total": len(plan.blocks),
        "configs_done": int(sum(m["configs"] for m in markers)),
        "compile_time_s": float(sum(m.get("compile_s", 0.0) for m in markers)),
        "run_time_s": float(sum(m.get("run_s", 0.0) for m in markers)),
        "wall_time_s": float(sum(m.get("wall_s", 0.0) for m in markers)),
    }
    zarr.open_group(str(path), mode="r+", zarr_format=2).attrs.update(totals)
    with _quiet_progress_folder():
        zarr.consolidate_metadata(str(path), zarr_format=2)
    return totals


def open_store(path: str | Path) -> xr.Dataset:
    """Open a store lazily (`xarray.open_zarr` works just as well)."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"store {str(path)!r} does not exist")
    return xr.open_zarr(path)


def export_netcdf(path: str | Path, out: str | Path) -> Path:
    """Write the store as a netCDF-4 file (attributes kept; booleans stored as uint8 by netCDF)."""
    ds = open_store(path).load()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(out, engine="h5netcdf")
    return out
