"""Figures from a results store: phase diagrams, line plots and trajectories (docs/science/studies.md section 4).

`plot_store(ds, x, y, var, step, sel, out)` draws one of three views of a store written by
`forget-jax sweep` (dims: grid axes..., `seed`, `step`; see store.py):

* **phase diagram** (x and y two grid axes): a heatmap of `var` at one logged step, the PD1-PD4
  views of docs/science/studies.md section 4 (e.g. final beta over separation Delta x replay ratio lambda).
* **line plot** (x a grid axis, no y): `var` at one logged step against x, one line per value of
  the first other grid axis with more than one value (PD1, PD4).
* **trajectory** (x = 'step', or no grid axis left): `var` against the logged step, one line per
  value of y (or of the first grid axis with more than one value) (PD6).

Every grid axis that is not drawn is fixed with `sel` (field -> value; CLI strings are cast to
the coordinate's dtype) or averaged, and the title says which. Seeds are averaged; line plots and
trajectories show the seed range (min..max) as a band. Runs flagged `diverged` are masked (NaN)
before any average, and counted in the title; a cell whose runs all diverged is drawn grey.

Theory overlays (the formulas come from forget_jax.theory, never written here):

* `old_weight` under forward KL: the population optimum beta = lambda (T2; lambda = 0 is T1's
  mass forgetting) -- dashed contour lines on a heatmap with a replay-ratio axis, the identity
  line on a line plot against replay_ratio, the asymptote of each trajectory.
* `starved_fraction` (Monte Carlo estimators, ancestral sampling): the probability that a batch
  holds no old-mode sample, ((1 - lambda)(1 - beta))^B (D6, T6), with beta the mean logged old
  weight over the logging interval shown (a trajectory uses each interval's own beta). Under
  forward KL the batch is drawn from p_lambda, whose old share is lambda, so beta enters as 0.

Return value (one rule for every drawing function): `plot_store` returns the matplotlib
`Figure` (object API, no pyplot state: it shows inline in Jupyter, or save it yourself with
`fig.savefig`), and also writes it to `out` when `out` is given; with `out=None` nothing is
written. `default_out(ds, var)` is the file the CLI writes by default: `<store>.<var>.png` beside
the store the Dataset was opened from, else `<name>.<var>.png` in the working directory with the
sweep `name` reduced to a plain file name (no folders: `name: ../x` writes `x.<var>.png` here).

Pipeline stores (a config with `stages:`; store dims add `mode`, coordinate `stage` along `step`):

* `plot_store(..., var="mode_weight", mode=k, stage=s)` draws any of the views above for the
  per-task variable of mode k (`mode` picks it first), at the last logged step of stage s
  (`stage` picks the step; trajectories ignore it): e.g. the phase diagram of w_1 at the end of
  stage 1 over two grid axes such as `stages.1.replay_ratio` (label "λ (stage 1) replay ratio").
* `plot_mode_weights(ds, sel, out)`: the K mode weights of one configuration (`sel` picks it;
  seeds averaged) as stacked areas over the steps, with a vertical line at every stage boundary
  and each stage's label (objective, task, replay) on top; dashed, the FKL population optimum of
  each FKL stage's weights (P1, `theory.fkl_stage_weights`) as cumulative levels over its span.

`theory_overlay` is the public helper that evaluates those overlays on arrays of parameters.
User mistakes (unknown variable, field, step or `sel` value) raise `ValueError` with one line
that names the thing and lists what is allowed; the CLI prints it as `error: ...`.
"""

from __future__ import annotations

import math
import re
import textwrap
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
import yaml

from . import fields
from .metrics import METRICS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["LABELS", "default_out", "label", "plot_mode_weights", "plot_store", "stage_end_step", "theory_overlay"]

#: (symbol, words) of the store's non-field names; fields take theirs from the field table
#: (fields.py) and metrics from metrics.METRICS.
LABELS: dict[str, tuple[str, str]] = {"step": ("t", "step"), "seed": ("", "seed")}

_LINE_COLOURS = "viridis"  # colour-blind safe and monotone in lightness; the yellow end is cut
_SUFFIXES = (".png", ".pdf", ".svg")
_STARVATION_LEVELS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


#: A per-mode variable with its mode picked (`plot_store(..., mode=k)`): `<var>[<k>]`.
_MODE_PICKED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\[(\d+)\]")


def label(name: str) -> str:
    """Axis label of a field or variable: its symbol, then its name in words ("λ replay ratio");
    a pipeline stage's field `stages.<i>.<field>` reads "λ (stage 1) replay ratio", a per-mode
    variable with its mode picked, `mode_weight[1]`, reads "w_1 mode weight (mode 1)"."""
    from .pipeline.loop import MODE_METRICS
    from .pipeline.schedule import split_name

    staged = split_name(name)
    if staged is not None:
        known = fields.label(staged[1])
        symbol, words = known if known is not None else ("", staged[1].replace("_", " "))
        return f"{symbol} (stage {staged[0]}) {words}".strip()
    picked = _MODE_PICKED.fullmatch(name)
    if picked is not None and picked.group(1) in MODE_METRICS:
        symbol, words = MODE_METRICS[picked.group(1)]
        k = picked.group(2)
        return f"{symbol.replace('_k', '_' + k).replace(',k', ',' + k)} {words} (mode {k})"
    known = fields.label(name) or METRICS.get(name) or LABELS.get(name) or MODE_METRICS.get(name)
    symbol, words = known if known is not None else ("", name.replace("_", " "))
    return f"{symbol} {words}".strip()


# ---------------------------------------------------------------------------------------------
# theory overlays


def theory_overlay(
    var: str,
    *,
    objective: str | None,
    replay_ratio=None,
    batch_size=None,
    old_weight=None,
    estimator: str | None = "score",
    sampling: str | None = "ancestral",
    train_weight: bool | None = True,
) -> np.ndarray | None:
    r"""The theoretical value of `var` where docs/science/claims.md has one, broadcast over the array arguments.

    * `old_weight`, objective `fkl`: the population optimum of KL(p_lambda || q_theta),
      beta = lambda (T2; `theory.fkl_replay_optimum`). None when the weight is frozen.
    * `starved_fraction`, Monte Carlo estimator with ancestral sampling: P(no old-mode sample in
      a batch of B) = ((1 - lambda)(1 - beta))^B (D6, T6; `theory.starvation_probability`).
      Under `rkl` the batch is drawn from (1 - lambda) q_theta + lambda p_old, so beta is the
      learner's old weight `old_weight`; under `fkl` it is drawn from p_lambda, whose old share
      is lambda alone, so beta = 0. The `population` estimator and stratified sampling never
      starve at random: None.

    Returns a float64 array, or None where no closed form applies (another variable or
    objective, or a needed parameter unknown, e.g. averaged over).
    """
    import jax

    from . import theory

    with jax.enable_x64(True):
        if var == "old_weight":
            if objective != "fkl" or replay_ratio is None or train_weight is False:
                return None
            return np.asarray(theory.fkl_replay_optimum(np.asarray(replay_ratio, np.float64)), np.float64)
        if var == "starved_fraction":
            if (
                estimator in (None, "population")
                or sampling != "ancestral"
                or replay_ratio is None
                or batch_size is None
            ):
                return None
            if objective == "fkl":
                beta = 0.0
            elif objective == "rkl" and old_weight is not None:
                beta = np.asarray(old_weight, np.float64)
            else:
                return None
            value = theory.starvation_probability(
                beta, np.asarray(replay_ratio, np.float64), np.asarray(batch_size, np.float64)
            )
            return np.asarray(value, np.float64)
    return None


def _overlay(ds: xr.Dataset, var: str, params: Mapping[str, Any], req: _Request, beta) -> np.ndarray | None:
    """The dashed theory of a view: `theory_overlay` (two-mode stores) or `_stage_optimum` (pipelines)."""
    if req.pipeline is not None:
        return _stage_optimum(ds, params, req)
    return theory_overlay(
        var,
        objective=params.get("objective"),
        replay_ratio=params.get("replay_ratio"),
        batch_size=params.get("batch_size"),
        old_weight=beta,
        estimator=params.get("estimator"),
        sampling=params.get("sampling"),
        train_weight=params.get("train_weight"),
    )


def _overlay_text(var: str, params: Mapping[str, Any], beta: float | None, req: _Request | None = None) -> str:
    if req is not None and req.pipeline is not None:
        k, s = req.pipeline["mode"], req.pipeline["stage"]
        return f"theory (dashed): FKL optimum of w_{k} after stage {s} (P1: 1 − λ on its task, λ share_j on replayed tasks)"
    if var == "old_weight":
        return "theory (dashed): FKL optimum β = λ (T2)"
    if params.get("objective") == "fkl":
        return "theory (dashed): P_starve = (1 − λ)^B, batches from p_λ (D6)"
    shown = f", β = {beta:.3g} (mean logged old weight)" if beta is not None and np.isfinite(beta) else ""
    return f"theory (dashed): P_starve = ((1 − λ)(1 − β))^B{shown} (T6)"


# ---------------------------------------------------------------------------------------------
# resolving the request


def _fmt(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{float(value):g}"
    if isinstance(value, np.generic):
        return str(value.item())
    return str(value)


def _allowed(values, limit: int = 24) -> str:
    items = [_fmt(v) for v in values]
    if len(items) > limit:
        items = [*items[: limit - 4], "...", *items[-3:]]
    return ", ".join(items)


def _is_numeric(values: np.ndarray) -> bool:
    return np.issubdtype(values.dtype, np.number) and not np.issubdtype(values.dtype, np.bool_)


def _config(ds: xr.Dataset) -> dict:
    try:
        config = yaml.safe_load(ds.attrs.get("config", "") or "") or {}
    except yaml.YAMLError:
        return {}
    return config if isinstance(config, dict) else {}


def _cast(ds: xr.Dataset, name: str, text: Any) -> Any:
    """The coordinate value of `name` that `text` (a CLI string or a Python value) names."""
    coord = ds[name].values
    kind = coord.dtype.kind
    problem = f"sel {name}={_fmt(text)!s} is not a value of this store's grid; allowed: {_allowed(coord)}"
    if kind in "US" or kind == "O":
        matches = np.flatnonzero(coord.astype(str) == str(text).strip())
    elif kind == "b":
        word = str(text).strip().lower()
        if word not in ("true", "false", "1", "0"):
            raise ValueError(problem)
        matches = np.flatnonzero(coord == (word in ("true", "1")))
    else:
        try:
            number = float(text)
        except (TypeError, ValueError):
            raise ValueError(problem) from None
        if kind in "iu" and not number.is_integer():
            raise ValueError(problem)
        close = np.isclose(coord.astype(np.float64), number, rtol=1e-5, atol=1e-12)
        matches = np.flatnonzero(close)
        if len(matches) > 1:
            matches = matches[[np.argmin(np.abs(coord[matches] - number))]]
    if len(matches) == 0:
        raise ValueError(problem)
    return coord[matches[0]].item() if hasattr(coord[matches[0]], "item") else coord[matches[0]]


@dataclass
class _Step:
    mode: str  # "index" or "mean"
    index: int = -1
    value: int = 0
    note: str = ""


def _resolve_step(ds: xr.Dataset, step: Any) -> _Step:
    steps = ds["step"].values
    described = f"logged steps {_fmt(steps[0])}..{_fmt(steps[-1])}" + (
        f" every {_fmt(steps[1] - steps[0])}"
        if len(steps) > 1 and np.all(np.diff(steps) == steps[1] - steps[0])
        else ""
    )
    text = str(step).strip().lower()
    if text == "last":
        return _Step("index", len(steps) - 1, int(steps[-1]))
    if text == "mean":
        return _Step("mean", note=f"mean over steps {_fmt(steps[0])}..{_fmt(steps[-1])}")
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"step={step!r} is not 'last', 'mean' or an integer step; {described}") from None
    if not number.is_integer():
        raise ValueError(f"step={step!r} is not an integer step; {described}")
    if number < steps[0] or number > steps[-1]:
        raise ValueError(f"step={int(number)} lies outside the {described}")
    index = int(np.argmin(np.abs(steps - number)))
    note = "" if steps[index] == number else f"nearest logged step to {int(number)}"
    return _Step("index", index, int(steps[index]), note)


@dataclass
class _Request:
    kind: str  # "heatmap", "line" or "trajectory"
    x: str | None
    y: str | None
    hue: str | None
    grid: list[str]
    sel: dict[str, Any]
    singles: dict[str, Any]  # unselected axes with one value: fixed at it
    averaged: list[str]
    config: dict = field(default_factory=dict)
    #: pipeline stores: {"var", "mode", "stage"} of the drawn per-task value (its theory overlay,
    #: `_stage_optimum`, replaces the two-mode ones, which read top-level fields a stage overrides)
    pipeline: dict | None = None

    def params(self) -> dict[str, Any]:
        """Parameter values that hold for the whole figure (None where averaged over)."""
        values = {k: v for k, v in self.config.items() if k != "grid"}
        values.update(self.singles)
        values.update({k: v for k, v in self.sel.items() if k != "seed"})
        for name in self.averaged:
            values[name] = None
        return values


def _resolve(ds: xr.Dataset, x, y, var: str, sel: Mapping[str, Any] | None) -> _Request:
    metrics = [name for name in ds.data_vars if "step" in ds[name].dims]
    if var not in metrics:
        raise ValueError(f"var={var!r} is not a variable of this store; allowed: {', '.join(metrics)}")
    grid = [d for d in ds[var].dims if d not in ("seed", "step")]
    selectable = [*grid, "seed"]
    chosen: dict[str, Any] = {}
    for name, value in (sel or {}).items():
        if name not in selectable:
            raise ValueError(f"sel field {name!r} is not a grid axis of this store; allowed: {', '.join(selectable)}")
        chosen[name] = _cast(ds, name, value)
    free = [d for d in grid if d not in chosen]
    multi = [d for d in free if ds.sizes[d] > 1]
    for axis, value in (("x", x), ("y", y)):
        if value is None:
            continue
        if value in chosen:
            raise ValueError(f"{axis}={value!r} is also fixed by sel; drop one of them")
        allowed = free + (["step"] if axis == "x" else [])
        if value == "step" and axis == "y":
            raise ValueError("y='step': put the step on the x axis (x='step') for a trajectory plot")
        if value not in allowed:
            raise ValueError(f"{axis}={value!r} is not a grid axis of this store; allowed: {', '.join(allowed)}")
    if x is not None and x == y:
        raise ValueError(f"x and y are both {x!r}; choose two different grid axes")

    hue = None
    if x == "step":
        kind, hue = "trajectory", (y if y is not None else next(iter(multi), None))
        y = None
    elif x is not None and y is not None:
        kind = "heatmap"
    elif x is not None:
        kind, hue = "line", next((d for d in multi if d != x), None)
    elif y is not None:
        others = [d for d in multi if d != y]
        if others:
            kind, x = "heatmap", others[0]
        else:
            kind, x, hue, y = "trajectory", "step", y, None
    elif len(multi) >= 2:
        kind, x, y = "heatmap", multi[0], multi[1]
    elif len(multi) == 1:
        kind, x = "line", multi[0]
    else:
        kind, x = "trajectory", "step"
    drawn = {x, y, hue}
    singles = {d: ds[d].values[0].item() for d in free if d not in drawn and ds.sizes[d] == 1}
    averaged = [d for d in free if d not in drawn and ds.sizes[d] > 1]
    return _Request(kind, x, y, hue, grid, chosen, singles, averaged, _config(ds))


# ---------------------------------------------------------------------------------------------
# data reduction


def _nanmean(da: xr.DataArray, dims) -> xr.DataArray:
    dims = [d for d in dims if d in da.dims]
    if not dims:
        return da
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return da.mean(dims, skipna=True)


def _selected(ds: xr.Dataset, name: str, req: _Request, steps: _Step | list[int] | None = None) -> xr.DataArray:
    """`name` with sel applied, one-value axes dropped, the step(s) picked (a _Step: that step or
    the mean over steps; a list: those step indices; None: all) and diverged runs masked (NaN).
    Only the selection is read from the store."""
    da = ds[name].sel(req.sel)
    diverged = ds["diverged"].sel(req.sel)
    if req.singles:
        da = da.isel({d: 0 for d in req.singles})
        diverged = diverged.isel({d: 0 for d in req.singles})
    if isinstance(steps, _Step) and steps.mode == "index":
        da = da.isel(step=steps.index)
    elif isinstance(steps, list):
        da = da.isel(step=steps)
    da = da.load().where(~diverged.load())
    if isinstance(steps, _Step) and steps.mode == "mean":
        da = _nanmean(da, ["step"])
    return da


def _interval_weight(ds: xr.Dataset, req: _Request, step: _Step, keep: list[str]) -> xr.DataArray | None:
    """Mean logged old weight over the logging interval that ends at the shown step (its two
    endpoints), over everything but `keep`; the beta of the starvation overlay (D6)."""
    if "old_weight" not in ds:
        return None
    if step.mode == "mean":
        weight = _selected(ds, "old_weight", req, step)
    else:
        indices = sorted({max(step.index - 1, 0), step.index})
        weight = _nanmean(_selected(ds, "old_weight", req, indices), ["step"])
    return _nanmean(weight, [d for d in weight.dims if d not in keep])


def _fallback_weight(req: _Request, value) -> float | None:
    """The mean logged old weight, or the configured beta(0) where none was logged."""
    value = None if value is None else float(value)
    if value is None or not np.isfinite(value):
        init = req.params().get("init_old_weight")  # None when averaged over a grid axis
        return None if init is None else float(init)
    return value


def _run_counts(ds: xr.Dataset, req: _Request) -> tuple[int, int, int]:
    diverged = ds["diverged"].sel(req.sel)
    completed = ds["completed"].sel(req.sel)
    if req.singles:
        diverged = diverged.isel({d: 0 for d in req.singles})
        completed = completed.isel({d: 0 for d in req.singles})
    total = int(diverged.size)
    return total, int(diverged.sum()), int(total - completed.sum())


# ---------------------------------------------------------------------------------------------
# axes helpers


def _scale(values: np.ndarray) -> str:
    """'log' for positive, geometrically spaced (or > 50x spread, irregular) numeric axes."""
    if not _is_numeric(values) or len(values) < 3 or np.any(values <= 0):
        return "linear"
    v = np.sort(values.astype(np.float64))
    steps = np.diff(v)
    if np.allclose(steps, steps[0], rtol=1e-3):
        return "linear"
    ratios = np.diff(np.log(v))
    if np.allclose(ratios, ratios[0], rtol=1e-3) or v[-1] / v[0] >= 50:
        return "log"
    return "linear"


def _edges(values: np.ndarray, scale: str) -> np.ndarray:
    v = values.astype(np.float64)
    t = np.log(v) if scale == "log" else v
    if len(t) == 1:
        half = 0.5 if scale == "log" else 0.5 * max(abs(t[0]), 1.0)
        e = np.array([t[0] - half, t[0] + half])
    else:
        mid = 0.5 * (t[1:] + t[:-1])
        e = np.concatenate([[t[0] - (mid[0] - t[0])], mid, [t[-1] + (t[-1] - mid[-1])]])
    return np.exp(e) if scale == "log" else e


def _fine(values: np.ndarray, scale: str, n: int = 200) -> np.ndarray:
    lo, hi = float(np.min(values)), float(np.max(values))
    return np.geomspace(lo, hi, n) if scale == "log" else np.linspace(lo, hi, n)


def _place(ax, axis: str, name: str, values: np.ndarray) -> tuple[np.ndarray, str]:
    """Positions of `values` along an axis (categorical -> 0..n-1 with tick labels) and its scale."""
    set_label = ax.set_xlabel if axis == "x" else ax.set_ylabel
    set_label(label(name))
    if not _is_numeric(values):
        positions = np.arange(len(values), dtype=np.float64)
        (ax.set_xticks if axis == "x" else ax.set_yticks)(positions, [_fmt(v) for v in values])
        return positions, "category"
    scale = _scale(values)
    if scale == "log":
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    if len(values) <= 8 or (scale == "log" and len(values) <= 12):  # a short grid: label every value
        (ax.set_xticks if axis == "x" else ax.set_yticks)(values.astype(np.float64), [_fmt(v) for v in values])
        (ax.xaxis if axis == "x" else ax.yaxis).set_minor_formatter(_null_formatter())
    return values.astype(np.float64), scale


def _null_formatter():
    from matplotlib.ticker import NullFormatter

    return NullFormatter()


def _halo(width: float = 3.2):
    """A white outline: black dashed theory lines stay visible on dark and light cells alike."""
    from matplotlib import patheffects

    return [patheffects.withStroke(linewidth=width, foreground="white")]


def _theory_handle(text: str):
    from matplotlib.lines import Line2D

    return Line2D([], [], color="black", linestyle="--", linewidth=1.4, path_effects=_halo(), label=text)


def _colours(n: int):
    import matplotlib

    cmap = matplotlib.colormaps[_LINE_COLOURS]
    return [cmap(v) for v in (np.linspace(0.0, 0.85, n) if n > 1 else [0.35])]


# ---------------------------------------------------------------------------------------------
# the three views


def _title(req: _Request, var: str, step: _Step, ds: xr.Dataset, extra: list[str]) -> str:
    if req.kind == "trajectory":
        head = f"{label(var)} vs step"
    elif step.mode == "mean":
        head = f"{label(var)}, {step.note}"
    else:
        head = f"{label(var)} at step {step.value}" + (f" ({step.note})" if step.note else "")
    fixed = dict(req.sel)
    fixed.update(req.singles)
    for name in ("objective", "estimator"):
        if name == "objective" and req.config.get("stages"):
            continue  # a pipeline's stages have their own objectives (the stage labels say which)
        if name not in req.grid and name in req.config:
            fixed.setdefault(name, req.config[name])
    parts = [", ".join(f"{k}={_fmt(v)}" for k, v in fixed.items())] if fixed else []
    n_seeds = ds.sizes["seed"] if "seed" not in req.sel else 1
    mean_over = ([f"{n_seeds} seeds"] if n_seeds > 1 else []) + [f"{d} ({ds.sizes[d]} values)" for d in req.averaged]
    if mean_over:
        parts.append("mean over " + ", ".join(mean_over))
    total, diverged, missing = _run_counts(ds, req)
    if diverged:
        parts.append(f"{diverged}/{total} runs diverged (masked)")
    if missing:
        parts.append(f"{missing}/{total} runs not computed yet")
    parts += extra
    body = textwrap.fill("; ".join(parts), width=78) if parts else ""
    return head + ("\n" + body if body else "")


def _heatmap(fig, ax, ds: xr.Dataset, req: _Request, var: str, step: _Step) -> list:
    import matplotlib

    da = _selected(ds, var, req, step)
    da = _nanmean(da, [*req.averaged, "seed"])
    for name in (req.x, req.y):
        if _is_numeric(ds[name].values):
            da = da.sortby(name)
    da = da.transpose(req.y, req.x)
    values = da.values.astype(np.float64)
    if not np.isfinite(values).any():
        raise ValueError(
            f"{var} has no finite value at the chosen step for this selection "
            f"(step {step.value}; diverged or not computed yet?)"
        )
    xv, yv = da[req.x].values, da[req.y].values
    xpos, xscale = _place(ax, "x", req.x, xv)
    ypos, yscale = _place(ax, "y", req.y, yv)
    xe = np.arange(len(xv) + 1) - 0.5 if xscale == "category" else _edges(xpos, xscale)
    ye = np.arange(len(yv) + 1) - 0.5 if yscale == "category" else _edges(ypos, yscale)
    vmin, vmax = float(np.nanmin(values)), float(np.nanmax(values))
    if vmax - vmin < 1e-12:
        pad = max(abs(vmin) * 0.05, 1e-6)
        vmin, vmax = vmin - pad, vmax + pad
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#cfcfcf")
    mesh = ax.pcolormesh(xe, ye, np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax, shading="flat")
    ax.set_xlim(xe[0], xe[-1])
    ax.set_ylim(ye[0], ye[-1])
    cbar = fig.colorbar(mesh, ax=ax)
    cbar.set_label(label(var))

    # theory: contour lines of the closed form on a fine grid of the two axes
    handles = []
    if xscale == "category" or yscale == "category" or len(xv) < 2 or len(yv) < 2:
        return handles
    params = req.params()
    beta = None
    if var == "starved_fraction":
        weight = _interval_weight(ds, req, step, keep=[])
        beta = _fallback_weight(req, None if weight is None else weight.values)
    fx, fy = _fine(xpos, xscale), _fine(ypos, yscale)
    gx, gy = np.meshgrid(fx, fy)
    params = {**params, req.x: gx, req.y: gy}
    z = _overlay(ds, var, params, req, beta)
    if z is None:
        return handles
    z = np.broadcast_to(z, gx.shape)
    lo, hi = max(float(z.min()), vmin), min(float(z.max()), vmax)
    if hi - lo <= 1e-12:
        return handles
    margin = 0.02 * (hi - lo)  # no level that only touches a corner of the grid
    if var == "starved_fraction":  # probabilities spanning decades: a relative margin at the bottom
        levels = [v for v in _STARVATION_LEVELS if 1.05 * lo < v < hi - margin]
    else:
        levels = [v for v in cbar.get_ticks() if lo + margin < v < hi - margin]
    if not levels:
        return handles
    cs = ax.contour(gx, gy, z, levels=levels, colors="black", linestyles="--", linewidths=1.4)
    cs.set_path_effects(_halo())
    texts = ax.clabel(cs, fmt=lambda v: f"{v:g}", fontsize=8, colors="black")
    for text in texts:
        text.set_path_effects(_halo(2.5))
    cbar.add_lines(cs)
    handles.append(_theory_handle(_overlay_text(var, params, beta, req)))
    return handles


def _band(ax, xs, da: xr.DataArray, colour, text: str | None, scale_cat: bool):
    """Mean over seeds as a line, min..max over seeds as a band (when there are several)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = da.mean("seed", skipna=True).values if "seed" in da.dims else da.values
        many = "seed" in da.dims and da.sizes["seed"] > 1
        lo = da.min("seed", skipna=True).values if many else None
        hi = da.max("seed", skipna=True).values if many else None
    marker = "o" if (scale_cat or len(xs) <= 25) else None
    (line,) = ax.plot(xs, mean, color=colour, marker=marker, markersize=3.5, linewidth=1.8, label=text)
    if many:
        ax.fill_between(xs, lo, hi, color=colour, alpha=0.2, linewidth=0)
    return line


def _lines(fig, ax, ds: xr.Dataset, req: _Request, var: str, step: _Step) -> list:
    """Line plot vs a grid axis (kind 'line') or vs step (kind 'trajectory')."""
    data = _selected(ds, var, req, step if req.kind == "line" else None)
    data = _nanmean(data, req.averaged)
    if not np.isfinite(data.values).any():
        raise ValueError(f"{var} has no finite value for this selection (diverged or not computed yet?)")
    xname = req.x
    xv = ds["step"].values if xname == "step" else data[xname].values
    if xname != "step" and _is_numeric(xv):
        data = data.sortby(xname)
        xv = data[xname].values
    xpos, xscale = _place(ax, "x", xname, xv)
    ax.set_ylabel(label(var))
    hue_values = list(data[req.hue].values) if req.hue else [None]
    colours = _colours(len(hue_values))
    params = req.params()
    weight = None
    if var == "starved_fraction":
        if req.kind == "trajectory":
            w = _selected(ds, "old_weight", req)
            w = _nanmean(w, [d for d in w.dims if d not in ("step", req.hue)])
            interval = 0.5 * (w + w.shift(step=1))  # each interval's mean beta (its endpoints)
            weight = interval
        else:
            weight = _interval_weight(ds, req, step, keep=[req.hue] if req.hue else [])
    theory_drawn, beta_shown = False, None
    for value, colour in zip(hue_values, colours):
        line_da = data if value is None else data.sel({req.hue: value})
        text = None if value is None else _fmt(value)
        _band(ax, xpos, line_da, colour, text, xscale == "category")
        if xscale == "category":
            continue
        p = dict(params)
        if value is not None:
            p[req.hue] = value
        beta = None
        if weight is not None:
            w = weight if value is None else weight.sel({req.hue: value})
            if req.kind == "trajectory":
                beta = w.values.astype(np.float64)
            else:
                beta = _fallback_weight(req, w.values)
                beta_shown = beta
        if req.kind == "trajectory":
            tx = xpos
        else:
            tx = _fine(xpos, xscale)
            p[xname] = tx
        z = _overlay(ds, var, p, req, beta)
        if z is None:
            continue
        z = np.broadcast_to(z, np.shape(tx))
        ax.plot(tx, z, color=colour, linestyle="--", linewidth=1.4)
        theory_drawn = True
        theory_params = p
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    extra = []
    if theory_drawn:
        from matplotlib.lines import Line2D

        text = _overlay_text(var, theory_params, beta_shown, req).replace("theory (dashed): ", "theory: ")
        extra.append(Line2D([], [], color="0.3", linestyle="--", linewidth=1.4, label=text))
    if handles:
        fig.legend(
            handles,
            labels,
            loc="outside right upper",
            title=label(req.hue),
            fontsize=8,
            title_fontsize=9,
            ncols=max(1, math.ceil(len(handles) / 14)),
        )
    if data.sizes.get("seed", 1) > 1:
        extra.append(_band_handle(data.sizes["seed"]))
    return extra


def _band_handle(n: int):
    from matplotlib.patches import Patch

    return Patch(facecolor="0.5", alpha=0.3, label=f"band: min..max over {n} seeds (line: mean)")


# ---------------------------------------------------------------------------------------------


def plot_store(
    ds: xr.Dataset,
    x: str | None = None,
    y: str | None = None,
    var: str = "old_weight",
    step: str | int = "last",
    sel: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    mode: int | str | None = None,
    stage: int | str | None = None,
) -> Figure:
    """Draw `var` from a store; return the Figure, and save it to `out` when given (.png at 150 dpi, .pdf or .svg).

    Which view (docs/science/studies.md section 4):

    * x and y two grid axes -> phase diagram: heatmap of `var` at `step` (PD1, PD3, PD4);
    * x a grid axis, no y -> `var` at `step` against x, one line per value of the first other
      grid axis with more than one value;
    * x = 'step' -> trajectories: `var` against the logged step, one line per value of y (or of
      the first grid axis with more than one value) (PD6);
    * nothing given -> a heatmap over the first two grid axes with more than one value; with only
      one such axis, a line plot against it; with none, a trajectory.

    Args:
        ds: the Dataset of `store.open_store` (dims grid..., seed, step).
        x, y: grid fields (config field names); x may be 'step'.
        var: a data variable with a step axis (metrics.METRIC_NAMES).
        step: 'last', an integer step (the nearest logged step is used and the title says so) or
            'mean' (the mean over the logged steps).
        sel: field -> value fixing grid axes (strings are cast to the coordinate's dtype; seed
            may be selected too). Grid axes neither drawn nor selected are averaged, and seeds
            always are, except on line plots, which show the seed range as a band.
        out: the image file to write (parent folders are created); None writes nothing (see
            `default_out` for the CLI's default file).
        mode: pipeline stores: the mode k of a per-mode variable (dims ..., step, mode), needed
            for those (`mode_weight`, `mode_drift`, ...) and refused for the others.
        stage: pipeline stores: draw the value at the last logged step of stage s (the store's
            `stage` coordinate) instead of `step` (which must then stay 'last').

    Runs flagged `diverged` are masked before averaging and counted in the title. Where docs/science/claims.md
    has a closed form for `var` on the drawn axes, it is overlaid dashed (`theory_overlay`:
    beta = lambda under FKL, T2; ((1 - lambda)(1 - beta))^B for starvation, D6/T6).

    Returns:
        The matplotlib Figure (a `matplotlib.figure.Figure`, not registered with pyplot).

    Raises:
        ValueError: one line naming an unknown variable, field, step or `sel` value and the
            allowed ones, or an unsupported `out` file type.
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no display (Agg canvas)

    if out is not None:
        out = Path(out)
        suffix = out.suffix.lower()
        if suffix not in _SUFFIXES:
            raise ValueError(
                f"out={str(out)!r}: unsupported file type {suffix or '(none)'!r}; use .png or .pdf (or .svg)"
            )
    ds, var = _pick_mode(ds, var, mode)
    if stage is not None:
        if str(step).strip().lower() != "last":
            raise ValueError(f"step={step!r} and stage={stage!r}: give one of them (stage picks its last logged step)")
        end, index = stage_end_step(ds, stage)
        step_info = _Step("index", index, end, note=f"end of stage {int(stage)}: {_stage_text(ds, int(stage))}")
    req = _resolve(ds, x, y, var, sel)
    if stage is None:
        step_info = _resolve_step(ds, step)
    if "stage" in ds.coords:
        picked = _MODE_PICKED.fullmatch(var)
        base, k = (picked.group(1), int(picked.group(2))) if picked else (var, 0 if var == "old_weight" else None)
        req.pipeline = {"var": base, "mode": k, "stage": None if stage is None else int(stage)}

    wide = req.kind != "heatmap" and req.hue is not None
    fig = Figure(figsize=(8.2 if wide else 6.8, 5.2), layout="constrained")
    ax = fig.add_subplot()
    if req.kind == "heatmap":
        handles = _heatmap(fig, ax, ds, req, var, step_info)
    else:
        handles = _lines(fig, ax, ds, req, var, step_info)
    notes = []
    if req.kind == "trajectory" and step_info.mode == "index" and str(step).strip().lower() != "last":
        notes.append("step option ignored for trajectories")
    ax.set_title(_title(req, var, step_info, ds, notes), fontsize=10)
    if handles:
        fig.legend(handles=handles, loc="outside lower center", fontsize=8, frameon=False, handlelength=3.5)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=150 if suffix == ".png" else None)
    return fig


# ---------------------------------------------------------------------------------------------
# pipelines: per-mode variables, stages, stacked mode weights


def _pick_mode(ds: xr.Dataset, var: str, mode: int | str | None) -> tuple[xr.Dataset, str]:
    """(ds, var) with a per-mode variable's mode picked: the variable `<var>[<k>]` (its label
    names the mode) added to a shallow copy of `ds`; unchanged for a variable without `mode`."""
    has_mode = var in ds.data_vars and "mode" in ds[var].dims
    if not has_mode:
        if mode is not None:
            per_mode = [n for n in ds.data_vars if "mode" in ds[n].dims]
            raise ValueError(
                f"mode={mode!r}: {var!r} has no mode axis"
                + (f"; per-mode variables: {', '.join(per_mode)}" if per_mode else " (not a pipeline store)")
            )
        return ds, var
    modes = ds["mode"].values
    if mode is None:
        raise ValueError(f"var={var!r} is per mode: pick one with mode=k (--mode K), k in {_allowed(modes)}")
    try:
        k = int(str(mode).strip())
    except ValueError:
        raise ValueError(f"mode={mode!r} is not a mode of this store; allowed: {_allowed(modes)}") from None
    if k not in modes.tolist():
        raise ValueError(f"mode={mode!r} is not a mode of this store; allowed: {_allowed(modes)}")
    name = f"{var}[{k}]"
    picked = ds[var].sel(mode=k, drop=True)
    picked.attrs = dict(ds[var].attrs)
    return ds.assign({name: picked}), name


def pipeline_schedule(ds: xr.Dataset) -> list[dict]:
    """The store's schedule (root attribute `stages`, a list of per-stage dicts; a JSON string in
    a netCDF export); [] for a store that is not a pipeline."""
    import json

    stages = ds.attrs.get("stages")
    if isinstance(stages, str):
        try:
            stages = json.loads(stages)
        except ValueError:
            return []
    return [dict(s) for s in stages] if isinstance(stages, (list, tuple)) else []


def stage_end_step(ds: xr.Dataset, stage: int | str) -> tuple[int, int]:
    """(step, index along `step`) of the last logged step of stage `stage` (the store's `stage`
    coordinate). Raises ValueError for a store without stages or an unknown stage."""
    if "stage" not in ds.coords:
        raise ValueError(f"stage={stage!r}: this store has no stages (not a pipeline sweep)")
    stages = ds["stage"].values
    known = sorted(set(stages.tolist()))
    try:
        s = int(str(stage).strip())
    except ValueError:
        raise ValueError(f"stage={stage!r} is not a stage of this store; allowed: {_allowed(known)}") from None
    where = np.flatnonzero(stages == s)
    if len(where) == 0:
        raise ValueError(f"stage={stage!r} is not a stage of this store; allowed: {_allowed(known)}")
    index = int(where[-1])
    return int(ds["step"].values[index]), index


def _stage_value(ds: xr.Dataset, index: int, name: str, sel: Mapping[str, Any] | None = None) -> Any:
    """A traced field's value in stage `index`: the selected grid value of `stages.<i>.<name>`,
    the stage's own value in the config, else the top-level one (None when a grid axis varies it)."""
    from .pipeline.schedule import traced_name

    key = traced_name(index, name)
    if sel and key in sel:
        return sel[key]
    if key in ds.dims:
        return ds[key].values[0].item() if ds.sizes[key] == 1 else None
    config = _config(ds)
    stages = config.get("stages") or []
    if index < len(stages) and isinstance(stages[index], dict) and name in stages[index]:
        return stages[index][name]
    if sel and name in sel:
        return sel[name]
    if name in ds.dims:
        return ds[name].values[0].item() if ds.sizes[name] == 1 else None
    return config.get(name, fields.get(name).default)


def _stage_text(ds: xr.Dataset, index: int, sel: Mapping[str, Any] | None = None) -> str:
    """A stage's label: "FKL task 1", "FKL task 2, λ=0.2", "RKL → p*", "RKL → seen"."""
    rows = pipeline_schedule(ds)
    row = rows[index] if index < len(rows) else {"objective": "?", "task": None}
    objective = str(row.get("objective", "?"))
    text = objective.upper()
    if row.get("task") is not None:
        text += f" task {row['task']}"
    if objective == "rkl":
        text += " → p*" if row.get("target", "full") == "full" else " → seen"
    if objective == "fkl":
        replay = _stage_value(ds, index, "replay_ratio", sel)
        if replay is None:
            text += ", λ swept"
        elif float(replay) > 0:
            text += f", λ={_fmt(float(replay))}"
    return text


def _fkl_optimum(ds: xr.Dataset, row: dict, sel: Mapping[str, Any] | None, k: int) -> np.ndarray | None:
    """The P1 population optimum of the K weights after an FKL stage (theory.fkl_stage_weights),
    or None when it does not apply (another objective, frozen weights, a swept replay ratio)."""
    from . import theory
    from .pipeline.schedule import build, freeze

    if row.get("objective") != "fkl" or row.get("task") is None:
        return None
    if _stage_value(ds, int(row["index"]), "train_weight", sel) is False:
        return None
    replay = _stage_value(ds, int(row["index"]), "replay_ratio", sel)
    stages = _config(ds).get("stages")
    if replay is None or not stages:
        return None
    built = build(freeze(stages))[int(row["index"])]
    return theory.fkl_stage_weights(k, int(row["task"]), float(replay), built.earlier, built.replay_shares)


def _stage_optimum(ds: xr.Dataset, params: Mapping[str, Any], req: _Request) -> np.ndarray | None:
    """P1 overlay of a pipeline view: w_k at the end of an FKL stage s (mode_weight[k], or
    old_weight = w_0, drawn with `stage=s`) is the population optimum theory.fkl_stage_weights
    (K, task, lambda_s, earlier, shares)[k], over the arrays of lambda_s in `params` (the drawn or
    fixed `stages.<s>.replay_ratio`, or `replay_ratio` when the stage inherits it). None elsewhere."""
    from . import theory
    from .pipeline.schedule import build, freeze, traced_name

    info = req.pipeline or {}
    k, s = info.get("mode"), info.get("stage")
    if info.get("var") not in ("mode_weight", "old_weight") or k is None or s is None:
        return None
    rows, stages = pipeline_schedule(ds), _config(ds).get("stages")
    if not stages or s >= len(rows) or rows[s].get("objective") != "fkl" or rows[s].get("task") is None:
        return None
    if _stage_value(ds, s, "train_weight", req.sel) is False:
        return None
    key = traced_name(s, "replay_ratio")
    if key in req.grid:
        lam = params.get(key)
    elif "replay_ratio" in req.grid and "replay_ratio" not in stages[s]:
        lam = params.get("replay_ratio")
    else:
        lam = _stage_value(ds, s, "replay_ratio", req.sel)
    if lam is None:  # averaged over
        return None
    built = build(freeze(stages))[s]
    n_modes = int(ds.sizes["mode"])
    lam = np.asarray(lam, dtype=np.float64)
    values, inverse = np.unique(lam, return_inverse=True)
    optimum = [
        theory.fkl_stage_weights(n_modes, built.task, float(v), built.earlier, built.replay_shares)[k] for v in values
    ]
    return np.asarray(optimum, dtype=np.float64)[inverse].reshape(lam.shape)


def plot_mode_weights(
    ds: xr.Dataset,
    sel: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    var: str = "mode_weight",
) -> Figure:
    """The K mode weights w_k of one configuration of a pipeline store as stacked areas over the
    logged steps (mode 0 at the bottom), a vertical line at each stage boundary and the stages'
    labels (objective, task, replay ratio) on top; dashed, the cumulative levels w_0 + ... + w_j of
    each FKL stage's population optimum (P1: w_task = 1 - λ, the earlier tasks λ share_j), drawn
    over that stage's span. Returns the Figure and writes it to `out` when given.

    Args:
        ds: a pipeline store (dims grid..., seed, step, mode).
        sel: field -> value picking the configuration: every grid axis with more than one value
            must be fixed (seeds are averaged unless `seed` is selected; runs flagged diverged
            are masked).
        out: image file (.png, .pdf or .svg); None writes nothing.
        var: the per-mode variable to stack (`mode_weight`: the weights sum to 1).

    Raises:
        ValueError: one line naming a store without modes, an unknown `sel` field or value, or a
            grid axis left unselected (with its values).
    """
    from matplotlib.figure import Figure

    if var not in ds.data_vars or "mode" not in ds[var].dims:
        per_mode = [n for n in ds.data_vars if "mode" in ds[n].dims]
        raise ValueError(
            f"var={var!r} has no mode axis"
            + (f"; per-mode variables: {', '.join(per_mode)}" if per_mode else ": this is not a pipeline store")
        )
    if out is not None:
        out = Path(out)
        if out.suffix.lower() not in _SUFFIXES:
            raise ValueError(
                f"out={str(out)!r}: unsupported file type {out.suffix.lower() or '(none)'!r}; use .png or .pdf"
            )
    grid = [str(d) for d in ds[var].dims if d not in ("seed", "step", "mode")]
    chosen: dict[str, Any] = {}
    for name, value in (sel or {}).items():
        if name not in (*grid, "seed"):
            raise ValueError(
                f"sel field {name!r} is not a grid axis of this store; allowed: {', '.join([*grid, 'seed'])}"
            )
        chosen[name] = _cast(ds, name, value)
    open_axes = [d for d in grid if d not in chosen and ds.sizes[d] > 1]
    if open_axes:
        raise ValueError(
            "plot_mode_weights draws one configuration: fix "
            + "; ".join(f"{d} (sel {d}=one of {_allowed(ds[d].values)})" for d in open_axes)
        )
    da = ds[var].sel(chosen)
    diverged = ds["diverged"].sel(chosen)
    singles = {d: 0 for d in grid if d not in chosen}
    da, diverged = da.isel(singles), diverged.isel(singles)
    da = _nanmean(da.load().where(~diverged.load()), ["seed"])
    steps = ds["step"].values.astype(np.float64)
    modes = ds["mode"].values
    values = da.transpose("step", "mode").values.astype(np.float64)
    if not np.isfinite(values).any():
        raise ValueError(f"{var} has no finite value for this configuration (diverged or not computed yet?)")
    import matplotlib

    colours = matplotlib.colormaps["tab10"].colors
    fig = Figure(figsize=(8.2, 5.0), layout="constrained")
    ax = fig.add_subplot()
    names = [f"mode {k} ({'prior' if k == 0 else f'task {k}'})" for k in modes]
    ax.stackplot(
        steps, values.T, labels=names, colors=[colours[i % len(colours)] for i in range(len(modes))], alpha=0.85
    )
    ax.set_xlim(steps[0], steps[-1])
    ax.set_ylim(0.0, max(1.0, float(np.nanmax(np.nansum(values, axis=1)))))
    ax.set_xlabel(label("step"))
    ax.set_ylabel(label(var) + " (stacked)")
    rows = pipeline_schedule(ds)
    from matplotlib.transforms import blended_transform_factory

    top = blended_transform_factory(ax.transData, ax.transAxes)
    theory_drawn = False
    for row in rows:
        lo, hi = float(row["first_step"]), float(row["end_step"])
        if hi < steps[-1]:
            ax.axvline(hi, color="black", linewidth=1.2)
        ax.text(
            0.5 * (lo + hi),
            1.01,
            f"{int(row['index'])}: {_stage_text(ds, int(row['index']), chosen)}",
            transform=top,
            ha="center",
            va="bottom",
            fontsize=8,
        )
        optimum = _fkl_optimum(ds, row, chosen, len(modes))
        if optimum is not None:
            for level in np.cumsum(optimum)[:-1]:
                if not 1e-9 < level < 1.0 - 1e-9:
                    continue  # a level on the frame (no replay: 0 or 1) draws nothing useful
                ax.plot([lo, hi], [level, level], color="black", linestyle="--", linewidth=1.2, path_effects=_halo())
            theory_drawn = True
    fixed = {**chosen, **{d: ds[d].values[0].item() for d in singles}}
    parts = [", ".join(f"{k}={_fmt(v)}" for k, v in fixed.items())] if fixed else []
    n_seeds = ds.sizes["seed"] if "seed" not in chosen else 1
    if n_seeds > 1:
        parts.append(f"mean over {n_seeds} seeds")
    if int(diverged.sum()):
        parts.append(f"{int(diverged.sum())}/{int(diverged.size)} runs diverged (masked)")
    title = f"{label(var)} by mode over the stages"
    if parts:
        title += "\n" + textwrap.fill("; ".join(parts), width=90)
    ax.set_title(title, fontsize=10, pad=16)
    handles, labels_ = ax.get_legend_handles_labels()
    if theory_drawn:
        handles.append(_theory_handle("FKL stage optimum (P1), cumulative"))
        labels_.append("FKL stage optimum (P1), cumulative")
    fig.legend(handles, labels_, loc="outside right upper", fontsize=8, title="mode (task)", title_fontsize=9)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=150 if out.suffix.lower() == ".png" else None)
    return fig


def default_out(ds: xr.Dataset, var: str = "old_weight", suffix: str = ".png") -> Path:
    """The default image file of `var`: `<store>.<var><suffix>` beside the store `ds` was opened
    from (`ds.encoding["source"]`), else `<name>.<var><suffix>` in the working directory, with the
    config's `name` reduced to a plain file name (letters, digits, '.', '_', '-'; no folder part,
    no leading dot), so an unvalidated `name` cannot point outside that folder."""
    source = ds.encoding.get("source")
    if source:
        store = Path(source)
        return store.with_name(f"{store.name}.{_plain(var)}{suffix}")
    return Path(f"{_plain(str(ds.attrs.get('name') or 'sweep'))}.{_plain(var)}{suffix}")


def _plain(text: str) -> str:
    plain = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")[:100]
    return plain or "sweep"
