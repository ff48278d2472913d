"""Figure helpers: matplotlib's object API only (no pyplot state, so figures can be drawn while
other studies run), colour-blind-safe palettes, PNG + PDF output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure

#: Okabe & Ito (2008) colour-blind-safe qualitative palette.
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
#: Sequential and diverging colour maps readable with the common colour-vision deficiencies.
SEQUENTIAL = "cividis"
DIVERGING = "PuOr_r"

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 4.6, height: float = 3.6, **kwargs):
    """A Figure with a grid of axes (constrained layout); returns (fig, axes array)."""
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def save(fig: Figure, stem: Path) -> list[Path]:
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix, kwargs in ((".png", dict(dpi=150)), (".pdf", {})):
        path = stem.with_suffix(suffix)
        fig.savefig(path, **kwargs)
        paths.append(path)
    return paths


def color(i: int) -> str:
    return OKABE_ITO[i % len(OKABE_ITO)]


def heatmap(
    ax,
    values,
    x_labels,
    y_labels,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    cbar_label: str,
    cmap: str = SEQUENTIAL,
    center: float | None = None,
    vmin=None,
    vmax=None,
    fmt: str = "{:.3g}",
    annotate: bool = True,
    mask=None,
):
    """Cell heatmap over categorical axes (rows = y, columns = x), annotated with the values.

    `center` uses a diverging norm centred there; masked cells are hatched grey."""
    values = np.asarray(values, dtype=float)
    shown = np.ma.masked_invalid(values if mask is None else np.where(mask, np.nan, values))
    if center is not None:
        span = np.nanmax(np.abs(shown.filled(np.nan) - center)) if shown.count() else 1.0
        span = span if np.isfinite(span) and span > 0 else 1.0
        norm = TwoSlopeNorm(
            vcenter=center, vmin=center - span if vmin is None else vmin, vmax=center + span if vmax is None else vmax
        )
    else:
        norm = Normalize(
            vmin=np.nanmin(shown) if vmin is None else vmin, vmax=np.nanmax(shown) if vmax is None else vmax
        )
    ax.set_facecolor("#d9d9d9")
    image = ax.imshow(shown, origin="lower", aspect="auto", cmap=cmap, norm=norm)
    ax.set_xticks(range(len(x_labels)), [str(v) for v in x_labels])
    ax.set_yticks(range(len(y_labels)), [str(v) for v in y_labels])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    cbar = ax.figure.colorbar(image, ax=ax, shrink=0.9)
    cbar.set_label(cbar_label)
    if annotate and values.size <= 120:
        for (i, j), v in np.ndenumerate(values):
            if not np.isfinite(v):
                continue
            rgba = image.cmap(image.norm(v))
            luminance = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
            ax.text(
                j, i, fmt.format(v), ha="center", va="center", fontsize=7, color="black" if luminance > 0.5 else "white"
            )
    return image


def label_panel(ax, text: str, loc: str = "upper left") -> None:
    """A small boxed annotation in a corner of the axes ("upper left", "lower right", ...)."""
    vert, horiz = loc.split()
    x, ha = (0.02, "left") if horiz == "left" else (0.98, "right")
    y, va = (0.98, "top") if vert == "upper" else (0.02, "bottom")
    ax.text(
        x,
        y,
        text,
        transform=ax.transAxes,
        ha=ha,
        va=va,
        fontsize=8,
        bbox=dict(boxstyle="round,pad=0.25", fc="white", ec="0.7", alpha=0.85),
    )
