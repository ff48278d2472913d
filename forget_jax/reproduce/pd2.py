"""PD2 (docs/science/studies.md section 4; docs/science/claims.md T4): reverse-KL drift of the old mean vs separation.

ln delta_max against Delta_min^2, where Delta_min is the smallest distance between the old mode
and a new-component mean along the trajectory (m_n(0) = D - 1: Delta_min = D - 1; m_n(0) = D + 1:
Delta_min = D), with the fitted slope over the largest separations and the -1/8 reference
(BC = exp(-Delta^2 / 8)); and the ratios delta_max / exp(-Delta_min^2 / 8) of the T4 table.
"""

from __future__ import annotations

import numpy as np

from .. import theory
from .figures import color, label_panel, new_figure
from .fitting import linear_fit
from .framework import Context, base_config, final, fmt

NAME = "pd2"
TITLE = "RKL old-mean drift vs separation (T4)"
COST = 1.0
CLAIMS = (
    "pd2.t4_table",
    "pd2.ratio_window",
    "pd2.slope_below",
    "pd2.slope_above",
    "pd2.final_drift",
)

#: docs/science/claims.md T4 calibration table: delta_max for D = 3..8 with m_n(0) = D - 1 and D + 1 [N].
T4_D = np.array([3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
T4_TABLE = {
    -1.0: np.array([1.10e-1, 7.17e-2, 3.20e-2, 1.08e-2, 2.82e-3, 5.67e-4]),
    1.0: np.array([9.97e-2, 4.88e-2, 1.78e-2, 5.02e-3, 1.09e-3, 1.83e-4]),
}
RATIO_WINDOW = (0.15, 0.6)
SLOPE_FROM = 6.0  # "largest D values": D >= 6
SLOPE_TOL = 0.1  # relative


def analyze(stores, ctx: Context):
    ds = stores["pd2"]
    cfg = base_config(ds)
    D = ds["separation"].values
    offsets = ds["init_new_offset"].values
    dmax = final(ds.isel(seed=0), "old_drift_max")  # (offset, D)
    dfin = final(ds.isel(seed=0), "old_drift")
    claims = []

    # the T4 table itself
    rel = []
    for off, ref in T4_TABLE.items():
        i = int(np.argmin(np.abs(offsets - off)))
        for d, r in zip(T4_D, ref):
            j = np.nonzero(np.isclose(D, d))[0]
            if j.size:
                rel.append(abs(dmax[i, j[0]] / r - 1.0))
    rel = np.asarray(rel)
    claims.append(
        ctx.claim(
            "t4_table",
            "The simulated sup drifts reproduce docs/science/claims.md T4's calibration table (D = 3..8, m_n(0) = D -/+ 1).",
            "T4 table [N]",
            "delta_max as tabulated (12 values)",
            f"max relative deviation {fmt(rel.max()) if rel.size else 'n/a'} over {rel.size} values",
            "<= 2%",
            rel.size == 12 and rel.max() <= 0.02,
            note="Table values carry 3 significant digits; the simulation runs in float32.",
            relative_deviation=rel,
        )
    )

    # ratio window
    dmin = np.minimum(D[None, :], D[None, :] + offsets[:, None])
    envelope = np.asarray(theory.rkl_drift_envelope(dmin))
    ratio = dmax / envelope
    in_range = (D >= 3) & (D <= 8)
    r = ratio[:, in_range]
    claims.append(
        ctx.claim(
            "ratio_window",
            "delta_max / exp(-Delta_min^2 / 8) stays within the T4 band for D in [3, 8] (both initialisations).",
            "T4, section 6 item 7",
            f"ratio in [{RATIO_WINDOW[0]}, {RATIO_WINDOW[1]}]",
            f"ratios in [{fmt(r.min())}, {fmt(r.max())}]",
            "inside the band",
            (r.min() >= RATIO_WINDOW[0]) and (r.max() <= RATIO_WINDOW[1]),
            ratio_min=float(r.min()),
            ratio_max=float(r.max()),
        )
    )

    # slopes of ln delta_max against Delta_min^2 over the largest separations
    fits = {}
    for off, key, label in (
        (-1.0, "slope_below", "m_n(0) = D - 1, against (D - 1)^2"),
        (1.0, "slope_above", "m_n(0) = D + 1, against D^2"),
    ):
        i = int(np.argmin(np.abs(offsets - off)))
        sel = D >= SLOPE_FROM
        fit = linear_fit(dmin[i, sel] ** 2, np.log(dmax[i, sel]))
        fits[off] = (fit, sel)
        dev = abs(fit.slope / (-1 / 8) - 1)
        claims.append(
            ctx.claim(
                key,
                f"Drift decays like the Bhattacharyya coefficient: slope of ln delta_max vs Delta_min^2 ({label}), D >= {SLOPE_FROM:g}.",
                "T4, PD2",
                "-1/8 = -0.125",
                f"{fmt(fit.slope, 4)} (95% CI [{fmt(fit.slope_low, 4)}, {fmt(fit.slope_high, 4)}], {fit.n} points)",
                f"within {SLOPE_TOL:.0%} of -1/8",
                dev <= SLOPE_TOL,
                note=(
                    "T4 bounds the drift by C(Delta) BC with a polynomial C(Delta); the ratio column still "
                    "changes with D, so a finite-D slope is biased by d ln C / d Delta^2 and tends to -1/8 only "
                    "as D grows. The tolerance allows for that bias; the CI is the least-squares CI of a "
                    "deterministic curve (it measures curvature, not noise)."
                ),
                slope=fit.slope,
                ci=(fit.slope_low, fit.slope_high),
                relative_deviation=dev,
            )
        )

    # final drift
    fd = dfin[:, D >= 2]
    claims.append(
        ctx.claim(
            "final_drift",
            "The old mean returns to the truth: final drift for D >= 2.",
            "T4",
            "delta(infinity) < 1e-3",
            f"max delta_T = {fmt(fd.max())}",
            "< 1e-3",
            fd.max() < 1e-3,
            note="The float32 floor is ~1e-6 (docs/science/claims.md quotes ~1e-15 in float64).",
            max_final_drift=float(fd.max()),
        )
    )

    # figures
    fig, axes = new_figure(2, 1, width=5.0, height=4.0)
    ax = axes[0, 0]
    for k, (off, name) in enumerate(
        ((-1.0, r"$m_n(0) = D - 1$, $\Delta_{\min} = D - 1$"), (1.0, r"$m_n(0) = D + 1$, $\Delta_{\min} = D$"))
    ):
        i = int(np.argmin(np.abs(offsets - off)))
        x = dmin[i] ** 2
        ax.plot(x, np.log(dmax[i]), "o", color=color(k), ms=4, label=name)
        fit, sel = fits[off]
        xs = np.linspace(x[sel].min(), x[sel].max(), 50)
        ax.plot(
            xs,
            fit.intercept + fit.slope * xs,
            "-",
            color=color(k),
            lw=1.5,
            label=f"fit (D ≥ {SLOPE_FROM:g}): slope {fit.slope:.4f}",
        )
        ref = T4_TABLE[off]
        ax.plot(
            (T4_D + min(off, 0.0)) ** 2,
            np.log(ref),
            "x",
            color="k",
            ms=6,
            label="docs/science/claims.md T4 table" if k == 0 else None,
        )
    # -1/8 reference through the largest-D point of the first initialisation
    i = int(np.argmin(np.abs(offsets + 1.0)))
    x_end, y_end = dmin[i, -1] ** 2, np.log(dmax[i, -1])
    xs = np.linspace(0, x_end, 50)
    ax.plot(xs, y_end - (xs - x_end) / 8, "--", color="0.4", lw=1, label="slope -1/8 (BC reference)")
    ax.set_xlabel(r"$\Delta_{\min}^2$ (squared Mahalanobis distance, old mode to nearest new mean)")
    ax.set_ylabel(r"$\ln \delta_{\max}$  ($\delta$ in units of $\sigma$)")
    ax.set_title(
        rf"PD2: RKL old-mean sup drift (population, logit GD, $\eta$ = {cfg['learning_rate']:g}, T = {cfg['steps']})",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="lower left")

    ax = axes[0, 1]
    for k, off in enumerate((-1.0, 1.0)):
        i = int(np.argmin(np.abs(offsets - off)))
        ax.plot(D, ratio[i], "o-", color=color(k), ms=4, label=rf"$m_n(0) = D {'-' if off < 0 else '+'} 1$")
    ax.axhspan(*RATIO_WINDOW, color="0.85", zorder=0, label="T4 band [0.15, 0.6]")
    ax.set_xlabel(r"target separation $D$ (units of $\sigma$)")
    ax.set_ylabel(r"$\delta_{\max} / e^{-\Delta_{\min}^2/8}$")
    ax.set_ylim(0, 0.8)
    ax.set_title(r"PD2: drift relative to the Bhattacharyya coefficient", fontsize=10)
    ax.legend(fontsize=8)
    label_panel(ax, rf"$\beta^* = \beta(0) = {cfg['target_old_weight']:g}$, $m_o(0) = \mu_o^*$")
    ctx.save_figure(fig, "pd2_drift_vs_separation")
    return claims
