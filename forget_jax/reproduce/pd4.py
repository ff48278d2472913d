"""PD4 (docs/science/studies.md section 4; docs/science/claims.md T2): forward KL with replay, beta_infinity = lambda.

The population minimiser of KL(p_lambda || q_theta) is q = p_lambda: beta = lambda and both means
at the truth (section 6, item 4). Without replay (lambda = 0) the weight decays to zero (T1).
"""

from __future__ import annotations

import numpy as np

from .. import theory
from .figures import MARKERS, color, label_panel, new_figure
from .framework import Context, base_config, final, fmt

NAME = "pd4"
TITLE = "FKL with replay: beta_infinity vs lambda (T2)"
COST = 1.0
CLAIMS = ("pd4.identity", "pd4.means_at_truth", "pd4.no_replay_collapse")

MAIN_SEPARATION = 4.0


def analyze(stores, ctx: Context):
    ds = stores["pd4"].isel(seed=0)
    cfg = base_config(stores["pd4"])
    seps = ds["separation"].values
    lams = ds["replay_ratio"].values
    beta = final(ds, "old_weight")  # (Delta, lambda)
    drift = final(ds, "old_drift")
    new_err = final(ds, "new_mean_error")
    i = int(np.argmin(np.abs(seps - MAIN_SEPARATION)))
    pos = lams > 0
    predicted = np.asarray(theory.fkl_replay_optimum(lams))
    err = np.abs(beta[i, pos] - predicted[pos])
    claims = [
        ctx.claim(
            "identity",
            f"FKL with replay lambda converges to beta = lambda (Delta = {seps[i]:g}, lambda in (0, {lams.max():g}]).",
            "T2, PD4, section 6 item 4",
            "beta_infinity = lambda (identity line)",
            f"max |beta_T - lambda| = {fmt(err.max())} over {int(pos.sum())} values",
            "<= 1e-3",
            err.max() <= 1e-3,
            note="Other separations in the figure: max |beta_T - lambda| = "
            + ", ".join(
                f"{fmt(np.abs(beta[k, pos] - lams[pos]).max())} (Delta = {seps[k]:g})" for k in range(len(seps))
            ),
            max_abs_error=float(err.max()),
        ),
    ]
    mean_err = max(drift[i, pos].max(), new_err[i, pos].max())
    claims.append(
        ctx.claim(
            "means_at_truth",
            f"With replay both means converge to the truth (Delta = {seps[i]:g}).",
            "T2, section 6 item 4",
            "|m_o - mu_o*|, |m_n - mu_n*| -> 0",
            f"max = {fmt(mean_err)}",
            "<= 1e-3",
            mean_err <= 1e-3,
            max_mean_error=float(mean_err),
        )
    )
    j0 = int(np.argmin(lams))
    beta_star = cfg["target_old_weight"]
    b0 = float(beta[i, j0])
    claims.append(
        ctx.claim(
            "no_replay_collapse",
            f"Without replay (lambda = 0) the old weight collapses (Delta = {seps[i]:g}).",
            "T1, T2",
            "beta_infinity = 0",
            f"beta_T/beta* = {fmt(b0 / beta_star)}",
            "<= 0.05 (finite horizon: T1(b) with fixed means gives 1e-3 at T = 4000)",
            b0 / beta_star <= 0.05,
            note="Logit GD decays as Theta(1/t), and the learnable old mean is partly recruited to the new data first, so beta_T is a finite-horizon value.",
            beta_T=b0,
        )
    )

    fig, axes = new_figure(1, 1, width=5.0, height=4.2)
    ax = axes[0, 0]
    ax.plot([0, 1], [0, 1], "--", color="0.4", lw=1, label=r"identity $\beta_\infty = \lambda$ (T2)")
    for k in range(len(seps)):
        ax.plot(lams, beta[k], MARKERS[k] + "-", color=color(k), ms=4, lw=1, label=rf"FKL, $\Delta = {seps[k]:g}$")
    ax.set_xlabel(r"replay ratio $\lambda$ (fraction of old-task data in the SFT mixture)")
    ax.set_ylabel(r"final old weight $\beta_T$")
    ax.set_xlim(-0.02, 0.95)
    ax.set_ylim(-0.02, 0.95)
    ax.set_aspect("equal")
    ax.set_title(
        rf"PD4: FKL with replay (population, logit GD, $\eta$ = {cfg['learning_rate']:g}, T = {cfg['steps']})",
        fontsize=9,
    )
    ax.legend(fontsize=8, loc="lower right")
    label_panel(ax, rf"$\beta(0) = \beta^* = {cfg['init_old_weight']:g}$, old component starts correct")
    ctx.save_figure(fig, "pd4_fkl_replay")
    return claims
