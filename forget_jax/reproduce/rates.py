"""Convergence rates (docs/science/claims.md T5): reverse KL near theta* converges exponentially, at the rate
set by the Hessian H(theta*) = I(theta*) (the Fisher information).

For gradient descent with step eta the error e(t) = theta(t) - theta* obeys e(t+1) ~ (I - eta H) e(t),
so ||theta(t) - theta*|| decays per step by the spectral radius rho = max_i |1 - eta lambda_i(H)|
(= 1 - eta lambda_min for eta <= 2 / (lambda_min + lambda_max), eta lambda_max - 1 above), and the
iteration is unstable for eta > 2 / lambda_max. theta = (logit beta, m_o, m_n) (logit GD, unit
scales), H from `analysis.rkl_hessian` (exact quadrature, float64, the same population objective
the simulation uses). The runs are float64 (the study's `x64: true`): the measured rate is the
log-linear least-squares slope of ||theta(t) - theta*|| on the far tail of each run
(`fitting.fit_exponential_rate`: the last TAIL_DECADES decades above FLOOR_MARGIN decades over
the rounding floor), where the linearised map governs the decay, with a 95% CI. It is held to the
spectral-radius prediction across the whole stable range 0 < eta < 2 / lambda_max.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np

from .. import analysis, theory
from .figures import DIVERGING, MARKERS, color, heatmap, label_panel, new_figure
from .fitting import estimate_floor, fit_exponential_rate, steps_to_threshold
from .framework import Context, base_config, fmt

NAME = "rates"
TITLE = "RKL convergence rates vs the spectral radius max |1 - eta lambda_i(H)| and the stability threshold 2 / lambda_max (T5)"
COST = 2.5
CLAIMS = (
    "rates.hessian_eigenvalues",
    "rates.contraction_rate",
    "rates.steps_to_epsilon",
    "rates.stability_threshold",
)

#: Relative tolerance on the per-step rate -ln rho. On the far tail (the last TAIL_DECADES of
#: decay, 1e-11..1e-5 for runs that reach the float64 floor) the nonlinear correction to the
#: contraction is O(||theta - theta*||) and the rounding floor is 2 decades below the window: an
#: independent float64 check (Delta = 4, beta* = 0.5, eta up to 1.9 / lambda_max) gives < 0.05%.
#: 1% leaves room for windows of a handful of points (the fastest decays) and for the ~100x
#: sensitivity of -ln(eta lambda_max - 1) to lambda_max as eta -> 2 / lambda_max.
RATE_TOL = 0.01
MIN_POINTS = 5  # logged points in the tail window for a rate fit
TAIL_DECADES = 6.0  # decades of decay fitted, counted up from the end of the usable tail
FLOOR_MARGIN = 2.0  # decades kept clear of the rounding floor
#: Level below which ||theta - theta*|| counts as rounding (float64: eps * ||theta*|| ~ 1e-15,
#: raised ~1 / (1 - rho) near the stability edge); float32 runs use 1e-6.
FLOOR = {True: 1e-13, False: 1e-6}
EPSILON = 1e-3  # ||theta - theta*|| threshold for steps-to-epsilon and for "converged"
#: docs/science/claims.md T5 [N]: eigenvalues of the logit Hessian at Delta = 4, beta* = 0.5.
T5_EIGENVALUES = np.array([0.217, 0.379, 0.489])


@lru_cache(maxsize=4096)
def hessian(separation: float, target_old_weight: float) -> np.ndarray:
    """analysis.rkl_hessian (logit parameterisation, d = 1, float64) as a NumPy array (cached).

    float64 is enabled by analysis's own context (thread-local: other studies running in other
    threads keep float32). Evaluated eagerly: one call costs ~0.3 s, a jit per (Delta, beta*)
    (the separation is not traceable through make_hyper) ~1.5 s."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        H = analysis.rkl_hessian(float(separation), float(target_old_weight), weight_param="logit", dim=1, x64=True)
        return np.asarray(H, dtype=np.float64)


def prepare(stores) -> None:
    """Warm the Hessian cache (one per (Delta, beta*)) in the sweep thread, so it overlaps with
    other studies' compilations."""
    ds = stores["rates"]
    for s in ds["separation"].values:
        for b in ds["target_old_weight"].values:
            hessian(float(s), float(b))
    hessian(4.0, 0.5)


def _logit(p):
    p = np.asarray(p, dtype=np.float64)
    return np.log(p) - np.log1p(-p)


def analyze(stores, ctx: Context):
    ds = stores["rates"]
    cfg = base_config(ds)
    seps = ds["separation"].values.astype(float)
    betas = ds["target_old_weight"].values.astype(float)
    lrs = ds["learning_rate"].values.astype(float)
    t = ds["step"].values.astype(np.float64)
    sub = ds.isel(seed=0)
    beta = np.asarray(sub["old_weight"].values, dtype=np.float64)  # (Delta, beta*, eta, step)
    mu_o = float(cfg["target_old_mean"])
    mu_n = mu_o + seps * float(cfg["target_old_scale"])  # theory: mu_n* = mu_o* + Delta s_o* (d = 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        # e(t) = theta(t) - theta*, theta = (logit beta, m_o, m_n): signed, so it can be projected on H's eigenvectors
        e_vec = np.stack(
            [
                _logit(beta) - _logit(betas)[None, :, None, None],
                np.asarray(sub["old_mean_position"].values, dtype=np.float64) - mu_o,
                np.asarray(sub["new_mean_position"].values, dtype=np.float64) - mu_n[:, None, None, None],
            ],
            axis=-1,
        )
    with np.errstate(over="ignore", invalid="ignore"):  # diverged runs
        err = np.linalg.norm(e_vec, axis=-1)
    diverged = np.asarray(sub["diverged"].values, dtype=bool)
    shape = err.shape[:3]

    eig = np.empty((len(seps), len(betas), 3))
    for i, s in enumerate(seps):
        for j, b in enumerate(betas):
            eig[i, j] = np.linalg.eigvalsh(hessian(s, b))
    rho_pred = np.empty(shape)
    slow_limit = np.empty(shape[:2])  # 2 / (lambda_min + lambda_max)
    for i in range(len(seps)):
        for j in range(len(betas)):
            H = hessian(seps[i], betas[j])
            slow_limit[i, j] = float(theory.slow_mode_step_limit(H))
            for k, lr in enumerate(lrs):
                rho_pred[i, j, k] = float(theory.predicted_contraction(H, lr))
    with np.errstate(invalid="ignore", divide="ignore"):
        rate_pred = -np.log(rho_pred)  # <= 0 where unstable
    stable = rho_pred < 1
    slow_regime = lrs[None, None, :] <= slow_limit[..., None]  # rho = 1 - eta lambda_min

    x64 = bool(cfg.get("x64", False))
    final_err = err[..., -1]
    converged = ~diverged & np.isfinite(final_err) & (final_err <= EPSILON)

    def tail_fit(y):
        with np.errstate(invalid="ignore", divide="ignore"):
            floor = max(estimate_floor(t, np.log(y)), FLOOR[x64])
        return fit_exponential_rate(
            t, y, floor=floor, floor_margin=FLOOR_MARGIN, tail_decades=TAIL_DECADES, min_points=MIN_POINTS
        )

    # The rate of the spectral radius is that of the eigencomponent of H with the largest |1 - eta lambda_i|
    # (the slowest): project e(t) on H's eigenvectors and fit that component's far tail. The norm
    # ||e(t)|| tends to the same rate only once that component dominates it; when two |1 - eta lambda_i|
    # are close and the slower one starts small, that happens below the float64 floor (fitted too, in the note).
    rate_meas = np.full(shape, np.nan)
    rate_lo = np.full(shape, np.nan)
    rate_hi = np.full(shape, np.nan)
    rate_norm = np.full(shape, np.nan)
    window = np.full((*shape, 2), np.nan)  # |slowest component| at the window's ends
    for i in range(len(seps)):
        for j in range(len(betas)):
            lam_ij, vec_ij = np.linalg.eigh(hessian(seps[i], betas[j]))
            for k, lr in enumerate(lrs):
                idx = (i, j, k)
                if not (converged[idx] and stable[idx]):
                    continue
                slowest = int(np.argmax(np.abs(1.0 - lr * lam_ij)))
                component = np.abs(e_vec[idx] @ vec_ij[:, slowest])
                fit = tail_fit(component)
                if fit.ok:
                    rate_meas[idx], rate_lo[idx], rate_hi[idx] = fit.rate, fit.rate_low, fit.rate_high
                    window[idx] = (np.interp(fit.t_start, t, component), np.interp(fit.t_end, t, component))
                norm_fit = tail_fit(err[idx])
                if norm_fit.ok:
                    rate_norm[idx] = norm_fit.rate
    fitted = np.isfinite(rate_meas) & stable
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.abs(rate_meas / rate_pred - 1.0)
    inside = fitted & (rate_lo <= rate_pred) & (rate_pred <= rate_hi)
    claims = []

    # the theory's own numbers (T5 [N])
    ev = np.linalg.eigvalsh(hessian(4.0, 0.5))
    dev = np.abs(ev - T5_EIGENVALUES).max()
    claims.append(
        ctx.claim(
            "hessian_eigenvalues",
            "Eigenvalues of the RKL Hessian (logit) at Delta = 4, beta* = 0.5 match docs/science/claims.md T5.",
            "T5 [N]",
            fmt(T5_EIGENVALUES),
            fmt(ev, 4),
            "+-0.005 (3 decimals quoted)",
            dev <= 0.005,
            eigenvalues=ev,
        )
    )

    # rates: the spectral radius across the whole stable range 0 < eta < 2 / lambda_max
    def worst_of(mask):
        if not mask.any():
            return float("nan"), None
        where = np.unravel_index(np.nanargmax(np.where(mask, rel, -1)), shape)
        return float(rel[where]), where

    with np.errstate(invalid="ignore", divide="ignore"):
        norm_dev = np.abs(rate_norm / rate_pred - 1.0)
    norm_worst = float(np.nanmax(np.where(fitted, norm_dev, np.nan))) if fitted.any() else float("nan")
    worst, worst_at = worst_of(fitted)
    worst_slow, _ = worst_of(fitted & slow_regime)
    worst_fast, _ = worst_of(fitted & ~slow_regime)
    edge = fitted & (lrs[None, None, :] * eig[..., -1:] >= 1.5)  # eta >= 0.75 * 2 / lambda_max
    n_unfitted = int((converged & stable & ~fitted).sum())
    claims.append(
        ctx.claim(
            "contraction_rate",
            "The fitted per-step convergence rate of theta(t) -> theta* (its slowest eigencomponent, which sets the asymptotic "
            "rate of ||theta(t) - theta*||) equals -ln rho, rho = max_i |1 - eta lambda_i(H(theta*))| the spectral radius of "
            "the linearised map, across separation x beta* x learning rate over the whole stable range 0 < eta < 2/lambda_max.",
            "T5 (spectral radius of I - eta H; = 1 - eta mu for eta <= 2/(lambda_min + lambda_max))",
            "-ln max_i |1 - eta lambda_i(H)| (theory.contraction_rate)",
            f"max relative deviation {fmt(worst)} over {int(fitted.sum())} fitted runs"
            + (
                f" (worst at Delta = {seps[worst_at[0]]:g}, beta* = {betas[worst_at[1]]:g}, eta = {fmt(lrs[worst_at[2]])} "
                f"= {fmt(lrs[worst_at[2]] * eig[worst_at[0], worst_at[1], -1] / 2)} x 2/lambda_max)"
                if worst_at
                else ""
            )
            + f"; {fmt(worst_slow)} where rho = 1 - eta lambda_min ({int((fitted & slow_regime).sum())} runs), "
            f"{fmt(worst_fast)} where rho = eta lambda_max - 1 ({int((fitted & ~slow_regime).sum())} runs); "
            f"{int(edge.sum())} fitted runs have eta >= 0.75 x 2/lambda_max",
            f"<= {RATE_TOL:.0%}",
            fitted.any() and worst <= RATE_TOL,
            note=(
                f"{'float64 runs' if x64 else 'float32 runs: the rounding floor sits inside the window, expect FAILs near the edge'}. "
                "Measured: the rate of the eigencomponent v_i^T (theta(t) - theta*) of H with the largest |1 - eta lambda_i| "
                "(the one whose rate is the spectral radius). The norm ||theta(t) - theta*|| fitted the same way deviates by up to "
                f"{fmt(norm_worst)}: it reaches the spectral-radius rate only once the slowest component dominates it, which near "
                "eta = 2/(lambda_min + lambda_max) (two |1 - eta lambda_i| close) can take longer than the float64 range. "
                f"Runs converged to ||theta - theta*|| <= {EPSILON:g}: {int(converged.sum())}/{converged.size}. The rate is fitted on the far "
                f"tail: the last {TAIL_DECADES:g} decades of decay ending {FLOOR_MARGIN:g} decades above the rounding floor "
                f"(>= {FLOOR[x64]:g}), never within 1.5 decades of the start (windows span |v^T (theta - theta*)| in "
                f"[{fmt(np.nanmin(window[..., 1]))}, {fmt(np.nanmax(window[..., 0]))}]). {n_unfitted} converged stable runs decay too fast "
                f"for {MIN_POINTS} logged points in the window (rho < ~0.25 at log_every = {cfg['log_every']}) and are not fitted. "
                f"The prediction lies inside the 95% CI of the slope in {int(inside.sum())}/{int(fitted.sum())}: the CI of a "
                "least-squares slope on a deterministic curve measures its curvature, not noise, so the tolerance is on the "
                "relative deviation."
            ),
            n_fitted=int(fitted.sum()),
            max_rel_dev=worst,
            max_rel_dev_slow_mode=worst_slow,
            max_rel_dev_fast_mode=worst_fast,
            n_edge=int(edge.sum()),
            inside_ci=int(inside.sum()),
        )
    )

    # steps to epsilon: the linearised bound rho^t ||theta(0) - theta*|| (kappa = 1, I - eta H symmetric)
    t_meas = np.full(shape, np.nan)
    t_pred = np.full(shape, np.nan)
    for idx in np.ndindex(shape):
        if converged[idx] and stable[idx]:
            t_meas[idx] = steps_to_threshold(t, err[idx], EPSILON)
            t_pred[idx] = float(theory.steps_to_tolerance(err[idx][0], EPSILON, rho_pred[idx]))
    usable = np.isfinite(t_meas) & np.isfinite(t_pred) & (t_pred >= 10)
    ratio = t_meas[usable] / t_pred[usable]
    ratio_slow = t_meas[usable & slow_regime] / t_pred[usable & slow_regime]
    claims.append(
        ctx.claim(
            "steps_to_epsilon",
            f"Steps to reach ||theta - theta*|| <= {EPSILON:g} follow the linearised bound: "
            "t_eps = ln(||theta(0) - theta*|| / eps) / (-ln rho), across the whole stable range.",
            "T5 (||theta(t) - theta*|| <= kappa rho^t ||theta(0) - theta*||, kappa = 1 for the symmetric map I - eta H)",
            "measured / predicted <= 1 (a bound), ~1 where rho = 1 - eta lambda_min",
            f"ratio in [{fmt(ratio.min()) if ratio.size else 'n/a'}, {fmt(ratio.max()) if ratio.size else 'n/a'}], "
            f"median {fmt(np.median(ratio)) if ratio.size else 'n/a'} over {ratio.size} runs; where rho = 1 - eta lambda_min: "
            f"[{fmt(ratio_slow.min()) if ratio_slow.size else 'n/a'}, {fmt(ratio_slow.max()) if ratio_slow.size else 'n/a'}]",
            "every ratio <= 1.5; >= 0.5 where rho = 1 - eta lambda_min",
            ratio.size > 0 and ratio.max() <= 1.5 and ratio_slow.size > 0 and ratio_slow.min() >= 0.5,
            note=(
                "The bound is that of the linearised map; the factor 1.5 allows for the nonlinear start (the run starts 0.3-0.5 "
                "away from theta* in each coordinate, where the contraction differs from rho). The ratio is < 1 when the start "
                "excites the slowest mode only partly: above 2/(lambda_min + lambda_max) rho is set by lambda_max, whose mode the "
                "start may barely excite, so only the upper bound is held there; at or below it the slow mode dominates the "
                "approach and the ratio stays near 1 (>= 0.5, for the transient of the faster modes)."
            ),
            ratio_min=float(ratio.min()) if ratio.size else None,
            ratio_max=float(ratio.max()) if ratio.size else None,
            ratio_slow_min=float(ratio_slow.min()) if ratio_slow.size else None,
        )
    )

    # stability threshold
    threshold = 2.0 / eig[..., -1]
    brackets, bad = {}, []
    for i in range(len(seps)):
        for j in range(len(betas)):
            ok = np.nonzero(converged[i, j])[0]
            hi = lrs[ok.max()] if ok.size else np.nan
            above = np.nonzero(~converged[i, j] & (lrs > hi))[0] if ok.size else np.arange(len(lrs))
            lo_unstable = lrs[above.min()] if above.size else np.inf
            brackets[(i, j)] = (hi, lo_unstable)
            if not (hi < threshold[i, j] <= lo_unstable):
                bad.append((float(seps[i]), float(betas[j]), float(hi), float(lo_unstable), float(threshold[i, j])))
    n_pairs = len(seps) * len(betas)
    claims.append(
        ctx.claim(
            "stability_threshold",
            "The largest learning rate that converges lies just below 2 / lambda_max(H), the first that does not just above.",
            "T5 (GD stable iff eta < 2 / lambda_max)",
            "largest converging eta < 2/lambda_max <= smallest failing eta",
            f"bracketed in {n_pairs - len(bad)}/{n_pairs} (Delta, beta*) pairs"
            + (f"; misses (Delta, beta*, eta_ok, eta_fail, 2/lmax): {bad}" if bad else ""),
            f"all pairs (grid spacing x{lrs[1] / lrs[0]:.2f})",
            not bad,
            note=(
                f"'Converging' = finite and ||theta(T) - theta*|| <= {EPSILON:g} at T = {cfg['steps']}; above the threshold runs "
                "diverge, oscillate on a limit cycle or wander off."
            ),
            misses=bad,
            thresholds=threshold,
        )
    )

    # ---- figures
    fig, axes = new_figure(2, 1, width=5.0, height=4.2)
    ax = axes[0, 0]
    for j, _b in enumerate(betas):
        for i, s in enumerate(seps):
            m = fitted[i, j]
            if m.any():
                ax.errorbar(
                    rate_pred[i, j, m],
                    rate_meas[i, j, m],
                    yerr=[rate_meas[i, j, m] - rate_lo[i, j, m], rate_hi[i, j, m] - rate_meas[i, j, m]],
                    fmt=MARKERS[j % len(MARKERS)],
                    color=color(i),
                    ms=4,
                    lw=0.8,
                    mfc="none" if j % 2 else color(i),
                    label=rf"$\Delta = {s:g}$" if j == 0 else None,
                )
    lim = [np.nanmin(rate_pred[fitted]) * 0.7, np.nanmax(rate_pred[fitted]) * 1.4] if fitted.any() else [1e-3, 1]
    ax.plot(lim, lim, "--", color="0.4", lw=1, label="measured = predicted")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(r"predicted rate $-\ln \max_i |1 - \eta \lambda_i(H)|$ (per step)")
    ax.set_ylabel(r"fitted rate of the slowest eigencomponent of $\theta(t) - \theta^*$ (per step, 95% CI)")
    ax.set_title("T5: RKL convergence rate (population, logit GD)", fontsize=10)
    for j, b in enumerate(betas):
        ax.plot(
            [], [], MARKERS[j % len(MARKERS)], color="0.3", mfc="none" if j % 2 else "0.3", label=rf"$\beta^* = {b:g}$"
        )
    ax.legend(fontsize=7, loc="upper left", ncols=2)
    ax = axes[0, 1]
    for i, _s in enumerate(seps):
        for j, _b in enumerate(betas):
            m = fitted[i, j]
            if m.any():
                ax.plot(
                    lrs[m],
                    rate_meas[i, j, m] / rate_pred[i, j, m],
                    MARKERS[j % len(MARKERS)] + "-",
                    color=color(i),
                    ms=3.5,
                    lw=0.8,
                    mfc="none" if j % 2 else color(i),
                )
    ax.axhspan(1 - RATE_TOL, 1 + RATE_TOL, color="0.88", zorder=0, label=f"±{RATE_TOL:.0%}")
    ax.axhline(1.0, color="0.4", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel(r"learning rate $\eta$")
    ax.set_ylabel("fitted / predicted rate")
    ax.set_title(r"ratio vs $\eta$ (colours: $\Delta$ as left)", fontsize=10)
    ax.legend(fontsize=8)
    ctx.save_figure(fig, "rates_scatter")

    fig, axes = new_figure(len(betas), 1, width=4.6, height=3.8)
    lr_labels = [f"{v:.2g}" for v in lrs]
    for j, b in enumerate(betas):
        ax = axes[0, j]
        heatmap(
            ax,
            100 * (rate_meas[:, j, :] / rate_pred[:, j, :] - 1),
            lr_labels,
            [f"{s:g}" for s in seps],
            xlabel=r"learning rate $\eta$",
            ylabel=r"separation $\Delta$ (units of $\sigma$)",
            title=rf"fitted / predicted rate - 1, $\beta^* = {b:g}$",
            cbar_label="deviation (%)",
            cmap=DIVERGING,
            center=0.0,
            vmin=-200 * RATE_TOL,
            vmax=200 * RATE_TOL,
            fmt="{:+.1f}",
            annotate=len(lrs) * len(seps) <= 60,
        )
        for i in range(len(seps)):
            for k in range(len(lrs)):
                if not converged[i, j, k]:
                    ax.text(k, i, "×", ha="center", va="center", fontsize=9, color="#D55E00")
            # predicted threshold as a fractional column position (log-spaced grid)
            pos = np.interp(np.log(threshold[i, j]), np.log(lrs), np.arange(len(lrs)), left=-0.5, right=len(lrs) - 0.5)
            ax.plot([pos, pos], [i - 0.5, i + 0.5], color="k", lw=2)
            pos1 = np.interp(
                np.log(slow_limit[i, j]), np.log(lrs), np.arange(len(lrs)), left=-0.5, right=len(lrs) - 0.5
            )
            ax.plot([pos1, pos1], [i - 0.5, i + 0.5], color="k", lw=1, ls="--")
        ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    label_panel(
        axes[0, 0],
        "× not converged\n| predicted 2/λ_max\n¦ 2/(λ_min+λ_max): ρ = 1-ηλ_min left of it\ngrey: not fitted",
        loc="lower left",
    )
    fig.suptitle(
        f"T5 phase diagram: RKL rate / (-ln ρ), ρ = spectral radius of I - ηH(θ*); T = {cfg['steps']} steps",
        fontsize=10,
    )
    ctx.save_figure(fig, "rates_phase_diagram")

    fig, axes = new_figure(2, 1, width=4.8, height=4.0)
    ax = axes[0, 0]
    ax.loglog(
        t_pred[usable & ~slow_regime],
        t_meas[usable & ~slow_regime],
        "x",
        color=color(1),
        ms=4,
        label=r"$\rho = \eta\lambda_{\max} - 1$ (bound only)",
    )
    ax.loglog(
        t_pred[usable & slow_regime],
        t_meas[usable & slow_regime],
        "o",
        color=color(0),
        ms=3.5,
        mfc="none",
        label=r"$\rho = 1 - \eta\lambda_{\min}$",
    )
    lim = [max(1.0, np.nanmin(t_pred[usable]) * 0.7), np.nanmax(t_pred[usable]) * 1.4] if usable.any() else [1, 10]
    ax.plot(lim, lim, "--", color="0.4", lw=1, label="measured = predicted")
    ax.fill_between(
        lim, [0.5 * v for v in lim], [1.1 * v for v in lim], color="0.9", zorder=0, label="[0.5, 1.1] x predicted"
    )
    ax.set_xlabel(r"predicted steps $\ln(\|\theta_0 - \theta^*\| / \epsilon) / (-\ln \rho)$")
    ax.set_ylabel(rf"measured steps to $\|\theta - \theta^*\| \leq {EPSILON:g}$")
    ax.set_title(r"steps to $\epsilon$ (converging runs)", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    for j, b in enumerate(betas):
        hi = np.array([brackets[(i, j)][0] for i in range(len(seps))])
        lo = np.array([brackets[(i, j)][1] for i in range(len(seps))])
        off = (j - (len(betas) - 1) / 2) * 0.06 * (seps.max() - seps.min() + 1)
        ax.vlines(seps + off, hi, np.where(np.isfinite(lo), lo, hi), color=color(j), lw=3, alpha=0.45)
        ax.plot(
            seps + off,
            hi,
            MARKERS[j % len(MARKERS)],
            color=color(j),
            ms=4,
            label=rf"measured bracket, $\beta^* = {b:g}$",
        )
        ax.plot(seps, threshold[:, j], "-", color=color(j), lw=1.2)
    ax.plot([], [], "-", color="0.3", label=r"predicted $2/\lambda_{\max}(H)$")
    ax.set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter

    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax.set_xlabel(r"separation $\Delta$ (units of $\sigma$)")
    ax.set_ylabel(r"learning rate $\eta$")
    ax.set_title(
        "largest stable learning rate (marker: largest converging,\nbar up to the first failing grid value; "
        r"$\beta^*$ and $1-\beta^*$ coincide)",
        fontsize=9,
    )
    ax.legend(fontsize=7)
    ctx.save_figure(fig, "rates_steps_and_stability")
    return claims
