"""The results store: an xarray Dataset in a zarr store, written block by block, that knows its own health.

Layout (the public contract):
  dims      one per grid axis (named after the field, coordinate = grid values), then `seed`,
            then `step` (logged steps, starting at 0 = the initial state)
  data vars every name of metrics.METRIC_NAMES over (grid..., seed, step); `diverged` and
            `completed` (bool), `diverged_reason` and `diverged_step` (int32) over (grid..., seed);
            every variable and coordinate carries `long_name` and `units` ("1" = dimensionless)
  attrs     config (the full resolved YAML), forget_jax_version, jax_version, device_kind,
            created, chunk_shape, provenance (git commit, command line, host), and after a run
            wall_time_s, compile_time_s, run_time_s.

Pipeline sweeps (a config with `stages:`, docs/science/pipelines.md) add, and nothing else changes:
  dims      `mode` (after `step`; coordinate 0 .. K-1, K = the `modes` field): mode k is task k
  coords    `stage` along `step` (int64): the index of the stage whose updates produced the logged
            state (step 0 -> stage 0; a step in (first_step, first_step + steps] -> that stage)
  data vars every name of pipeline.loop.MODE_METRIC_NAMES (`mode_weight`, `mode_drift`,
            `mode_mean_position`, `mode_starved_fraction`) over (grid..., seed, step, mode); the
            two-mode names (`old_weight`, ...) stay over (grid..., seed, step)
  attrs     `modes` (K) and `stages`: per stage {index, objective, task, target, first_step,
            steps, end_step, replay_shares} (JSON; task / replay_shares null when not set)

Bookkeeping (ours, not zarr; readers never see it: the zarr metadata is consolidated):
  <store>.creating                     creation lock: json {pid, host, started, lease_until,
                                       chunk_shape, attrs}; stale when its owner is dead (same
                                       host) or its lease expired (other host)
  <store>/.forget_jax/manifest.json    sha256 of every coordinate chunk and of every metadata file
                                       that never changes (.zgroup, <var>/.zarray, <var>/.zattrs),
                                       the config's digest and the chunk shape
  <store>/.forget_jax/ready            written last at creation (the store is complete)
  <store>/.forget_jax/done/<i>.json    block i is committed: its timing and the sha256 of every
                                       chunk file it wrote (null = the chunk is all fill value, so
                                       zarr stores no file)
  <store>/.forget_jax/claims/<i>.json  lease on block i: {owner, pid, host, expires}
  <store>/.forget_jax/checkpoints/<i>.json + <i>-<digest>.npz
                                       training state of block i after its last segment; the json
                                       (written after the npz) names the npz and its sha256

Crash safety: every bookkeeping file is written by `write_atomic` (temp file in the same folder,
fsync, rename, fsync of the folder). A block's chunks are written and fsynced, their digests
recorded in the block's marker, and only then is the marker renamed into place: `--resume`
trusts markers only, so a block interrupted half-way (even by SIGKILL) is recomputed. `verify`
checks every committed chunk, coordinate and metadata file against its digest; `repair` rewrites
coordinates and metadata from the sweep's specification (they are deterministic) and un-commits
damaged blocks so that they are recomputed. Recovery never deletes committed results.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import math
import os
import platform
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from . import fields
from .config import SweepSpec
from .metrics import METRIC_NAMES, METRICS, MODE_METRIC_NAMES, MODE_METRICS
from .pipeline import schedule as _schedule

if TYPE_CHECKING:  # plan.py imports nothing from here; avoid the import cycle at runtime
    from .runner.plan import Block, Plan

PROGRESS_DIR = ".forget_jax"
MANIFEST = "manifest.json"
#: How long a creation lock held by a process on another host is trusted (creation takes seconds).
CREATE_LEASE_S = 120.0
#: Root metadata that `finalize` rewrites: checked for readability and config, not by digest.
_MUTABLE = (".zattrs", ".zmetadata")


class StoreError(ValueError):
    """A store that cannot be used as asked (exists with another sweep, missing, damaged, ...)."""


# ---------------------------------------------------------------------------------------------
# Durable files


def _durable() -> bool:
    """fsync on (the default). `FORGET_JAX_FSYNC=0` skips it: for scratch stores on slow disks and
    the test suite. Consistency after a killed process does not depend on it (the page cache
    outlives the process; every commit is a rename); only a power loss or kernel crash does."""
    return os.environ.get("FORGET_JAX_FSYNC", "1").strip() != "0"


def _fsync_dir(folder: Path) -> None:
    if not _durable():
        return
    with contextlib.suppress(OSError):  # not every platform can open a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    if not _durable():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes) -> None:
    """Replace `path` by `data` so that a crash leaves the old file or the new one, never a mix:
    write a temp file in the same folder, fsync it, rename it over `path`, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if _durable():
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _digest_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest(path: str | Path) -> str:
    """Checksum of a file's bytes, with its algorithm: "sha256:<hex>"."""
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def _read_json(path: Path) -> Any:
    """The parsed json file, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_bytes())
    except (OSError, ValueError):
        return None


def _dumps(obj: Any) -> bytes:
    def default(o):
        return o.item() if hasattr(o, "item") else str(o)

    return json.dumps(obj, default=default, sort_keys=True).encode()


def _progress_dir(path: Path) -> Path:
    return Path(path) / PROGRESS_DIR


def _done_dir(path: Path) -> Path:
    return _progress_dir(path) / "done"


def _claims_dir(path: Path) -> Path:
    return _progress_dir(path) / "claims"


def _checkpoint_dir(path: Path) -> Path:
    return _progress_dir(path) / "checkpoints"


def _lock_path(path: Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".creating")


# ---------------------------------------------------------------------------------------------
# Variable attributes (CF style: long_name and units; "1" = dimensionless)

#: Units of the metrics that have one; every other metric is dimensionless ("1"): weights,
#: probabilities, overlaps, Mahalanobis drifts and positions / scales in the (dimensionless)
#: data space of docs/science/model.md. KLs are in nats (natural log).
METRIC_UNITS: dict[str, str] = {"kl_to_target": "nat", "kl_from_train": "nat"}

#: long_name and units of every data variable (metrics from metrics.METRICS: "words (symbol)").
METRIC_ATTRS: dict[str, dict[str, str]] = {
    **{
        name: {"long_name": f"{words} ({symbol})", "units": METRIC_UNITS.get(name, "1")}
        for name, (symbol, words) in METRICS.items()
    },
    "diverged": {"long_name": "diverged (NaN, inf or blow-up during training)", "units": "1"},
    "completed": {"long_name": "completed (the configuration's block is committed)", "units": "1"},
    # the codes index forget_jax.train.DIVERGENCE_REASONS (not imported: the store stays free of the loop)
    "diverged_reason": {"long_name": "divergence reason (0 none, 1 nan, 2 inf, 3 blow-up)", "units": "1"},
    "diverged_step": {"long_name": "step of the first diverged state (-1: none)", "units": "1"},
}

#: long_name and units of the per-mode (per-task) variables of a pipeline store, dims
#: (grid..., seed, step, mode) (pipeline.loop.MODE_METRICS: "words (symbol)"). All dimensionless:
#: a weight, a Mahalanobis drift, a position in the data space, a fraction of the log interval's steps.
MODE_METRIC_ATTRS: dict[str, dict[str, str]] = {
    name: {"long_name": f"{words} ({symbol})", "units": "1"} for name, (symbol, words) in MODE_METRICS.items()
}

#: Dimensions after the grid dims and `seed` (one chunk along each: a block writes all of them).
TRAILING_DIMS = ("step", "mode")

#: Per-configuration integer outputs besides `diverged`: name -> (dtype, fill value).
PER_CONFIG_VARS: dict[str, tuple[type, int]] = {"diverged_reason": (np.int32, 0), "diverged_step": (np.int32, -1)}


def coordinate_attrs(name: str, values: np.ndarray | None = None) -> dict[str, str]:
    """long_name / units of a coordinate: `seed`, `step`, or a grid field (its label in the field
    table; its one-line doc as `description`)."""
    if name == "seed":
        return {"long_name": "seed", "units": "1"}
    if name == "step":
        return {"long_name": "optimisation step", "units": "1"}
    if name == "mode":
        return {
            "long_name": "mode (task)",
            "units": "1",
            "description": "mixture component k = 0 .. K-1; task k's data is mode k (mode 0: the prior skills)",
        }
    if name == "stage":
        return {
            "long_name": "pipeline stage",
            "units": "1",
            "description": "index of the stage whose updates produced the logged state: step 0 is stage 0, a step "
            "in (first_step, first_step + steps] belongs to that stage (the schedule: root attribute `stages`)",
        }
    staged = _schedule.split_name(name)
    declared = fields.all_fields().get(staged[1] if staged else name)
    numeric = values is None or np.asarray(values).dtype.kind in "biuf"
    words = declared.words if declared else name.replace("_", " ")
    if staged is not None:
        words = f"{words} (stage {staged[0]})"
    attrs = {"long_name": words, "units": "1" if numeric else ""}
    if declared is not None:
        attrs["description"] = declared.doc
    return attrs


def pipeline_stages(spec: SweepSpec) -> tuple[_schedule.Stage, ...] | None:
    """The schedule of a pipeline sweep (`stages:`) as `Stage`s; None for a two-mode sweep."""
    stages = getattr(spec.base, "stages", None)
    if stages is None:
        return None
    return _schedule.build(_schedule.freeze(stages))


def is_pipeline(spec: SweepSpec) -> bool:
    return getattr(spec.base, "stages", None) is not None


def metric_dims(spec: SweepSpec) -> dict[str, tuple[str, ...]]:
    """name -> dims of every per-step data variable of the sweep's store: METRIC_NAMES over
    (grid..., seed, step), and for a pipeline MODE_METRIC_NAMES over (grid..., seed, step, mode)."""
    out = {name: (*spec.dims, "step") for name in METRIC_NAMES}
    if is_pipeline(spec):
        out.update({name: (*spec.dims, "step", "mode") for name in MODE_METRIC_NAMES})
    return out


def stage_coordinate(spec: SweepSpec) -> np.ndarray | None:
    """(n_steps,) int64: the stage of each logged step of a pipeline sweep (schedule.stage_of_step);
    None for a two-mode sweep."""
    stages = pipeline_stages(spec)
    if stages is None:
        return None
    return np.asarray(_schedule.stage_of_step(stages, logged_steps(spec).tolist()), dtype=np.int64)


def schedule_attrs(spec: SweepSpec) -> dict:
    """Root attributes of a pipeline store: `modes` (K) and `stages`, per stage {index, objective,
    task, target, first_step, steps, end_step, replay_shares} (JSON-able). {} for a two-mode sweep.
    A stage's objective is its own, else the top-level one ("grid" when the top level sweeps it);
    `target` is null for an FKL stage (it trains on its task's p_train)."""
    stages = pipeline_stages(spec)
    if stages is None:
        return {}
    top = "grid" if "objective" in spec.axes else spec.base.objective
    rows = [
        {
            "index": s.index,
            "objective": s.value("objective", top),
            "task": s.task,
            "target": None if s.value("objective", top) == "fkl" else s.target,
            "first_step": s.first_step,
            "steps": s.steps,
            "end_step": s.first_step + s.steps,
            "replay_shares": list(s.replay_shares) if s.replay_shares is not None else None,
        }
        for s in stages
    ]
    return {"modes": int(spec.base.modes), "stages": rows}


def variable_attrs(spec: SweepSpec) -> dict[str, dict[str, str]]:
    """name -> attributes of every data variable and coordinate of the sweep's Dataset (for the
    in-memory Dataset, which should carry the same attributes as a store)."""
    out = {name: dict(METRIC_ATTRS[name]) for name in (*METRIC_NAMES, "diverged", "completed", *PER_CONFIG_VARS)}
    out.update({name: coordinate_attrs(name, values) for name, values in coordinates(spec).items()})
    if is_pipeline(spec):
        out.update({name: dict(MODE_METRIC_ATTRS[name]) for name in MODE_METRIC_NAMES})
        out["stage"] = coordinate_attrs("stage")
    return out


# ---------------------------------------------------------------------------------------------
# The template


def logged_steps(spec: SweepSpec) -> np.ndarray:
    """Union of the logged steps of every compile group (steps / log_every may be grid axes; a
    pipeline's steps are the sum of its stages' steps)."""
    stages = pipeline_stages(spec)
    total = stages[-1].first_step + stages[-1].steps if stages else spec.base.steps
    steps = spec.axes.get("steps", [total])
    every = spec.axes.get("log_every", [spec.base.log_every])
    union: set[int] = set()
    for s in steps:
        for k in every:
            union.update(range(0, s + 1, k))
    return np.array(sorted(union), dtype=np.int64)


def coordinates(spec: SweepSpec) -> dict[str, np.ndarray]:
    """Dimension coordinates: each grid axis, `seed`, `step`, and for a pipeline `mode` (0 .. K-1).
    (The pipeline's `stage` coordinate lies along `step`: `stage_coordinate`.)"""
    coords = {k: np.asarray(v) for k, v in spec.axes.items()}
    coords["seed"] = np.asarray(spec.seeds, dtype=np.int64)
    coords["step"] = logged_steps(spec)
    if is_pipeline(spec):
        coords["mode"] = np.arange(int(spec.base.modes), dtype=np.int64)
    return coords


def dataset_coordinates(spec: SweepSpec) -> dict:
    """The coordinates of the sweep's Dataset (xarray form): `coordinates` plus, for a pipeline,
    `stage` along `step`."""
    coords: dict = dict(coordinates(spec))
    stage = stage_coordinate(spec)
    if stage is not None:
        coords["stage"] = ("step", stage)
    return coords


def _template(spec: SweepSpec, chunk_shape: tuple[int, ...], attrs: dict) -> xr.Dataset:
    import dask.array as da

    coords = coordinates(spec)
    dims = spec.dims
    shape = spec.shape
    n_steps = len(coords["step"])
    dtype = np.float64 if spec.base.x64 else np.float32
    data_vars = {
        name: (
            (*dims, "step"),
            da.full((*shape, n_steps), np.nan, dtype=dtype, chunks=(*chunk_shape, n_steps)),
            METRIC_ATTRS[name],
        )
        for name in METRIC_NAMES
    }
    if is_pipeline(spec):
        k = len(coords["mode"])
        for name in MODE_METRIC_NAMES:
            data_vars[name] = (
                (*dims, "step", "mode"),
                da.full((*shape, n_steps, k), np.nan, dtype=dtype, chunks=(*chunk_shape, n_steps, k)),
                MODE_METRIC_ATTRS[name],
            )
        attrs = {**attrs, **schedule_attrs(spec)}
    data_vars["diverged"] = (dims, da.zeros(shape, dtype=bool, chunks=chunk_shape), METRIC_ATTRS["diverged"])
    data_vars["completed"] = (dims, da.zeros(shape, dtype=bool, chunks=chunk_shape), METRIC_ATTRS["completed"])
    for name, (kind, fill) in PER_CONFIG_VARS.items():
        data_vars[name] = (dims, da.full(shape, fill, dtype=kind, chunks=chunk_shape), METRIC_ATTRS[name])
    ds = xr.Dataset(data_vars, coords=dataset_coordinates(spec), attrs=attrs)
    for name, values in coords.items():
        ds[name].attrs.update(coordinate_attrs(name, values))
    if "stage" in ds.coords:
        ds["stage"].attrs.update(coordinate_attrs("stage"))
    return ds


def _write_template(path: Path, spec: SweepSpec, chunk_shape: tuple[int, ...], attrs: dict) -> None:
    ds = _template(spec, chunk_shape, {**attrs, "chunk_shape": list(chunk_shape)})
    # zarr format 2 with consolidated metadata: read everywhere, and readers never list the
    # progress folder (format 3 would warn about it as an unknown hierarchy member)
    ds.to_zarr(path, mode="w", compute=False, consolidated=True, zarr_format=2)


def _array_meta(path: Path) -> dict[str, dict]:
    """name -> {"dims", "shape", "chunks", "sep", "coordinates"} of every array of the store (from
    its files; "coordinates": the non-dimension coordinates its `coordinates` attribute names)."""
    out = {}
    for zarray in sorted(Path(path).glob("*/.zarray")):
        meta = _read_json(zarray)
        attrs = _read_json(zarray.with_name(".zattrs")) or {}
        dims = attrs.get("_ARRAY_DIMENSIONS")
        if not isinstance(meta, dict) or dims is None:
            continue
        name = zarray.parent.name
        named = attrs.get("coordinates")
        out[name] = {
            "dims": tuple(dims),
            "shape": tuple(meta["shape"]),
            "chunks": tuple(meta["chunks"]),
            "sep": meta.get("dimension_separator", "."),
            "coordinates": tuple(named.split()) if isinstance(named, str) else (),
        }
    return out


def _coordinate_keys(meta: dict) -> dict[str, list[str]]:
    """name -> every chunk key of each 1-D coordinate array: an array named after its own dim, or
    a non-dimension coordinate that a variable names (a pipeline's `stage` along `step`)."""
    named = {c for m in meta.values() for c in m.get("coordinates", ())}
    out = {}
    for name, m in meta.items():
        if m["dims"] == (name,) or (name in named and len(m["dims"]) == 1):
            n = max(1, math.ceil(m["shape"][0] / m["chunks"][0])) if m["shape"][0] else 0
            out[name] = [f"{name}/{i}" for i in range(n)]
    return out


def _static_files(path: Path) -> dict[str, str | None]:
    """rel path -> digest (None when absent) of the files that never change after creation: the
    metadata of every array and group, and every coordinate chunk (zarr stores no file for a chunk
    that is all fill value, e.g. `seed = [0]`)."""
    path = Path(path)
    out: dict[str, str | None] = {}
    for p in [*sorted(path.glob("*/.z*")), path / ".zgroup"]:
        if p.is_file():
            out[p.relative_to(path).as_posix()] = digest(p)
    for keys in _coordinate_keys(_array_meta(path)).values():
        for key in keys:
            p = path / key
            out[key] = digest(p) if p.is_file() else None
    return out


def _write_manifest(path: Path, spec: SweepSpec, chunk_shape: tuple[int, ...], files: dict) -> None:
    manifest = {
        "format": 1,
        "config_digest": _digest_bytes(spec.to_yaml().encode()),
        "chunk_shape": list(chunk_shape),
        "coords": sorted(_coordinate_keys(_array_meta(path))),
        "files": files,
        "written": _now(),
    }
    write_atomic(_progress_dir(path) / MANIFEST, _dumps(manifest))


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat()


# ---------------------------------------------------------------------------------------------
# Creation (safe to race, survives SIGKILL)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def _owner_dead(record: dict) -> bool:
    """A lease/lock record is stale: its process is dead on this host, or its lease expired."""
    try:
        if record.get("host") == socket.gethostname() and not _pid_alive(int(record["pid"])):
            return True
        return time.time() > float(record["lease_until"] if "lease_until" in record else record["expires"])
    except (KeyError, TypeError, ValueError):
        return True  # unreadable fields: nobody can renew it


def _link_new(target: Path, data: bytes) -> bool:
    """Create `target` holding `data` atomically and exclusively (False if it exists): the
    content is complete the moment the name appears (temp file + hard link)."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        if _durable():
            os.fsync(f.fileno())
    try:
        os.link(tmp, target)
        _fsync_dir(target.parent)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _take_over(target: Path, stale: bytes, data: bytes | None) -> bool:
    """Replace the stale file `target` (whose bytes we read as `stale`) by `data` (None: remove
    it). Rename-based, so that of several processes taking over at once one wins; a process that
    finds it moved a fresh file (not the stale one it read) puts it back and loses."""
    grave = target.with_name(f".{target.name}.{secrets.token_hex(4)}.stale")
    try:
        os.rename(target, grave)
    except FileNotFoundError:
        return False
    try:
        if grave.read_bytes() != stale:
            with contextlib.suppress(FileExistsError):
                os.link(grave, target)
            return False
    finally:
        grave.unlink(missing_ok=True)
    return True if data is None else _link_new(target, data)


def _lock_state(lock: Path) -> tuple[str, bytes]:
    """("gone" | "live" | "stale", the lock's bytes). A lock of an older forget-jax (empty) or an
    unreadable one is stale once it is older than the creation lease."""
    try:
        raw = lock.read_bytes()
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return "gone", b""
    try:
        record = json.loads(raw)
        if not isinstance(record, dict):
            raise ValueError
    except ValueError:
        return ("stale" if age > CREATE_LEASE_S else "live"), raw
    return ("stale" if _owner_dead(record) else "live"), raw


def _lock_record(chunk_shape: tuple[int, ...], attrs: dict) -> bytes:
    now = time.time()
    return _dumps(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": now,
            "lease_until": now + CREATE_LEASE_S,
            "chunk_shape": list(chunk_shape),
            "attrs": attrs,
        }
    )


def _has_results(path: Path) -> bool:
    d = _done_dir(path)
    return d.is_dir() and any(d.glob("*.json"))


def create(path: str | Path, spec: SweepSpec, plan: Plan, attrs: dict) -> None:
    """Write the store's metadata (no chunk data), its manifest and then its ready marker.

    Safe to race: one process wins the `.creating` lock, the others wait for it. A lock left by a
    dead creator (SIGKILL) is taken over, and the half-created store (no ready marker, no committed
    block) is written again. A store with committed blocks is never removed: one that lost its
    ready marker is verified and repaired in place (`prepare_resume`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = _lock_path(path)
    ready = _progress_dir(path) / "ready"
    chunk_shape = tuple(plan.chunk_shape)
    record = _lock_record(chunk_shape, attrs)
    deadline = time.time() + 300.0
    while True:
        if ready.exists() and not lock.exists():
            return
        if _link_new(lock, record):
            break
        state, raw = _lock_state(lock)
        if state == "stale" and _take_over(lock, raw, record):
            break
        if state == "live":
            if time.time() > deadline:
                raise StoreError(
                    f"{path}: another live process is creating this store and has not finished in 300 s ({lock})"
                )
            time.sleep(0.1)
    try:
        if ready.exists():
            return
        if _has_results(path):  # bookkeeping damage, not a half-created store: keep the results
            _release_lock(lock, record)
            prepare_resume(path, spec)
            return
        if path.exists():
            shutil.rmtree(path)  # half-created: no ready marker, no committed block
        _write_template(path, spec, chunk_shape, attrs)
        for p in path.rglob("*"):
            if p.is_file():
                _fsync_file(p)
        for d in [path, *(p for p in path.iterdir() if p.is_dir())]:
            _fsync_dir(d)
        for sub in ("done", "claims", "checkpoints"):
            (_progress_dir(path) / sub).mkdir(parents=True, exist_ok=True)
        _write_manifest(path, spec, chunk_shape, _static_files(path))
        write_atomic(ready, _now().encode())
    finally:
        _release_lock(lock, record)


def _release_lock(lock: Path, record: bytes) -> None:
    with contextlib.suppress(OSError):
        if lock.read_bytes() == record:
            lock.unlink()


def read_attrs(path: str | Path) -> dict:
    import zarr

    return dict(zarr.open_group(str(path), mode="r", zarr_format=2).attrs)


def _settle_creation(path: Path, spec: SweepSpec | None, timeout_s: float = 300.0) -> list[str]:
    """Wait while a live process creates the store; recover a creation its process died in:
    a half-created store (no ready marker, no committed block) is created again (from the dead
    creator's chunk shape and attributes), a stale lock next to a complete store is removed."""
    lock = _lock_path(path)
    ready = _progress_dir(path) / "ready"
    deadline = time.time() + timeout_s
    lines: list[str] = []
    while True:
        state, raw = _lock_state(lock)
        if state == "gone":
            return lines
        if state == "live":
            if ready.exists():
                return lines
            if time.time() > deadline:
                raise StoreError(
                    f"{path}: another process is creating this store and has not finished in "
                    f"{timeout_s:.0f} s (its lock {lock} is live)"
                )
            time.sleep(0.1)
            continue
        if spec is None and not ready.exists():
            return lines  # the caller cannot recreate it: leave it to create / prepare_resume
        if ready.exists() or _has_results(path):
            if _take_over(lock, raw, None):
                lines.append(f"removed the stale creation lock {lock} (its process is gone)")
            if ready.exists():
                return lines
            continue
        try:
            old = json.loads(raw)
        except ValueError:
            old = {}
        assert spec is not None  # returned above when None
        same = isinstance(old, dict) and (old.get("attrs") or {}).get("config") == spec.to_yaml()
        if not (same and old.get("chunk_shape")):  # an older forget-jax's lock, or another sweep's
            if _take_over(lock, raw, None):
                shutil.rmtree(path, ignore_errors=True)
            raise StoreError(
                f"{path}: its creation was killed before it finished (no results inside); removed it: "
                "run the command again to create it"
            )
        attrs = {**old["attrs"], "created": _now()}
        create(path, spec, _ChunkPlan(tuple(old["chunk_shape"])), attrs)  # type: ignore[arg-type]
        lines.append(f"{path}: its creation was killed before it finished (no results inside): created it again")
        return lines


@dataclass(frozen=True)
class _ChunkPlan:
    """What `create` reads of a plan (the store does not import the runner)."""

    chunk_shape: tuple[int, ...]


def _wait_while_creating(path: Path, timeout_s: float = 300.0) -> None:
    """Processes started together (`--shard i/N`, `--distributed`) may find the store folder while
    another one is still writing its metadata: wait for that creation (its lock file exists from
    before the folder appears until after the ready marker is written)."""
    _settle_creation(Path(path), None, timeout_s)


def _stored_config(path: Path) -> str | None:
    for source in (path / ".zattrs", path / ".zmetadata"):
        data = _read_json(source)
        if isinstance(data, dict) and source.name == ".zmetadata":
            data = (data.get("metadata") or {}).get(".zattrs")
        if isinstance(data, dict) and isinstance(data.get("config"), str):
            return data["config"]
    return None


def check_compatible(path: str | Path, spec: SweepSpec) -> tuple[int, ...]:
    """Raise unless the store at `path` holds the same sweep; return its chunk shape. Recovers a
    creation that was killed (no results inside) first."""
    path = Path(path)
    _settle_creation(path, spec)
    if not (path / PROGRESS_DIR / "ready").exists():
        if _matches(path, spec):
            raise StoreError(
                f"{path}: its ready marker is missing (bookkeeping damage; the results are kept): "
                "run with --resume to verify and repair it, or `forget-jax verify` to see what is damaged"
            )
        raise StoreError(f"{path} exists but is not a forget-jax store of this sweep; choose another --out")
    config = _stored_config(path)
    if config is None:
        raise StoreError(f"{path}: its attributes are unreadable; run with --resume to verify and repair the store")
    if config != spec.to_yaml():
        raise StoreError(f"{path} holds a different sweep (its config differs); use another --out, or delete it")
    return _chunk_shape(path)


def _chunk_shape(path: Path) -> tuple[int, ...]:
    manifest = _read_json(_progress_dir(path) / MANIFEST)
    if isinstance(manifest, dict) and manifest.get("chunk_shape"):
        return tuple(manifest["chunk_shape"])
    meta = _read_json(path / "completed" / ".zarray")
    if isinstance(meta, dict):
        return tuple(meta["chunks"])
    return tuple(read_attrs(path)["chunk_shape"])


def _matches(path: Path, spec: SweepSpec) -> bool:
    """Does the store hold this sweep? By its attributes, their consolidated copy or the manifest's
    config digest (any one of them: the others may be damaged, and `verify` reports that)."""
    text = spec.to_yaml()
    root = _read_json(path / ".zattrs")
    consolidated = _read_json(path / ".zmetadata")
    copy = ((consolidated or {}).get("metadata") or {}).get(".zattrs") if isinstance(consolidated, dict) else None
    manifest = _read_json(_progress_dir(path) / MANIFEST)
    return (
        (isinstance(root, dict) and root.get("config") == text)
        or (isinstance(copy, dict) and copy.get("config") == text)
        or (isinstance(manifest, dict) and manifest.get("config_digest") == _digest_bytes(text.encode()))
    )


# ---------------------------------------------------------------------------------------------
# Blocks


def done_blocks(path: str | Path) -> set[int]:
    d = _done_dir(Path(path))
    if not d.exists():
        return set()
    return {int(p.stem) for p in d.glob("*.json") if p.stem.isdigit()}


def block_markers(path: str | Path) -> list[dict]:
    """The readable block markers (an unreadable one is reported by `verify`)."""
    d = _done_dir(Path(path))
    markers = [_read_json(p) for p in sorted(d.glob("*.json"))] if d.exists() else []
    return [m for m in markers if isinstance(m, dict)]


def block_chunk_keys(path: str | Path, block: Block, names=None) -> dict[str, str]:
    """variable -> the zarr chunk key of `block` (block.region starts // chunk shape; the step
    and mode axes are one chunk each)."""
    meta = _array_meta(Path(path))
    coords = _coordinate_keys(meta)
    starts: dict[str, list[int]] = {}
    out: dict[str, str] = {}
    for name, m in meta.items():
        if name in coords or (names is not None and name not in names):
            continue
        if not starts:
            grid = [d for d in m["dims"] if d not in TRAILING_DIMS]
            starts = dict(zip(grid, (s.start for s in block.region), strict=True))
        index = [starts[d] // c if d in starts else 0 for d, c in zip(m["dims"], m["chunks"], strict=True)]
        out[name] = f"{name}/" + m["sep"].join(str(i) for i in index)
    return out


def write_block(
    path: str | Path,
    spec: SweepSpec,
    block: Block,
    metrics: dict[str, np.ndarray],
    diverged: np.ndarray,
    timing: dict,
    extra: dict[str, np.ndarray] | None = None,
) -> None:
    """Write one block's arrays into their own chunks, fsync them, then commit the block with an
    atomic marker that records the chunks' digests.

    Args:
        metrics: name -> block.shape + (n_steps,) for every name of METRIC_NAMES, and for a
            pipeline block.shape + (n_steps, K) for every name of MODE_METRIC_NAMES.
        diverged: block.shape booleans.
        timing: compile_s, run_s, wall_s (recorded in the marker).
        extra: per-configuration arrays (block.shape) of PER_CONFIG_VARS; names the store lacks
            (a store of an older forget-jax) are skipped."""
    path = Path(path)
    dims = spec.dims
    meta = _array_meta(path)
    data_vars = {name: (var_dims, metrics[name]) for name, var_dims in metric_dims(spec).items()}
    data_vars["diverged"] = (dims, diverged.astype(bool))
    data_vars["completed"] = (dims, np.ones(block.shape, dtype=bool))
    for name, values in (extra or {}).items():
        if name in meta:
            data_vars[name] = (dims, np.asarray(values).astype(PER_CONFIG_VARS.get(name, (values.dtype,))[0]))
    region = dict(zip(dims, block.region, strict=True))
    region["step"] = slice(None)
    if is_pipeline(spec):
        region["mode"] = slice(None)
    with _quiet_progress_folder():
        xr.Dataset(data_vars).to_zarr(path, region=region, mode="r+", consolidated=False)  # chunks only
    keys = block_chunk_keys(path, block, names=set(data_vars))
    chunks: dict[str, str | None] = {}
    for key in keys.values():
        p = path / key
        if p.is_file():
            _fsync_file(p)
            chunks[key] = digest(p)
        else:
            chunks[key] = None  # all fill value: zarr stores no file
    for name in keys:
        _fsync_dir(path / name)
    marker = {"block": block.index, "configs": block.size, **timing, "chunks": chunks, "written": _now()}
    write_atomic(_done_dir(path) / f"{block.index}.json", _dumps(marker))


@contextlib.contextmanager
def _quiet_progress_folder():
    """zarr warns that the progress folder is not part of the hierarchy when it lists members; it
    is ours and deliberately not zarr, so that one warning is silenced (readers using the
    consolidated metadata never list members)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy")
        yield


def _consolidate(path: Path) -> None:
    """Write `.zmetadata` (zarr v2 consolidated metadata: every .zgroup/.zarray/.zattrs) atomically."""
    path = Path(path)
    metadata = {}
    for rel in [".zgroup", ".zattrs"]:
        data = _read_json(path / rel)
        if data is not None:
            metadata[rel] = data
    for p in sorted(path.glob("*/.z*")):
        if p.name in (".zarray", ".zattrs", ".zgroup") and not p.parent.name.startswith("."):
            data = _read_json(p)
            if data is not None:
                metadata[p.relative_to(path).as_posix()] = data
    body = {"metadata": metadata, "zarr_consolidated_format": 1}
    write_atomic(path / ".zmetadata", json.dumps(body, indent=4, sort_keys=True, allow_nan=True).encode())


def _update_root_attrs(path: Path, update: dict) -> None:
    attrs = _read_json(path / ".zattrs")
    if not isinstance(attrs, dict):
        raise StoreError(f"{path}/.zattrs is unreadable; run with --resume to verify and repair the store")
    attrs.update(update)
    write_atomic(path / ".zattrs", json.dumps(attrs, indent=4, sort_keys=True, default=_dumps_default).encode())
    _consolidate(path)


def _dumps_default(o):
    return o.item() if hasattr(o, "item") else str(o)


def finalize(path: str | Path, plan: Plan) -> dict:
    """Record totals from the block markers in the store's attributes (atomically)."""
    path = Path(path)
    markers = block_markers(path)
    totals = {
        "blocks_done": len(markers),
        "blocks_total": len(plan.blocks),
        "configs_done": int(sum(m["configs"] for m in markers)),
        "compile_time_s": float(sum(m.get("compile_s", 0.0) for m in markers)),
        "run_time_s": float(sum(m.get("run_s", 0.0) for m in markers)),
        "wall_time_s": float(sum(m.get("wall_s", 0.0) for m in markers)),
    }
    _update_root_attrs(path, totals)
    return totals


# ---------------------------------------------------------------------------------------------
# Health: verify, repair, prepare_resume


@dataclass
class VerifyReport:
    """What `verify` found. `ok` is False when results or metadata are damaged or bookkeeping is
    missing; damaged checkpoints and stale claims are reported (`notes`) but not fatal."""

    path: str
    ok: bool = True
    damaged_blocks: dict[int, list[str]] = field(default_factory=dict)
    damaged_coords: list[str] = field(default_factory=list)
    damaged_metadata: list[str] = field(default_factory=list)
    damaged_checkpoints: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    blocks_checked: int = 0
    chunks_checked: int = 0
    stale_claims: list[int] = field(default_factory=list)
    bad_root: list[str] = field(default_factory=list)  # ".zattrs" / ".zmetadata" unreadable or wrong
    missing_ready: bool = False
    missing_manifest: bool = False
    stale_lock: bool = False

    def lines(self) -> list[str]:
        head = (
            f"{self.path}: healthy ({self.blocks_checked} committed blocks, {self.chunks_checked} chunks checked)"
            if self.ok
            else f"{self.path}: DAMAGED ({len(self.problems)} problem(s); `forget-jax sweep ... --resume` repairs it)"
        )
        return [head, *(f"  {p}" for p in self.problems), *(f"  note: {n}" for n in self.notes)]


def verify(path: str | Path) -> VerifyReport:
    """Check every committed chunk, coordinate and metadata file of a store against its recorded
    digest, and its bookkeeping (ready marker, manifest, markers, locks, claims, checkpoints)."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"store {str(path)!r} does not exist")
    report = VerifyReport(str(path))

    def problem(text: str) -> None:
        report.problems.append(text)

    state, _ = _lock_state(_lock_path(path))
    if state == "stale":
        report.stale_lock = True
        problem(f"stale creation lock {_lock_path(path)} (its process is gone): --resume recovers it")
    elif state == "live":
        report.notes.append(f"the store is being created by a live process ({_lock_path(path)})")
    if not (_progress_dir(path) / "ready").exists():
        report.missing_ready = True
        problem(f"ready marker {PROGRESS_DIR}/ready is missing (bookkeeping; the results are kept)")

    # root metadata (rewritten by finalize: readable and with the manifest's config)
    manifest = _read_json(_progress_dir(path) / MANIFEST)
    if not (isinstance(manifest, dict) and isinstance(manifest.get("files"), dict)):
        report.missing_manifest = True
        what = "missing" if not (_progress_dir(path) / MANIFEST).exists() else "unreadable"
        problem(f"manifest {PROGRESS_DIR}/{MANIFEST} is {what}: coordinates and metadata cannot be checked")
        manifest = None
    root = _read_json(path / ".zattrs")
    consolidated = _read_json(path / ".zmetadata")
    consolidated = consolidated.get("metadata") if isinstance(consolidated, dict) else None
    want = manifest.get("config_digest") if manifest else None
    for name, attrs in ((".zattrs", root), (".zmetadata", (consolidated or {}).get(".zattrs"))):
        if not isinstance(attrs, dict) or not isinstance(attrs.get("config"), str):
            report.bad_root.append(name)
            problem(f"metadata file {name} is missing or unreadable")
        elif want is not None and _digest_bytes(attrs["config"].encode()) != want:
            report.bad_root.append(name)
            problem(f"metadata file {name}: its config attribute was altered (digest differs from the manifest)")
    # coordinates and static metadata
    if manifest is not None:
        coords = set(manifest.get("coords", []))
        for rel, expected in sorted(manifest["files"].items()):
            p = path / rel
            if expected is None:
                bad = f"{rel} appeared (recorded as all fill value, no file)" if p.exists() else None
            elif not p.is_file():
                bad = f"{rel} is missing"
            else:
                bad = None if digest(p) == expected else f"{rel} was altered (digest differs from the manifest)"
            if bad is None:
                continue
            owner = rel.split("/")[0]
            if owner in coords:
                if owner not in report.damaged_coords:
                    report.damaged_coords.append(owner)
                problem(f"coordinate {owner!r}: {bad}")
            else:
                report.damaged_metadata.append(rel)
                problem(f"metadata file {bad}")

    if isinstance(consolidated, dict) and ".zmetadata" not in report.bad_root:
        damaged = set(report.damaged_metadata) | {
            r for r in (manifest or {}).get("files", {}) if r.split("/")[0] in report.damaged_coords
        }
        for rel, value in consolidated.items():
            if rel in (".zattrs", ".zgroup") or rel in damaged:
                continue
            if _read_json(path / rel) != value:
                report.bad_root.append(".zmetadata")
                problem(f"metadata file .zmetadata disagrees with {rel}")
                break

    # committed blocks
    d = _done_dir(path)
    for marker in sorted(d.glob("*.json"), key=lambda p: (len(p.stem), p.stem)) if d.exists() else []:
        if not marker.stem.isdigit():
            continue
        index = int(marker.stem)
        record = _read_json(marker)
        if not isinstance(record, dict):
            report.damaged_blocks[index] = [f"{PROGRESS_DIR}/done/{marker.name}"]
            problem(f"block {index}: its marker {PROGRESS_DIR}/done/{marker.name} is unreadable")
            continue
        report.blocks_checked += 1
        chunks = record.get("chunks")
        if not isinstance(chunks, dict):
            report.notes.append(f"block {index}: no checksums (written by an older forget-jax)")
            continue
        for key, expected in sorted(chunks.items()):
            report.chunks_checked += 1
            p = path / key
            if expected is None:
                bad = "appeared (recorded as all fill value, no file)" if p.exists() else None
            elif not p.is_file():
                bad = "is missing"
            else:
                bad = None if digest(p) == expected else "was altered (truncated or bit-flipped: digest differs)"
            if bad is not None:
                report.damaged_blocks.setdefault(index, []).append(key)
                problem(f"block {index}: variable {key.split('/')[0]!r} chunk {key} {bad}")

    # leases and checkpoints (not fatal)
    for index, record in _claims(path).items():
        if _owner_dead(record):
            report.stale_claims.append(index)
            report.notes.append(f"block {index}: stale claim by {record.get('owner')} (expired or dead)")
    for index in _checkpoint_indices(path):
        why = _checkpoint_problem(path, index)
        if why is not None:
            report.damaged_checkpoints.append(index)
            report.notes.append(f"block {index}: checkpoint {why} (discarded on resume: the block restarts)")
    report.ok = not report.problems
    return report


def _template_files(path: Path, spec: SweepSpec, chunk_shape: tuple[int, ...]) -> dict[str, bytes | None]:
    """The static files (manifest set) a fresh creation of this sweep writes: deterministic."""
    tmp = _progress_dir(path) / f"template-{secrets.token_hex(4)}"
    try:
        _write_template(tmp, spec, chunk_shape, {})
        rels = _static_files(tmp)
        return {rel: ((tmp / rel).read_bytes() if expected is not None else None) for rel, expected in rels.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def repair(path: str | Path, spec: SweepSpec, report: VerifyReport) -> list[str]:
    """Repair what `report` found: rewrite damaged coordinates and metadata from `spec`
    (deterministic), rebuild a missing ready marker / manifest / consolidated metadata, and
    un-commit damaged blocks (marker and damaged chunk files removed) so that the runner
    recomputes them. Never deletes intact results. Returns one line per action."""
    path = Path(path)
    lines: list[str] = []
    if not _matches(path, spec):
        raise StoreError(f"{path} holds a different sweep (or cannot tell which); not repairing it with this config")
    chunk_shape = _chunk_shape(path)
    template = None
    if report.damaged_coords or report.damaged_metadata or report.missing_manifest:
        template = _template_files(path, spec, chunk_shape)
    if template is not None:
        manifest = _read_json(_progress_dir(path) / MANIFEST)
        recorded = manifest.get("files", {}) if isinstance(manifest, dict) else {}
        coords = set(_coordinate_keys(_array_meta(path))) | {
            k.split("/")[0] for k in template if "/" in k and "/." not in k
        }
        # a variable this store never had (an older forget-jax) is not added
        template = {
            r: d
            for r, d in template.items()
            if "/" not in r or r.split("/")[0] in coords or (path / r.split("/")[0]).is_dir()
        }
        for rel, data in sorted(template.items()):
            p = path / rel
            current = p.read_bytes() if p.is_file() else None
            if current == data:
                continue
            if not report.missing_manifest and rel in recorded:
                expected = recorded[rel]
                if (expected is None and current is None) or (
                    current is not None and _digest_bytes(current) == expected
                ):
                    continue  # matches its digest: intact
            if data is None:
                p.unlink(missing_ok=True)
            else:
                write_atomic(p, data)
            lines.append(f"rewrote {rel} from the sweep's specification")
        if report.missing_manifest or report.damaged_metadata or report.damaged_coords:
            files = {rel: (_digest_bytes(data) if data is not None else None) for rel, data in template.items()}
            _write_manifest(path, spec, chunk_shape, files)
            if report.missing_manifest:
                lines.append(f"rebuilt {PROGRESS_DIR}/{MANIFEST} (coordinates and metadata checked against the spec)")
    if report.bad_root or template is not None:
        root = _read_json(path / ".zattrs")
        if ".zattrs" in report.bad_root:
            consolidated = _read_json(path / ".zmetadata")
            copy = (
                ((consolidated or {}).get("metadata") or {}).get(".zattrs") if isinstance(consolidated, dict) else None
            )
            if isinstance(copy, dict) and copy.get("config") == spec.to_yaml():
                root = copy
                lines.append("restored .zattrs from the consolidated metadata")
            else:
                root = {
                    "config": spec.to_yaml(),
                    "name": spec.base.name,
                    "chunk_shape": list(chunk_shape),
                    **schedule_attrs(spec),
                }
                lines.append("rebuilt .zattrs from the sweep's specification (run attributes lost)")
            write_atomic(path / ".zattrs", json.dumps(root, indent=4, sort_keys=True).encode())
        _consolidate(path)
        lines.append("rewrote the consolidated metadata .zmetadata")
    for index, damaged in sorted(report.damaged_blocks.items()):
        for key in damaged:
            if not key.startswith(PROGRESS_DIR):
                (path / key).unlink(missing_ok=True)
        (_done_dir(path) / f"{index}.json").unlink(missing_ok=True)
        lines.append(f"block {index}: un-committed ({', '.join(damaged)}); it will be recomputed")
    for index in report.stale_claims:
        target = _claims_dir(path) / f"{index}.json"
        if _owner_dead(_read_json(target) or {}):
            target.unlink(missing_ok=True)
    for index in report.damaged_checkpoints:
        drop_checkpoint(path, index)
        lines.append(f"block {index}: dropped its damaged checkpoint (the block restarts from its beginning)")
    for sub in ("done", "claims", "checkpoints"):
        (_progress_dir(path) / sub).mkdir(parents=True, exist_ok=True)
    if report.missing_ready:
        write_atomic(_progress_dir(path) / "ready", _now().encode())
        lines.append(f"rebuilt {PROGRESS_DIR}/ready (the store's metadata is complete)")
    if report.stale_lock:
        state, raw = _lock_state(_lock_path(path))
        if state == "stale" and _take_over(_lock_path(path), raw, None):
            lines.append(f"removed the stale creation lock {_lock_path(path)}")
    return lines


def prepare_resume(path: str | Path, spec: SweepSpec, refuse_damaged: bool = False) -> list[str]:
    """What `--resume` does first: recover a killed creation, check that the store holds this
    sweep, verify it and repair it (or, with `refuse_damaged`, raise naming the damaged blocks,
    coordinates and metadata). Returns the lines to print."""
    path = Path(path)
    lines = _settle_creation(path, spec)
    if not _matches(path, spec):
        if _stored_config(path) is None and not (_progress_dir(path) / MANIFEST).exists():
            raise StoreError(f"{path}: cannot tell which sweep it holds (attributes and manifest unreadable)")
        raise StoreError(f"{path} holds a different sweep (its config differs); use another --out, or delete it")
    report = verify(path)
    if report.ok and not report.damaged_checkpoints and not report.stale_claims:
        return [*lines, report.lines()[0]]
    if refuse_damaged and (report.damaged_blocks or report.damaged_coords or report.damaged_metadata):
        what = [f"block {i} ({', '.join(keys)})" for i, keys in sorted(report.damaged_blocks.items())]
        what += [f"coordinate {c!r}" for c in report.damaged_coords] + report.damaged_metadata
        raise StoreError(f"{path} is damaged: {'; '.join(what)}; rerun --resume without refusing to recompute them")
    return [*lines, *report.lines(), *repair(path, spec, report)]


# ---------------------------------------------------------------------------------------------
# Leases on blocks (concurrent writers without --shard)


def owner_id() -> str:
    """A writer's identity: host:pid:random."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _claim_record(owner: str, lease_s: float) -> bytes:
    now = time.time()
    return _dumps(
        {"owner": owner, "pid": os.getpid(), "host": socket.gethostname(), "claimed": now, "expires": now + lease_s}
    )


def _claims(path: Path) -> dict[int, dict]:
    d = _claims_dir(Path(path))
    out = {}
    for p in d.glob("*.json") if d.exists() else []:
        if p.stem.isdigit():
            record = _read_json(p)
            out[int(p.stem)] = record if isinstance(record, dict) else {}
    return out


def claim(path: str | Path, block_index: int, owner: str, lease_s: float) -> bool:
    """Take the lease on a block for `lease_s` seconds: True if `owner` now holds it (a new
    claim, its own, or one taken over from an expired lease or a dead process on this host);
    False if another live writer holds it or the block is already committed."""
    path = Path(path)
    if (_done_dir(path) / f"{block_index}.json").exists():
        return False
    target = _claims_dir(path) / f"{block_index}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    record = _claim_record(owner, lease_s)
    for _ in range(3):
        if _link_new(target, record):
            return True
        try:
            raw = target.read_bytes()
        except FileNotFoundError:
            continue
        try:
            held = json.loads(raw)
            held = held if isinstance(held, dict) else {}
        except ValueError:
            held = {}
        if held.get("owner") == owner:
            write_atomic(target, record)
            return True
        if not _owner_dead(held):
            return False
        if _take_over(target, raw, record):
            return True
    return False


def renew(path: str | Path, block_index: int, owner: str, lease_s: float) -> bool:
    """Extend `owner`'s lease on a block; False if it no longer holds it (taken over)."""
    target = _claims_dir(Path(path)) / f"{block_index}.json"
    held = _read_json(target)
    if not isinstance(held, dict) or held.get("owner") != owner:
        return False
    write_atomic(target, _claim_record(owner, lease_s))
    return True


def release(path: str | Path, block_index: int, owner: str) -> None:
    """Drop `owner`'s lease on a block (nothing if another writer holds it)."""
    target = _claims_dir(Path(path)) / f"{block_index}.json"
    held = _read_json(target)
    if isinstance(held, dict) and held.get("owner") == owner:
        target.unlink(missing_ok=True)


def live_claims(path: str | Path) -> dict[int, dict]:
    """block index -> claim record of every lease that is held by a live writer."""
    return {i: r for i, r in _claims(Path(path)).items() if r and not _owner_dead(r)}


# ---------------------------------------------------------------------------------------------
# Checkpoints (a block's training state after its last segment)


def _checkpoint_indices(path: Path) -> list[int]:
    d = _checkpoint_dir(path)
    if not d.exists():
        return []
    found = {int(p.stem) for p in d.glob("*.json") if p.stem.isdigit()}
    found |= {int(p.name.split("-")[0]) for p in d.glob("*.npz") if p.name.split("-")[0].isdigit()}
    return sorted(found)


def write_checkpoint(path: str | Path, block_index: int, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Save a block's state: `<i>-<digest>.npz` (atomic), then the sidecar `<i>.json` naming it
    with its digest and `meta` (atomic: the switch to the new checkpoint), then the old npz goes."""
    d = _checkpoint_dir(Path(path))
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})  # type: ignore[arg-type]
    data = buffer.getvalue()
    checksum = _digest_bytes(data)
    name = f"{block_index}-{checksum.split(':')[1][:16]}.npz"
    write_atomic(d / name, data)
    write_atomic(
        d / f"{block_index}.json", _dumps({"block": block_index, "file": name, "digest": checksum, "meta": meta})
    )
    for old in d.glob(f"{block_index}-*.npz"):
        if old.name != name:
            old.unlink(missing_ok=True)


def _checkpoint_problem(path: Path, block_index: int) -> str | None:
    d = _checkpoint_dir(path)
    sidecar = d / f"{block_index}.json"
    record = _read_json(sidecar)
    if not sidecar.exists():
        return "has no sidecar (its write was interrupted)"
    if not isinstance(record, dict) or not isinstance(record.get("file"), str):
        return f"sidecar {sidecar.name} is unreadable"
    npz = d / record["file"]
    if not npz.is_file():
        return f"file {record['file']} is missing"
    if digest(npz) != record.get("digest"):
        return f"file {record['file']} was altered (digest differs)"
    return None


def read_checkpoint(path: str | Path, block_index: int) -> tuple[dict[str, np.ndarray], dict] | None:
    """(arrays, meta) of a block's checkpoint; None when there is none. A damaged one (digest
    mismatch, unreadable) is discarded with a warning, so the block restarts from its beginning."""
    path = Path(path)
    d = _checkpoint_dir(path)
    sidecar = d / f"{block_index}.json"
    if not sidecar.exists() and not list(d.glob(f"{block_index}-*.npz")):
        return None
    why = _checkpoint_problem(path, block_index)
    if why is None:
        record = _read_json(sidecar)
        try:
            with np.load(d / record["file"], allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            return arrays, dict(record.get("meta") or {})
        except (OSError, ValueError) as exc:
            why = f"is unreadable ({exc})"
    warnings.warn(
        f"{path}: the checkpoint of block {block_index} {why}; discarded, the block restarts from its beginning",
        stacklevel=2,
    )
    drop_checkpoint(path, block_index)
    return None


def drop_checkpoint(path: str | Path, block_index: int) -> None:
    """Remove a block's checkpoint (sidecar first, then its npz files)."""
    d = _checkpoint_dir(Path(path))
    (d / f"{block_index}.json").unlink(missing_ok=True)
    for npz in d.glob(f"{block_index}-*.npz"):
        npz.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Provenance, reading, export


def provenance() -> dict:
    """Where a store came from: git commit of the forget_jax code (empty when it is not a git
    checkout) and whether it had uncommitted changes, the command line, host, Python version."""
    here = Path(__file__).resolve().parent
    commit, dirty = "", False
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        top = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
        if top.returncode == 0:
            commit = top.stdout.strip()
            status = subprocess.run(
                ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "--", "."],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            dirty = bool(status.stdout.strip())
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "command": shlex.join(sys.argv),
        "host": socket.gethostname(),
        "python_version": platform.python_version(),
    }


def open_store(path: str | Path) -> xr.Dataset:
    """Open a store lazily (`xarray.open_zarr` works just as well)."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"store {str(path)!r} does not exist")
    return xr.open_zarr(path)


def _netcdf_attr(value: Any) -> Any:
    """An attribute as netCDF can hold it: a bool as an int, a mapping or a list of anything but
    numbers / strings (a pipeline's `stages`) as its JSON text; the rest unchanged."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, dict) or (
        isinstance(value, (list, tuple)) and not all(isinstance(v, (int, float, str)) for v in value)
    ):
        return json.dumps(value, sort_keys=True)
    return value


def export_netcdf(path: str | Path, out: str | Path, force: bool = False) -> Path:
    """Write the store as a netCDF-4 file (attributes kept; booleans stored as uint8 by netCDF).
    Refuses to overwrite an existing file unless `force`."""
    out = Path(out)
    if out.exists() and not force:
        raise StoreError(f"{out} exists; pass --force to overwrite it")
    ds = open_store(path).load()
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.attrs = {k: _netcdf_attr(v) for k, v in ds.attrs.items()}
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        ds.to_netcdf(tmp, engine="h5netcdf")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
