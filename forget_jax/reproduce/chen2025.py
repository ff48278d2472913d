"""CRNC25's two-mode toy (docs/science/studies.md sections 4-5; Chen, Razin, Narasimhan, Chen 2025).

Their three runs (FKL lr 0.15, FKL lr 0.01, surrogate REINFORCE "RKL" lr 0.01) and their sweep
over the target new-mode position (4.5, 5.5, 6.5; 3.5 is the main setting), with CRNC25's metrics
per iteration: drop(t) = overlap_old(0) - overlap_old(t) (old-task accuracy lost; CRNC25's sign,
positive = forgetting) and gain(t) = overlap_new(t) - overlap_new(0). The same setting is run
with the exact reverse KL (objective rkl, pathwise estimator: unbiased for grad KL(q || p*)) to
separate what their surrogate does from what the true reverse KL does: the surrogate samples only
the learner's new component and rewards log(p_2 / q_2) against the *unweighted* target new
component, so the old mode is starved by construction and pi_1 bleeds (section 5); the exact
reverse KL keeps the old mass but, being mode-seeking, does not move its new component across the
low-density gap from 0.5 to the target in 200 iterations.
"""

from __future__ import annotations

import numpy as np

from ..gaussian import log_normal
from ..model import new_mode_position
from .figures import color, label_panel, new_figure
from .framework import Context, base_config, fmt

NAME = "chen2025"
TITLE = "CRNC25 toy: drop / gain of FKL, their surrogate RKL and the exact RKL"
COST = 2.0
CLAIMS = (
    "chen2025.matched_gain_drop",
    "chen2025.final_drop_sweep",
    "chen2025.surrogate_mass_loss",
    "chen2025.exact_rkl_keeps_mass",
    "chen2025.exact_rkl_mode_seeking",
)

GAIN_THRESHOLD = 0.9  # CRNC25's --gain_thresholds 0.9
#: (label, objective, learning rate) of every run shown.
RUNS = (
    ("FKL (SFT), lr 0.15", "chen2025_fkl", 0.15),
    ("FKL (SFT), lr 0.01", "chen2025_fkl", 0.01),
    ("CRNC25 surrogate RKL, lr 0.01", "chen2025_rkl", 0.01),
    ("exact RKL, lr 0.01", "rkl", 0.01),
    ("exact RKL, lr 0.15", "rkl", 0.15),
)
MAIN = "x3.5"


def _position(cfg) -> float:
    return new_mode_position(cfg["target_old_mean"], cfg["separation"], cfg["target_old_scale"])


def _run(ds, objective, lr):
    sub = ds.sel(objective=objective).sel(learning_rate=lr, method="nearest")
    get = lambda v: np.asarray(sub[v].values, dtype=np.float64)
    old, new = get("old_overlap"), get("new_overlap")
    return dict(
        drop=old[:, :1] - old,
        gain=new - new[:, :1],
        beta=get("old_weight"),
        m_o=get("old_mean_position"),
        m_n=get("new_mean_position"),
        s_o=get("old_scale"),
        s_n=get("new_scale"),
    )


def _mean_se(x):
    n = x.shape[0]
    return x.mean(axis=0), (x.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(x.shape[1:]))


def _normal(x, m, s):
    """N(x; m, s^2) on a 1-D grid (for the figure), from the gaussian.py primitive."""
    x = np.asarray(x, np.float32)[:, None]
    return np.asarray(np.exp(log_normal(x, np.full((1,), m, np.float32), np.float32(s))), np.float64)


def analyze(stores, ctx: Context):
    keys = sorted(stores, key=lambda k: _position(base_config(stores[k])))
    cfgs = {k: base_config(stores[k]) for k in keys}
    positions = {k: _position(cfgs[k]) for k in keys}
    main = next((k for k in keys if k.endswith(MAIN)), keys[0])
    runs = {k: {(o, lr): _run(stores[k], o, lr) for _, o, lr in RUNS} for k in keys}
    steps = stores[main]["step"].values
    beta_star = cfgs[main]["target_old_weight"]
    n_seeds = stores[main].sizes["seed"]
    claims = []

    # 1. matched gain (CRNC25's overlay figure cut-off): FKL lr 0.15 vs surrogate RKL lr 0.01
    def at_gain(run):
        g, _ = _mean_se(run["gain"])
        hit = np.nonzero(g >= GAIN_THRESHOLD)[0]
        if not hit.size:
            return None, np.nan, np.nan
        j = int(hit[0])
        d, se = _mean_se(run["drop"])
        return j, d[j], se[j]

    jf, df, sf = at_gain(runs[main][("chen2025_fkl", 0.15)])
    jr, dr, sr = at_gain(runs[main][("chen2025_rkl", 0.01)])
    margin = 2 * np.hypot(sf, sr)
    claims.append(
        ctx.claim(
            "matched_gain_drop",
            f"At matched gain (first iteration with mean gain >= {GAIN_THRESHOLD}), SFT forgets more than "
            f"CRNC25's on-policy RL (target new mode at {positions[main]:g}).",
            "CRNC25 (overlay figure), section 5",
            "drop(FKL lr 0.15) > drop(surrogate RKL lr 0.01)",
            f"{fmt(df)} +- {fmt(sf)} (iteration {jf}) vs {fmt(dr)} +- {fmt(sr)} (iteration {jr}), mean +- s.e. over {n_seeds} seeds",
            "difference > 2 s.e.",
            (jf is not None) and (jr is not None) and (df - dr > margin),
            note="CRNC25's plot cut-off is off by one (section 5); here both drop and gain are read at the same iteration.",
            fkl=(jf, df, sf),
            rkl=(jr, dr, sr),
        )
    )

    # 2. final drop across the position sweep (per seed: the surrogate's outcome is heavy-tailed)
    rows, ok, collapsed = [], True, 0
    for k in keys:
        a = runs[k][("chen2025_fkl", 0.15)]["drop"][:, -1]
        b = runs[k][("chen2025_rkl", 0.01)]["drop"][:, -1]
        wins = float(np.mean(a > b))
        collapsed += int(np.sum(runs[k][("chen2025_rkl", 0.01)]["beta"][:, -1] < 0.05))
        rows.append((positions[k], float(np.median(a)), float(np.median(b)), wins, float(a.mean()), float(b.mean())))
        ok &= bool(np.median(a) > np.median(b) and wins >= 0.75)
    claims.append(
        ctx.claim(
            "final_drop_sweep",
            "Across CRNC25's sweep of the target new-mode position, the final drop of SFT (lr 0.15) exceeds "
            "that of their RL surrogate (lr 0.01) in a typical run.",
            "CRNC25 (sweep.py, mean_dist figure)",
            "drop_FKL(T) > drop_RKL(T) at every position",
            "; ".join(
                f"x={p:g}: median {fmt(a)} vs {fmt(b)}, FKL larger in {w:.0%} of seeds" for p, a, b, w, _, _ in rows
            ),
            "medians ordered and FKL larger in >= 75% of seeds, at every position",
            ok,
            note=(
                "Compared per seed and by medians because the surrogate's outcome is heavy-tailed: its importance weight "
                f"q/q_2 is unbounded and {collapsed} of {n_seeds * len(keys)} surrogate runs collapsed pi_1 to the clip "
                "(beta_T < 0.05, drop ~0.8). Means: "
                + "; ".join(f"x={p:g}: {fmt(ma)} vs {fmt(mb)}" for p, _, _, _, ma, mb in rows)
                + "."
            ),
            rows=rows,
            collapsed=collapsed,
        )
    )

    # 3. the surrogate bleeds old mass
    rows, ok = [], True
    for k in keys:
        b = runs[k][("chen2025_rkl", 0.01)]["beta"][:, -1]
        frac = float(np.mean(b < beta_star - 0.01))
        rows.append((positions[k], float(np.median(b)), frac))
        ok &= frac >= 0.9
    claims.append(
        ctx.claim(
            "surrogate_mass_loss",
            "CRNC25's surrogate RKL loses old mass: pi_1 ends below beta* at every position.",
            "section 5 (old mode never sampled: starved by construction)",
            f"beta_T < beta* = {beta_star:g}",
            "; ".join(f"x={p:g}: median {fmt(m)}, below in {f:.0%} of seeds" for p, m, f in rows),
            "beta_T < beta* - 0.01 in >= 90% of seeds",
            ok,
            note=(
                "Their per-batch update moves pi_1 by about -(-log tau - log(1 - pi_1)) / (1 - pi_1) once mu_2 has "
                "reached the target (tests/test_chen2025.py), which the exact RKL gradient does not contain."
            ),
            rows=rows,
        )
    )

    # 4. exact RKL keeps the old mass (no drop)
    worst_beta, worst_drop = np.inf, -np.inf
    for k in keys:
        for lr in (0.01, 0.15):
            r = runs[k][("rkl", lr)]
            worst_beta = min(worst_beta, float(r["beta"].mean(axis=0).min()))
            worst_drop = max(worst_drop, float(r["drop"].mean(axis=0).max()))
    claims.append(
        ctx.claim(
            "exact_rkl_keeps_mass",
            "The exact reverse KL in the same setting keeps the old mode: the old weight never falls below "
            "beta* and the old overlap is not lost.",
            "T3 (no mass forgetting), [V] claim 3",
            f"min_t beta(t) >= beta* = {beta_star:g}; drop <= 0",
            f"min_t beta = {fmt(worst_beta)}, max_t drop = {fmt(worst_drop)} (seed means, all positions, lr 0.01 and 0.15)",
            "beta >= beta* - 0.01, drop <= 0.01",
            worst_beta >= beta_star - 0.01 and worst_drop <= 0.01,
            note="beta rises above beta* while the learner's new component sits where p* has little mass.",
            min_beta=worst_beta,
            max_drop=worst_drop,
        )
    )

    # 5. exact RKL is mode-seeking: it does not reach the far new mode, unlike the surrogate
    rows, ok = [], True
    for k in keys:
        exact = float(runs[k][("rkl", 0.01)]["gain"][:, -1].mean())
        exact_fast = float(runs[k][("rkl", 0.15)]["gain"][:, -1].mean())
        surrogate = float(runs[k][("chen2025_rkl", 0.01)]["gain"][:, -1].mean())
        m_n = float(runs[k][("rkl", 0.15)]["m_n"][:, -1].mean())
        rows.append((positions[k], exact, exact_fast, surrogate, m_n))
        ok &= max(exact, exact_fast) < 0.5 <= surrogate
    claims.append(
        ctx.claim(
            "exact_rkl_mode_seeking",
            "Unlike CRNC25's surrogate, the exact reverse KL does not learn the far new mode from their "
            "initialisation (mode-seeking local optimum): its gain stays small.",
            "section 5 (surrogate != grad KL(q || p*)); outside T3's assumptions",
            "gain_exact(T) < 0.5 <= gain_surrogate(T)",
            "; ".join(
                f"x={p:g}: exact {fmt(e)} (lr .01) / {fmt(f)} (lr .15, m_n -> {fmt(m)}) vs surrogate {fmt(s)}"
                for p, e, f, s, m in rows
            ),
            "at every position",
            ok,
            note=(
                "T3's global convergence is stated for equal, fixed covariances and m_n(0) on the correct side; CRNC25's "
                "learner has learned, unequal scales, an old group slowed 200x and m_n(0) = 0.5, more than 4 new-mode scales "
                "from the target. The exact RKL widens its new component or drifts toward the old mode instead of "
                "crossing the gap, so it 'retains' by not learning; the surrogate's reward log(p_2/q_2) pulls the new "
                "component to the target regardless of the old mode."
            ),
            rows=rows,
        )
    )

    # ---- figure 1: drop / gain curves per position
    fig, axes = new_figure(len(keys), 2, width=3.7, height=3.0, sharex=True)
    for col, k in enumerate(keys):
        for r, (label, o, lr) in enumerate(RUNS):
            run = runs[k][(o, lr)]
            for row, var in enumerate(("drop", "gain")):
                m, se = _mean_se(run[var])
                ax = axes[row, col]
                ls = "--" if o == "rkl" else "-"
                ax.plot(steps, m, ls, color=color(r), lw=1.5, label=label)
                ax.fill_between(steps, m - 2 * se, m + 2 * se, color=color(r), alpha=0.18, lw=0)
        axes[0, col].set_title(f"target new mode at x = {positions[k]:g}", fontsize=10)
        axes[1, col].set_xlabel("iteration (SGD step, 1000 samples each)")
        axes[1, col].axhline(GAIN_THRESHOLD, color="0.5", lw=0.8, ls=":")
    axes[0, 0].set_ylabel("drop = overlap_old(0) - overlap_old(t)")
    axes[1, 0].set_ylabel("gain = overlap_new(t) - overlap_new(0)")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    fig.suptitle(
        f"CRNC25 toy: forgetting (drop) and learning (gain), mean ± 2 s.e. over {n_seeds} seeds; "
        "learner new mean starts at 0.5",
        fontsize=10,
    )
    ctx.save_figure(fig, "chen2025_drop_gain")

    # ---- figure 2: CRNC25-style density overlay for the main setting (seed 0)
    cfg = cfgs[main]
    xs = np.linspace(-8, 8, 500)
    target = beta_star * _normal(xs, cfg["target_old_mean"], cfg["target_old_scale"]) + (1 - beta_star) * _normal(
        xs, positions[main], cfg["target_new_scale"]
    )
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    shown = [RUNS[0], RUNS[1], RUNS[2], RUNS[4]]
    fig, axes = new_figure(len(shown), 1, width=3.8, height=3.2, sharey=True)
    for col, (label, o, lr) in enumerate(shown):
        ax = axes[0, col]
        run = runs[main][(o, lr)]
        every = 10
        for j in range(0, len(steps), every):
            q = run["beta"][0, j] * _normal(xs, run["m_o"][0, j], run["s_o"][0, j]) + (1 - run["beta"][0, j]) * _normal(
                xs, run["m_n"][0, j], run["s_n"][0, j]
            )
            ax.plot(xs, q, color=cmap((j / steps[-1]) ** 0.7), lw=0.9, alpha=0.9)
        ax.plot(xs, target, "k--", lw=1.5, label="target p")
        d, g = run["drop"][0, -1], run["gain"][0, -1]
        label_panel(ax, f"Drop {d:.3f}\nGain {g:.3f}", loc="upper right")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("x")
    axes[0, 0].set_ylabel("density")
    axes[0, 0].legend(fontsize=8, loc="upper left")
    sm = __import__("matplotlib.cm", fromlist=["ScalarMappable"]).ScalarMappable(cmap=cmap)
    sm.set_array([0, 1])
    cbar = fig.colorbar(sm, ax=axes[0, -1], shrink=0.9)
    cbar.set_label("(iteration / 200)^0.7")
    fig.suptitle(
        f"CRNC25 bi-modal overlay (every {every}th iterate, seed 0, target new mode at x = {positions[main]:g})",
        fontsize=10,
    )
    ctx.save_figure(fig, "chen2025_overlay")
    return claims
