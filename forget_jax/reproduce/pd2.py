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
#: T4's calibration horizon: the table's delta_max is the running sup over steps 0..3000.
T4_HORIZON = 3000
#: Final-drift threshold of T4 ("delta(infinity) < 1e-3 for D >= 2").
FINAL_DRIFT = 1e-3
#: float32 rounding level of the logged drift: it plateaus at ~1e-6 for D >= 4 and at ~1e-5 at
#: D = 2 (rounding amplified by the ill-conditioning, lambda_min(H) = 0.033), 10x slack: the
#: horizon bound is compared with max(bound, this), 10x below the 1e-3 of the claim.
DRIFT_FLOOR = 1e-4
RATIO_WINDOW = (0.15, 0.6)
SLOPE_FROM = 6.0  # "largest D values": D >= 6
SLOPE_TOL = 0.1  # relative


def prepare(stores) -> None:
    """Warm the Hessian cache of the final-drift horizon (one per D) in the sweep thread."""
    from .rates import hessian

    cfg = base_config(stores["pd2"])
    for d in stores["pd2"]["separation"].values:
        hessian(float(d), float(cfg["target_old_weight"]))


def _logit(p: float) -> float:
    return float(np.log(p) - np.log1p(-p))


def analyze(stores, ctx: Context):
    from .rates import hessian

    ds = stores["pd2"]
    cfg = base_config(ds)
    D = ds["separation"].values
    offsets = ds["init_new_offset"].values
    steps = ds["step"].values
    sub = ds.isel(seed=0)
    horizon = min(T4_HORIZON, int(steps[-1]))
    dmax = np.asarray(sub["old_drift_max"].sel(step=horizon).values)  # (offset, D): sup over 0..3000
    dfin = final(sub, "old_drift")
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
            f"delta_max as tabulated (12 values; sup over steps 0..{horizon})",
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

    # final drift: past the T5 horizon of every separation, and the horizon-dependent bound at T4's horizon
    eta, beta_star = float(cfg["learning_rate"]), float(cfg["target_old_weight"])
    e0 = np.hypot(
        np.hypot(_logit(cfg["init_old_weight"]) - _logit(beta_star), float(cfg["init_old_offset"])), offsets
    )  # ||theta(0) - theta*|| per initialisation (theta = (logit beta, m_o, m_n), sigma = 1)
    rho = np.array([float(theory.predicted_contraction(hessian(float(d), beta_star), eta)) for d in D])
    t_eps = np.asarray(theory.steps_to_tolerance(e0[:, None], FINAL_DRIFT, rho[None, :]))  # (offset, D)
    bound = np.asarray(theory.linear_error_bound(e0[:, None], rho[None, :], horizon))
    d_h = np.asarray(sub["old_drift"].sel(step=horizon).values)
    drift_t = np.asarray(sub["old_drift"].values, dtype=np.float64)  # (offset, D, step)
    bound_t = np.asarray(theory.linear_error_bound(e0[:, None, None], rho[None, :, None], steps[None, None, :]))
    over_all = float((drift_t / np.maximum(bound_t, DRIFT_FLOOR))[:, D >= 2].max())
    sel = D >= 2
    T = int(steps[-1])
    past = bool((T >= t_eps[:, sel]).all())
    fd = dfin[:, sel]
    over = d_h[:, sel] / np.maximum(bound[:, sel], DRIFT_FLOOR)
    i2 = np.unravel_index(np.argmax(t_eps[:, sel]), t_eps[:, sel].shape)
    claims.append(
        ctx.claim(
            "final_drift",
            f"The old mean returns to the truth: delta(T) < {FINAL_DRIFT:g} for every D >= 2 once T exceeds the T5 horizon "
            "t_eps(D); at every logged step t, delta(t) <= ||theta(0) - theta*|| rho(D)^t (the horizon-dependent prediction).",
            "T4 (delta(infinity) < 1e-3 for D >= 2), T5 (linearised bound, kappa = 1)",
            f"delta(T = {T}) < {FINAL_DRIFT:g} (T >= t_eps(D) = ln(||theta(0) - theta*|| / {FINAL_DRIFT:g}) / (-ln rho(D)), "
            f"rho = 1 - eta lambda_min(H); largest t_eps = {fmt(t_eps[:, sel].max())} at D = {fmt(D[sel][i2[1]])}); "
            f"delta(t) <= ||theta(0) - theta*|| rho^t (at t = {horizon}: 1e-3 is reached only for D with t_eps <= {horizon})",
            f"max delta_T = {fmt(fd.max())} at T = {T}; max over t of delta(t) / max(bound, {DRIFT_FLOOR:g}) = {fmt(over_all)}; "
            f"at t = {horizon}: {fmt(over.max())} "
            f"(delta({horizon}) = {fmt(d_h[:, sel].max())} at D = {fmt(D[sel][np.argmax(d_h[:, sel].max(axis=0))])}, bound there "
            f"{fmt(bound[:, sel][:, np.argmax(d_h[:, sel].max(axis=0))].max())})",
            f"< {FINAL_DRIFT:g} with T >= t_eps(D) for every D; ratio <= 1",
            past and fd.max() < FINAL_DRIFT and over_all <= 1.0,
            note=(
                (
                    f"T4's table horizon ({horizon} steps) is shorter than t_eps at the smallest separations (lambda_min(H) -> 0 "
                    f"as the components overlap): delta({horizon}) = {fmt(d_h[:, sel].max())} there, above 1e-3 and below the "
                    f"bound; the run continues to T = {T}. "
                    if t_eps[:, sel].max() > horizon
                    else f"Every separation of this grid has t_eps <= {horizon}. "
                )
                + f"The bound is compared with max(bound, {DRIFT_FLOOR:g}): below that the float32 drift is rounding "
                "(docs/science/claims.md quotes ~1e-15 in float64)."
            ),
            max_final_drift=float(fd.max()),
            t_eps=t_eps,
            drift_at_horizon=d_h,
            bound_at_horizon=bound,
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
        rf"PD2: RKL old-mean sup drift (population, logit GD, $\eta$ = {cfg['learning_rate']:g}, sup over $t \leq {horizon}$)",
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
