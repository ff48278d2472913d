"""The small framework behind `forget-jax reproduce`: claims, study configurations, stores.

A *study* (one module per study in this package) regenerates one view of docs/science/studies.md section 4
(PD1-PD6), the T5 convergence rates or the CRNC25 toy. It is described by

* a YAML file `configs/reproduce/<study>.yaml`: a sweep configuration as `forget_jax.config`
  reads it (the full grid, meant for a GPU), plus two sections that are removed before the
  configuration reaches `load_config`:

  - `quick:`  overrides for `--quick` (top-level keys replace, `grid:` axes replace axis by axis,
    an axis set to null is removed);
  - `stores:` optional, name -> overrides: one store per entry (used where two traced fields must
    vary together, e.g. CRNC25's target position and the matching initial offset); without it
    the study has a single store.

* a module exposing `NAME`, `TITLE`, `CLAIMS` (the ids of every claim it reports) and
  `analyze(stores, ctx) -> list[Claim]`, which reads the stores, draws its figures with
  `ctx.save_figure` and returns its claims.

Stores are written with `forget_jax.sweep(config, out=DIR/<store>.zarr, resume=True)`: a store
that is complete for the same configuration is reopened without recomputation, one that was
interrupted is completed, and one written for another configuration (e.g. `--quick` vs full in
the same folder) is replaced.
"""

from __future__ import annotations

import copy
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

#: Sections of a study YAML that are not sweep-configuration keys (removed before load_config).
EXTRA_SECTIONS = ("quick", "stores")


def configs_dir() -> Path:
    """The study configurations `configs/reproduce/`, shipped inside the package (package data,
    found through importlib.resources, so an installed wheel has them too)."""
    from ..config import packaged_configs

    return packaged_configs() / "reproduce"


# ---------------------------------------------------------------------------------------------
# claims


@dataclass
class Claim:
    """One checked statement: a prediction of docs/science/claims.md against a measurement from the stores.

    Attributes:
        id: stable identifier `<study>.<name>` (tests refer to it).
        statement: what is claimed, in words.
        source: where the prediction comes from (label of a docs/science page, e.g. T4 or PD2).
        predicted: the predicted value or relation, as text.
        measured: the measured value, as text.
        tolerance: the tolerance or acceptance rule, as text.
        passed: PASS (True) or FAIL (False).
        note: caveats, how the number was obtained, known deviations.
        values: the underlying numbers (for report.json).
    """

    id: str
    statement: str
    source: str
    predicted: str
    measured: str
    tolerance: str
    passed: bool
    note: str = ""
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def study(self) -> str:
        return self.id.split(".", 1)[0]

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def to_json(self) -> dict:
        out = asdict(self)
        out["verdict"] = self.verdict
        out["values"] = _jsonable(self.values)
        return out


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else str(v)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    return value


def fmt(x, digits: int = 3) -> str:
    """Compact number formatting for the report (3 significant digits by default)."""
    if isinstance(x, (list, tuple, np.ndarray)):
        return "[" + ", ".join(fmt(v, digits) for v in np.ravel(x)) + "]"
    if x is None:
        return "n/a"
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e4:
        return f"{x:.{digits}g}"
    return f"{x:.{max(digits - 1, 1)}e}"


# ---------------------------------------------------------------------------------------------
# configurations


def _merge(base: dict, override: dict) -> dict:
    """Top-level keys replace; `grid` is merged axis by axis (None removes an axis)."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if key == "grid":
            grid = dict(out.get("grid") or {})
            for axis, values in (value or {}).items():
                if values is None:
                    grid.pop(axis, None)
                else:
                    grid[axis] = copy.deepcopy(values)
            out["grid"] = grid
        elif value is None:
            out.pop(key, None)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_study_yaml(name: str, directory: Path | None = None) -> dict:
    path = (directory or configs_dir()) / f"{name}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"study configuration {str(path)!r} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a study configuration must be a mapping")
    return raw


def study_configs(name: str, quick: bool, directory: Path | None = None) -> dict[str, dict]:
    """The sweep configurations of a study: store name -> config dict (valid for load_config).

    `quick` applies the YAML's `quick:` section; `stores:` entries become one configuration each
    (store `<study>-<entry>`), otherwise the study has the single store `<study>`.
    """
    raw = read_study_yaml(name, directory)
    quick_overrides = raw.get("quick") or {}
    stores = raw.get("stores")
    base = {k: v for k, v in raw.items() if k not in EXTRA_SECTIONS}
    if quick:
        stores = quick_overrides.get("stores", stores)
        base = _merge(base, {k: v for k, v in quick_overrides.items() if k != "stores"})
        base["name"] = f"{base.get('name', name)}-quick"
    if not stores:
        return {name: base}
    return {
        f"{name}-{key}": {**_merge(base, overrides or {}), "name": f"{base.get('name', name)}-{key}"}
        for key, overrides in stores.items()
    }


# ---------------------------------------------------------------------------------------------
# stores


@dataclass
class StoreRecord:
    """What happened to one store in this run (for the report)."""

    name: str
    path: str
    configs: int
    reused: bool
    seconds: float
    compile_s: float = float("nan")
    run_s: float = float("nan")
    grid: dict[str, list] = field(default_factory=dict)  # axis -> values (seeds not included)
    seeds: int = 1
    steps: int = 0
    x64: bool = False

    def grid_text(self) -> str:
        """The grid in one line: `axis [v1, v2, ...] x ... x N seeds; T steps (float32|float64)`."""
        parts = [f"{axis} {_values_text(values)}" for axis, values in self.grid.items()]
        parts.append(f"{self.seeds} seed{'s' if self.seeds != 1 else ''}")
        return (
            " x ".join(parts) + f" = {self.configs} runs; {self.steps} steps ({'float64' if self.x64 else 'float32'})"
        )


def _values_text(values: list) -> str:
    """Up to 8 values in full, longer axes as `N values in [min, max]`."""
    if len(values) <= 8 or not all(isinstance(v, (int, float)) for v in values):
        return "[" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values) + "]"
    return f"{len(values)} values in [{min(values):g}, {max(values):g}]"


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def ensure_store(config: dict, path: Path, progress: bool = False, on_advance=None):
    """Write (or reuse, or complete) the store of `config` at `path`; returns (Dataset, StoreRecord).

    A store complete for the same configuration is reopened without recomputation; a store of
    another configuration (or a broken one) at the same path is deleted and recomputed.
    """
    import forget_jax
    from forget_jax.config import load_config
    from forget_jax.store import StoreError

    spec = load_config(config)  # fail early with a one-line ConfigError
    path = Path(path)
    start = time.perf_counter()
    existing_done = _done_count(path)
    try:
        ds = forget_jax.sweep(config, out=path, resume=True, progress=progress, on_advance=on_advance)
    except StoreError:
        if path.suffix != ".zarr":
            raise
        shutil.rmtree(path, ignore_errors=True)
        path.with_name(path.name + ".creating").unlink(missing_ok=True)
        existing_done = 0
        ds = forget_jax.sweep(config, out=path, resume=True, progress=progress, on_advance=on_advance)
    seconds = time.perf_counter() - start
    blocks_total = int(ds.attrs.get("blocks_total", -1))
    record = StoreRecord(
        name=path.stem,
        path=str(path),
        configs=int(spec.size),
        reused=existing_done > 0 and existing_done == blocks_total,
        seconds=seconds,
        compile_s=float(ds.attrs.get("compile_time_s", float("nan"))),
        run_s=float(ds.attrs.get("run_time_s", float("nan"))),
        grid={axis: [_plain(v) for v in values] for axis, values in spec.axes.items()},
        seeds=len(spec.seeds),
        steps=int(spec.base.steps),
        x64=bool(spec.base.x64),
    )
    return ds, record


def _done_count(path: Path) -> int:
    from forget_jax.store import done_blocks

    try:
        return len(done_blocks(path)) if path.exists() else 0
    except Exception:  # pragma: no cover - unreadable folder: treated as absent
        return 0


def base_config(ds) -> dict:
    """The resolved configuration a store was written with (its `config` attribute)."""
    return yaml.safe_load(ds.attrs["config"])


# ---------------------------------------------------------------------------------------------
# per-study context


@dataclass
class Context:
    """Handed to a study's `analyze`: where to write figures, the mode, collected outputs."""

    study: str
    out: Path
    quick: bool
    figures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def save_figure(self, fig, stem: str) -> list[Path]:
        """Save a matplotlib Figure as `<out>/figures/<stem>.png` (150 dpi) and `.pdf`."""
        from .figures import save

        paths = save(fig, self.out / "figures" / stem)
        self.figures.extend(str(p.relative_to(self.out)) for p in paths)
        return paths

    def claim(
        self,
        name: str,
        statement: str,
        source: str,
        predicted: str,
        measured: str,
        tolerance: str,
        passed,
        note: str = "",
        **values,
    ) -> Claim:
        return Claim(
            id=f"{self.study}.{name}",
            statement=statement,
            source=source,
            predicted=predicted,
            measured=measured,
            tolerance=tolerance,
            passed=bool(passed),
            note=note,
            values=values,
        )


def final(ds, var: str) -> np.ndarray:
    """`var` at the last logged step, as a NumPy array over the grid dims (and seed)."""
    return np.asarray(ds[var].isel(step=-1).values)
