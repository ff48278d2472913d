"""Continual post-training pipelines (docs/science/pipelines.md P1-P3): stage schedules over K modes.

* P1, FKL multi-task replay optimum (store `pipelines-p1`, K = 4, Delta = 8, population, logit):
  after an FKL stage on task s with replay lambda split by the shares over the earlier tasks E,
  the weights are w_s = 1 - lambda, w_j = lambda share_j (j in E), 0 elsewhere
  (`theory.fkl_stage_weights`); without replay every earlier task's weight decays below the
  Theta(1/(eta t)) envelope 2 / (1 / w_k(0) + eta t) (w_k(0): its weight when the stage starts).
* P2, SFT -> RL recovery time (stores `pipelines-p2-logit`, `pipelines-p2-direct`, K = 2, means
  frozen at the targets): an FKL stage on task 1 without replay leaves beta_0 (its learning rate sets
  how far beta falls: logit beta_0 ~ 1 / (1 / beta(0) + eta T), direct beta_0 ~ linear in eta T),
  then population RKL to the full target. N = RL steps until beta >= beta* / 2, read from the
  logged beta (the first log point at or past it), against the discrete separated-limit map
  (`theory.rkl_recovery_steps`, Delta = 10), the finite-separation flow
  (`theory.rkl_recovery_time_finite_separation` plus the Euler offset, Delta = 5), the logit
  small-weight closed form (`theory.rkl_recovery_time_asymptotic`) and the direct rule's
  beta_0-independence. Delta = 2.5 is reported (the separated law is off by about 2x there).
* P3, starvation over K modes (store `pipelines-p3`, K = 3, pathwise FKL stage, B = 8): the
  per-step starved fraction of each mode against (1 - pi_k)^B for the p_train weights pi
  (`theory.mode_starvation_probability`; for the earlier tasks `theory.replay_starvation_bound`).

beta_0 and every weight a prediction starts from are read from the run (never assumed).
"""

from __future__ import annotations

import math

import numpy as np
import yaml
from matplotlib.lines import Line2D

from .. import theory
from .figures import MARKERS, color, label_panel, new_figure
from .framework import Context, fmt

NAME = "pipelines"
TITLE = "Pipelines: K-mode FKL replay optimum, SFT -> RL recovery time, K-mode starvation (P1-P3)"
COST = 2.0
CLAIMS = (
    "pipelines.p1_replay_optimum",
    "pipelines.p1_no_replay_collapse",
    "pipelines.p2_separated_steps",
    "pipelines.p2_finite_separation",
    "pipelines.p2_logit_law",
    "pipelines.p2_direct_flat",
    "pipelines.p3_starvation",
)

#: P1 (docs/science/pipelines.md "The claims the study checks"): absolute tolerance on each weight.
P1_WEIGHT_TOL = 1e-3
#: P1 without replay: earlier weights vs the separated-limit GD map, relative.
P1_MAP_REL_TOL = 1e-2
#: P2: N vs the discrete separated-limit map, relative part and steps (plus one log interval).
P2_REL_TOL, P2_STEP_TOL = 0.02, 2
#: P2 at finite separation: N vs T_Delta + (1/2) ln(f_end / f_0) + [0, 1), relative.
P2_FINITE_REL_TOL = 0.05
SEPARATED = 10.0
FINITE = 5.0
#: P3: binomial standard errors allowed (as PD3).
P3_Z = 3.0


# ---------------------------------------------------------------------------------------------
# schedule helpers (the store's `stages` attribute and `config`)


def _config(ds) -> dict:
    return yaml.safe_load(ds.attrs["config"])


def _earlier(stages: list[dict]) -> list[tuple[int, ...]]:
    """Earlier tasks of each stage (docs: mode 0 and the tasks of earlier stages, minus its own)."""
    done, out = [0], []
    for st in stages:
        task = st.get("task")
        out.append(tuple(t for t in dict.fromkeys(done) if t != task))
        if task is not None:
            done.append(task)
    return out


def _stage_value(cfg: dict, coords: dict, index: int, name: str, default):
    """A stage's value of a field: its grid coordinate, else the stage's own entry, else top level."""
    key = f"stages.{index}.{name}"
    if key in coords:
        return coords[key]
    stage = cfg["stages"][index]
    if name in stage:
        return stage[name]
    if name in coords:
        return coords[name]
    return cfg.get(name, default)


def _grid(da):
    """(grid dims, iterator of (index tuple, coords dict)) over the dims other than step / mode."""
    dims = [d for d in da.dims if d not in ("step", "mode")]
    shape = [da.sizes[d] for d in dims]
    values = {d: da[d].values for d in dims}

    def points():
        for idx in np.ndindex(*shape):
            yield idx, {d: values[d][i].item() for d, i in zip(dims, idx, strict=True)}

    return dims, points()


def _shares_text(stage: dict) -> str:
    shares = stage.get("replay_shares")
    return "equal" if shares is None else " / ".join(f"{x:g}" for x in shares)


def _stage_optimum(k_modes: int, stage: dict, lam: float, earlier: tuple[int, ...]) -> np.ndarray:
    """P1's weights after an FKL stage (theory.fkl_stage_weights; lambda = 0 replays nothing)."""
    if lam == 0:
        return theory.fkl_stage_weights(k_modes, stage["task"], 0.0, ())
    return theory.fkl_stage_weights(k_modes, stage["task"], lam, earlier, stage["replay_shares"])


def _separated_fkl_map(w0: np.ndarray, pi: np.ndarray, eta: float, steps: int) -> np.ndarray:
    """The weights after `steps` of logit GD on the separated-limit FKL loss const - sum_k pi_k log w_k,
    in float64 from the update rule (pipeline/modes.py: K logits, w = softmax(a), each stepped at
    eta / 2, so that K = 2's a_0 - a_1 = logit beta takes the two-mode step eta): dL/da = w - pi."""
    a = np.log(np.asarray(w0, np.float64))
    for _ in range(int(steps)):
        w = np.exp(a - np.logaddexp.reduce(a))
        a = a - 0.5 * eta * (w - pi)
    return np.exp(a - np.logaddexp.reduce(a))


def _log_index(ds, step: int) -> int:
    steps = ds["step"].values
    i = int(np.searchsorted(steps, step))
    if i >= steps.size or steps[i] != step:
        raise ValueError(f"step {step} is not a log point")
    return i


# ---------------------------------------------------------------------------------------------
# P1


def _analyze_p1(ds, ctx: Context) -> list:
    ds = ds.isel(seed=0)
    cfg = _config(ds)
    stages = ds.attrs["stages"]
    earlier = _earlier(stages)
    k_modes = int(ds.sizes["mode"])
    w_all = ds["mode_weight"]
    _, points = _grid(w_all)
    rows, collapse, premise, tails = [], [], [], []
    for idx, coords in points:
        w = np.asarray(w_all.values[idx], np.float64)  # (step, K)
        for s, st in enumerate(stages):
            if st["objective"] != "fkl":
                continue
            lam = float(_stage_value(cfg, coords, s, "replay_ratio", 0.0))
            eta = float(_stage_value(cfg, coords, s, "learning_rate", 0.01))
            start, end = _log_index(ds, st["first_step"]), _log_index(ds, st["end_step"])
            pi = _stage_optimum(k_modes, st, lam, earlier[s])
            if lam > 0:
                err = np.abs(w[end] - pi)
                rows.append(dict(coords=coords, stage=s, lam=lam, err=float(err.max()), w=w[end], pi=pi))
                trained = pi[pi > 0]
                premise.append(st["steps"] >= 10.0 / (eta * trained.min()))
            else:
                reference = _separated_fkl_map(w[start], pi, eta, st["steps"])
                for j in earlier[s]:
                    bound = 2.0 / (1.0 / w[start, j] + eta * st["steps"])
                    collapse.append(
                        dict(
                            coords=coords,
                            stage=s,
                            mode=j,
                            w=w[end, j],
                            map=reference[j],
                            decay=4.0 / (eta * st["steps"]),
                            bound=bound,
                        )
                    )
            for j in range(k_modes):  # modes neither trained nor replayed in this stage: the tail
                if pi[j] == 0 and (lam > 0 or j not in earlier[s]):
                    tails.append(dict(stage=s, mode=j, w=w[end, j], w0=w[start, j], eta=eta, t=st["steps"]))
    worst = max(rows, key=lambda r: r["err"])
    tail_text = ", ".join(
        f"stage {r['stage']} mode {r['mode']}: {fmt(r['w'])} (envelope {fmt(2 / (1 / r['w0'] + r['eta'] * r['t']))})"
        for r in sorted(tails, key=lambda r: -r["w"])[:3]
    )
    claims = [
        ctx.claim(
            "p1_replay_optimum",
            f"After each FKL stage with replay lambda > 0 (K = {k_modes}, Delta = {cfg['separation']:g}; shares: "
            + "; ".join(f"stage {i} {_shares_text(st)}" for i, st in enumerate(stages) if len(earlier[i]) > 1)
            + "), the mode weights are P1's optimum.",
            "P1 (docs/science/pipelines.md)",
            "w_task = 1 - lambda, w_j = lambda share_j (j earlier), 0 elsewhere (theory.fkl_stage_weights)",
            f"max |w_k - w_k^P1| = {fmt(worst['err'])} over {len(rows)} stage ends x {k_modes} weights "
            f"(worst: stage {worst['stage']}, lambda = {worst['lam']:g}, w = {fmt(worst['w'])})",
            f"<= {P1_WEIGHT_TOL:g} on every weight; every stage runs t >= 10 / (eta min_j pi_j) steps "
            f"({'yes' if all(premise) else 'NO'})",
            worst["err"] <= P1_WEIGHT_TOL and all(premise),
            note="The residual is the Theta(1/(eta t)) tail of the modes the stage neither trains nor replays "
            f"(largest: {tail_text}): the replayed weights sit at pi_j (1 - tail). The premise t >= 10 / (eta min pi) "
            "alone is not enough for 1e-3: stage 1 runs 10000 steps because at 1500 steps the untrained task 3 "
            "still holds 1.9e-3 (separated-limit map from stage 0's end weights).",
            max_abs_error=worst["err"],
            premise=all(premise),
            tails=[dict(stage=r["stage"], mode=r["mode"], weight=r["w"]) for r in tails],
        )
    ]
    map_err = max(abs(c["w"] - c["map"]) / c["map"] for c in collapse)
    decay = max(c["w"] / c["decay"] for c in collapse)
    envelope = max(c["w"] / c["bound"] for c in collapse)
    claims.append(
        ctx.claim(
            "p1_no_replay_collapse",
            "Without replay (lambda = 0) every earlier task loses its mass in an FKL stage (logit GD): its weight "
            "follows the separated-limit gradient flow to 0, Theta(1 / (eta t)).",
            "P1, T1 (docs/science/pipelines.md)",
            "w_j(T) = separated-limit softmax GD from the stage's start (dL/da = w - pi, every logit at eta / 2); "
            "w_j(T) <= 4 / (eta T)",
            f"max |w_j(T) - w_j^map(T)| / w_j^map(T) = {fmt(map_err)}; max w_j(T) eta T / 4 = {fmt(decay)} over "
            f"{len(collapse)} (stage, task) pairs; max w_j(T) = {fmt(max(c['w'] for c in collapse))}",
            f"relative <= {P1_MAP_REL_TOL:g} (float32 logits over <= 1e4 steps: <= 5e-3 systematic, doubled; the "
            "overlap at Delta = 8 is e^-8 of the gradient) and ratio <= 1",
            map_err <= P1_MAP_REL_TOL and decay <= 1.0,
            note="docs/science/pipelines.md's envelope 2 / (1 / w_j(0) + eta t), with w_j(0) the weight at the stage "
            f"start, does not hold here: max w_j(T) / envelope = {fmt(envelope)}. When the dominant mode hands its mass "
            "to the new task, an unreplayed earlier task first gains weight (softmax GD: dw_j/dt = -(eta/2) w_j (w_j - "
            "sum_k w_k (w_k - pi_k)) > 0 while sum_k w_k^2 > w.pi + w_j), by up to 55x in stage 2 after a "
            "no-replay stage 1; the separated map shows the same. 4 / (eta T) is twice the K = 2 late-time "
            "1 / (eta t) law per logit pair, allowing for that transient (a measured envelope, not a bound).",
            max_map_rel_error=map_err,
            max_decay_ratio=decay,
            max_stage_start_envelope_ratio=envelope,
        )
    )
    _figure_p1(ds, cfg, stages, earlier, ctx)
    return claims


def _figure_p1(ds, cfg: dict, stages: list[dict], earlier, ctx: Context) -> None:
    w_all = ds["mode_weight"]
    dims = [d for d in w_all.dims if d not in ("step", "mode")]
    lo = {d: 0 for d in dims}
    hi = {d: w_all.sizes[d] - 1 for d in dims}
    picks = [("no replay", lo), ("replay in stages 1 and 2", hi)]
    k_modes = int(ds.sizes["mode"])
    steps = ds["step"].values
    fig, axes = new_figure(2, 1, width=5.2, height=3.6)
    for ax, (title, sel) in zip(axes[0], picks, strict=True):
        w = np.asarray(w_all.isel(sel).values, np.float64)
        coords = {d: w_all[d].values[i].item() for d, i in sel.items()}
        ax.stackplot(
            steps, w.T, colors=[color(k) for k in range(k_modes)], labels=[f"mode {k}" for k in range(k_modes)]
        )
        for st in stages:
            ax.axvline(st["end_step"], color="0.2", lw=0.8, ls="--")
        for s, st in enumerate(stages):
            lam = float(_stage_value(cfg, coords, s, "replay_ratio", 0.0))
            pi = _stage_optimum(k_modes, st, lam, earlier[s])
            ax.plot([st["end_step"]] * k_modes, np.cumsum(pi), "k_", ms=14, mew=2)
            ax.text(
                (st["first_step"] + st["end_step"]) / 2,
                1.02,
                f"FKL task {st['task']}\n$\\lambda$ = {lam:g}",
                ha="center",
                va="bottom",
                fontsize=7,
            )
        ax.set_xlim(0, steps[-1])
        ax.set_ylim(0, 1.12)
        ax.set_xlabel("step (stage boundaries dashed)")
        ax.set_ylabel("mode weights (stacked)")
        ax.set_title(f"P1: {title}", fontsize=9)
        label_panel(ax, "black bars: P1 optimum (cumulative)", loc="lower left")
    axes[0, 0].legend(fontsize=7, loc="center left")
    ctx.save_figure(fig, "pipelines_mode_weights")


# ---------------------------------------------------------------------------------------------
# P2


def _recoveries(ds) -> list[dict]:
    """One row per grid point: Delta, eta_SFT, eta_RL, beta_0, N (RL steps to beta* / 2, logged)."""
    ds = ds.isel(seed=0)
    cfg = _config(ds)
    stages = ds.attrs["stages"]
    rl = next(i for i, st in enumerate(stages) if st["objective"] == "rkl")
    first = int(stages[rl]["first_step"])
    i0 = _log_index(ds, first)
    steps = ds["step"].values
    beta_star = float(cfg["target_old_weight"])
    beta_end = beta_star / 2
    beta = ds["old_weight"]
    _, points = _grid(beta)
    rows = []
    for idx, coords in points:
        trace = np.asarray(beta.values[idx], np.float64)
        b0 = float(trace[i0])
        hit = np.nonzero(trace[i0:] >= beta_end)[0]
        rows.append(
            dict(
                separation=float(coords.get("separation", cfg.get("separation"))),
                eta_sft=float(_stage_value(cfg, coords, rl - 1, "learning_rate", 0.01)),
                sft_steps=int(stages[rl - 1]["steps"]),
                beta_init=float(cfg["init_old_weight"]),
                eta=float(_stage_value(cfg, coords, rl, "learning_rate", 0.01)),
                beta0=b0,
                n=float(steps[i0 + hit[0]] - first) if hit.size else math.inf,
                beta_star=beta_star,
                beta_end=beta_end,
                weight_param=cfg.get("weight_param", "logit"),
                weight_clip=float(cfg.get("weight_clip", 1e-3)),
                log_every=int(cfg["log_every"]),
            )
        )
    return rows


def _euler_offset(row: dict) -> float:
    """(1/2) ln(f(x_end) / f(x_0)) at finite separation: f the per-step increment of the updated
    coordinate (logit: a, f = -eta beta (1 - beta) dL_R/dbeta; direct: beta, f = -eta dL_R/dbeta)."""

    def f(b: float) -> float:
        g = -theory.rkl_weight_gradient(b, row["beta_star"], row["separation"])
        return g * (b * (1 - b) if row["weight_param"] == "logit" else 1.0)

    return 0.5 * math.log(f(row["beta_end"]) / f(row["beta0"]))


def _analyze_p2(logit_stores: list, direct_stores: list, ctx: Context) -> list:
    rows = [r for ds in [*logit_stores, *direct_stores] for r in _recoveries(ds)]
    for r in rows:
        r["n_sep"] = float(
            theory.rkl_recovery_steps(
                r["beta0"], r["beta_end"], r["beta_star"], r["eta"], r["weight_param"], weight_clip=r["weight_clip"]
            )
        )
        r["t_sep"] = float(
            theory.rkl_recovery_time(r["beta0"], r["beta_end"], r["beta_star"], r["eta"], r["weight_param"])
        )
        if r["separation"] < SEPARATED and r["beta0"] < r["beta_end"]:
            r["t_delta"] = theory.rkl_recovery_time_finite_separation(
                r["beta0"], r["beta_end"], r["beta_star"], r["eta"], r["weight_param"], r["separation"]
            )
            r["offset"] = _euler_offset(r)
    sep = [r for r in rows if r["separation"] == SEPARATED]
    claims = []
    sft = [r for r in sep if r["weight_param"] == "logit"]
    product = [r["beta0"] * (1 / r["beta_init"] + r["eta_sft"] * r["sft_steps"]) for r in sft]
    ctx.notes.append(
        f"P2 SFT (logit, Delta = {SEPARATED:g}, SFT lengths {sorted({r['sft_steps'] for r in sft})}): beta_0 spans "
        f"[{fmt(min(r['beta0'] for r in sft))}, {fmt(max(r['beta0'] for r in sft))}] and "
        f"beta_0 (1 / beta(0) + eta_SFT T_SFT) lies in [{fmt(min(product))}, {fmt(max(product))}] (separated FKL "
        "without replay: d(1/beta)/dt = eta (1 - beta), so beta_0 depends on eta_SFT T_SFT only)."
    )

    # separated limit: the discrete map
    dev = [abs(r["n"] - r["n_sep"]) - (P2_REL_TOL * r["n_sep"] + P2_STEP_TOL + r["log_every"]) for r in sep]
    rel = [abs(r["n"] - r["n_sep"]) / r["n_sep"] for r in sep]
    rel_long = [abs(r["n"] - r["n_sep"]) / r["n_sep"] for r in sep if r["n"] >= 20 * r["log_every"]]
    b0s = [r["beta0"] for r in sep]
    claims.append(
        ctx.claim(
            "p2_separated_steps",
            f"At Delta = {SEPARATED:g} the RL steps from beta_0 to beta*/2 follow the discrete separated-limit map "
            f"(logit and direct, beta_0 in [{fmt(min(b0s))}, {fmt(max(b0s))}] read from the SFT stage's end, "
            f"{len({r['eta'] for r in sep})} RL learning rates).",
            "P2 (docs/science/pipelines.md)",
            "N = theory.rkl_recovery_steps(beta_0, beta*/2, beta*, eta, weight_param)",
            f"max |N - N_map| / N_map = {fmt(max(rel))} over {len(sep)} runs ({fmt(max(rel_long))} where N >= 20 log "
            f"intervals); N in [{fmt(min(r['n'] for r in sep))}, {fmt(max(r['n'] for r in sep))}] steps",
            f"|N - N_map| <= {P2_REL_TOL:g} N_map + {P2_STEP_TOL} steps + one log interval "
            f"(logit {sep[0]['log_every']}, direct {sep[-1]['log_every']} steps)",
            max(dev) <= 0 and all(math.isfinite(r["n"]) for r in sep),
            note="N is read from the logged beta (the first log point at or past beta*/2), hence the log interval.",
            max_rel_error=max(rel),
        )
    )

    # finite separation: the finite-Delta flow plus the Euler offset
    fin = [r for r in rows if r["separation"] == FINITE]
    ok, ratios, sep_ratio, long = [], [], [], []
    for r in fin:
        lo = (r["t_delta"] + r["offset"]) * (1 - P2_FINITE_REL_TOL)
        hi = (r["t_delta"] + r["offset"] + 1) * (1 + P2_FINITE_REL_TOL) + r["log_every"]
        ok.append(lo <= r["n"] <= hi and r["n"] > r["n_sep"])
        ratios.append(r["n"] / (r["t_delta"] + r["offset"]))
        if r["n"] >= 20 * r["log_every"]:
            long.append(ratios[-1])
        sep_ratio.append(r["n"] / r["n_sep"])
    small = [r for r in rows if r["separation"] < FINITE and "t_delta" in r]
    if small:
        ctx.notes.append(
            f"P2 at Delta = {small[0]['separation']:g} (reported): N / N_map(separated) in "
            f"[{fmt(min(r['n'] / r['n_sep'] for r in small))}, {fmt(max(r['n'] / r['n_sep'] for r in small))}], "
            f"N / (T_Delta + offset) in [{fmt(min(r['n'] / (r['t_delta'] + r['offset']) for r in small))}, "
            f"{fmt(max(r['n'] / (r['t_delta'] + r['offset']) for r in small))}] over {len(small)} runs: the separated "
            "law undershoots recovery by up to 2x; the finite-separation flow (means at their targets) still holds."
        )
    claims.append(
        ctx.claim(
            "p2_finite_separation",
            f"At Delta = {FINITE:g} the separated law stops holding (recovery is slower) and the finite-separation "
            "flow predicts N (means at their targets).",
            "P2, 'Where the separated limit stops holding' (docs/science/pipelines.md)",
            "N = T_Delta + (1/2) ln(f_end / f_0) + [0, 1) (theory.rkl_recovery_time_finite_separation); N > N_map",
            f"N / (T_Delta + offset) in [{fmt(min(ratios))}, {fmt(max(ratios))}] ([{fmt(min(long))}, {fmt(max(long))}] "
            f"where N >= 20 log intervals); N / N_map(separated) in [{fmt(min(sep_ratio))}, {fmt(max(sep_ratio))}] "
            f"over {len(fin)} runs",
            f"within {P2_FINITE_REL_TOL:g} relative (+ one log interval) of the finite-Delta prediction, and N > N_map",
            all(ok),
            max_rel_error=max(abs(x - 1) for x in ratios),
            separated_ratio=[min(sep_ratio), max(sep_ratio)],
        )
    )

    # logit: the small-weight closed form
    lg = [r for r in sep if r["weight_param"] == "logit"]
    lg_small = [r for r in lg if r["beta0"] <= 0.1 * r["beta_end"]]  # the small-weight regime of the law
    ok, shown = [], []
    for r in lg_small:
        t_small = float(
            theory.rkl_recovery_time_asymptotic(r["beta0"], r["beta_end"], r["beta_star"], r["eta"], "logit")
        )
        c = r["beta_star"] / (1 - r["beta_star"])
        u_end = math.log(c / r["beta_end"])
        eps = -math.log1p(-r["beta_end"]) / u_end
        bound = 1 / ((1 - r["beta_end"]) ** 2 * (1 - eps)) - 1
        slack = P2_REL_TOL + (P2_STEP_TOL + r["log_every"]) / r["n"]
        x = r["n"] / t_small - 1
        ok.append(-slack <= x <= bound + slack)
        u0 = math.log(c / r["beta0"])
        r["leading"] = r["n"] * r["eta"] * r["beta0"] * u0
        shown.append((r["beta0"], x, r["leading"], 1 + 1 / u0 + 2 / u0**2))
    small_b = [s for s in shown if s[0] <= 1.1e-3]
    claims.append(
        ctx.claim(
            "p2_logit_law",
            "Logit: recovery from beta_0 takes ~ 1 / (eta beta_0 log(c / beta_0)) steps (c = beta* / (1 - beta*)).",
            "P2 small-weight law (docs/science/pipelines.md)",
            "N ~ (1 / (eta c)) [Ei(u_0) - Ei(u_end)] ~ (1 / (eta beta_0 u_0)) (1 + 1/u_0 + 2/u_0^2), u = log(c / beta)",
            f"N / T_closed - 1 in [{fmt(min(s[1] for s in shown))}, {fmt(max(s[1] for s in shown))}] over {len(shown)} "
            f"runs with beta_0 <= beta_end / 10; "
            f"N eta beta_0 u_0 = {fmt([s[2] for s in small_b])} vs 1 + 1/u_0 + 2/u_0^2 = {fmt([s[3] for s in small_b])} "
            "at beta_0 <= 1e-3",
            "0 <= N / T_closed - 1 <= 1 / ((1 - beta_end)^2 (1 - eps)) - 1 (the closed form's bound), each side widened "
            f"by {P2_REL_TOL:g} + ({P2_STEP_TOL} steps + log interval) / N",
            all(ok),
            note="The leading term 1 / (eta beta_0 log(c / beta_0)) alone is low by 1/u_0 + 2/u_0^2 + ..., which "
            "vanishes only logarithmically (docs).",
            closed_form_deviation=[s[1] for s in shown],
        )
    )

    # direct: nearly independent of beta_0
    dr = [r for r in sep if r["weight_param"] == "direct"]
    ok, spreads = [], []
    a_star = math.log(dr[0]["beta_star"] / (1 - dr[0]["beta_star"]))
    for eta in sorted({r["eta"] for r in dr}):
        group = [r for r in dr if r["eta"] == eta and r["beta0"] < r["beta_end"]]
        top = max(r["beta0"] for r in group)
        bound = top / (eta * (a_star - math.log(top / (1 - top)))) + 2 + (group[0]["log_every"] - 1)
        spread = max(r["n"] for r in group) - min(r["n"] for r in group)
        spreads.append((eta, spread, bound))
        ok.append(spread <= bound)
    contrast = []
    for eta in sorted({r["eta"] for r in lg}):
        group = sorted((r for r in lg if r["eta"] == eta), key=lambda r: r["beta0"])
        contrast.append(group[0]["n"] / group[-1]["n"])
    claims.append(
        ctx.claim(
            "p2_direct_flat",
            "Direct: the recovery time is nearly independent of beta_0 (O(beta* / eta)), unlike the logit's.",
            "P2 small-weight law (docs/science/pipelines.md)",
            "spread of N over beta_0 <= beta_0max / (eta (a* - logit beta_0max)) + 2 steps",
            "direct spread (eta: spread / bound) = "
            + ", ".join(f"{eta:g}: {s:g} / {fmt(b)}" for eta, s, b in spreads)
            + f" over beta_0 in [{fmt(min(r['beta0'] for r in dr))}, {fmt(max(r['beta0'] for r in dr))}]; "
            f"logit N(min beta_0) / N(max beta_0) = {fmt(contrast)}",
            "spread <= bound for every eta (+ log interval - 1)",
            all(ok),
            note="For eta >~ beta_0 the discrete direct rule jumps by eta log(c / beta_0) in its first step, which makes "
            "N flatter still.",
            spreads=spreads,
        )
    )
    _figure_p2(rows, ctx)
    return claims


def _figure_p2(rows: list[dict], ctx: Context) -> None:
    """eta N against beta_0 (log-log): in units of 1 / eta the RL learning rates collapse onto one curve
    per separation (exactly for the flow; the discrete map is drawn at the smallest eta)."""
    fig, axes = new_figure(2, 1, width=5.0, height=4.0)
    for ax, wp in zip(axes[0], ("logit", "direct"), strict=True):
        mine = [r for r in rows if r["weight_param"] == wp and math.isfinite(r["n"])]
        etas = sorted({r["eta"] for r in mine})
        seps = sorted({r["separation"] for r in mine}, reverse=True)
        r0 = mine[0]
        b_lo = min(r["beta0"] for r in mine) / 2
        b_hi = min(max(r["beta0"] for r in mine if r["beta0"] < r0["beta_end"]) * 1.2, r0["beta_end"] * 0.9)
        grid = np.geomspace(b_lo, b_hi, 60)
        args = (r0["beta_end"], r0["beta_star"])
        n_map = theory.rkl_recovery_steps(grid, *args, etas[0], wp, weight_clip=r0["weight_clip"])
        ax.plot(grid, etas[0] * n_map, "-", color=color(0), lw=1.4, label=rf"separated map ($\eta$ = {etas[0]:g})")
        law = theory.rkl_recovery_time_asymptotic(grid, *args, 1.0, wp)
        ax.plot(grid, law, ":", color="0.3", lw=1.2, label="small-weight closed form")
        coarse = np.geomspace(b_lo, b_hi, 11)
        for j, sep in enumerate(seps):
            if sep != SEPARATED:
                flow = [theory.rkl_recovery_time_finite_separation(b, *args, 1.0, wp, sep, nodes=41) for b in coarse]
                ax.plot(coarse, flow, "--", color=color(j), lw=1.0, label=rf"finite-$\Delta$ flow, $\Delta$ = {sep:g}")
            for i, eta in enumerate(etas):
                pts = [r for r in mine if r["eta"] == eta and r["separation"] == sep]
                ax.plot(
                    [r["beta0"] for r in pts],
                    [eta * r["n"] for r in pts],
                    MARKERS[i],
                    color=color(j),
                    mfc="none" if i else color(j),
                    ms=5,
                )
        handles, _ = ax.get_legend_handles_labels()
        handles += [
            Line2D([], [], ls="", marker="s", color=color(j), label=rf"runs, $\Delta$ = {sep:g}")
            for j, sep in enumerate(seps)
        ]
        handles += [
            Line2D(
                [], [], ls="", marker=MARKERS[i], color="0.4", mfc="none" if i else "0.4", label=rf"$\eta$ = {eta:g}"
            )
            for i, eta in enumerate(etas)
        ]
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(r"$\beta_0$ (old weight at the end of SFT)")
        ax.set_ylabel(r"$\eta\,N$: RL steps to $\beta^*/2$ times $\eta$")
        ax.set_title(
            f"P2 {wp}: SFT $\\to$ RL recovery ($\\beta^*$ = {r0['beta_star']:g}, means at targets)", fontsize=9
        )
        ax.legend(handles=handles, fontsize=6.5, loc="best", ncol=2)
    ctx.save_figure(fig, "pipelines_recovery_time")


# ---------------------------------------------------------------------------------------------
# P3


def _analyze_p3(ds, ctx: Context) -> list:
    cfg = _config(ds)
    stages = ds.attrs["stages"]
    earlier = _earlier(stages)
    k_modes = int(ds.sizes["mode"])
    s = next(i for i, st in enumerate(stages) if _stage_value(cfg, {}, i, "estimator", "population") != "population")
    st = stages[s]
    every = int(cfg["log_every"])
    batch = int(_stage_value(cfg, {}, s, "batch_size", 64))
    steps = ds["step"].values
    inside = (steps > st["first_step"]) & (steps <= st["end_step"])
    frac = ds["mode_starved_fraction"]
    seed_axis = frac.dims.index("seed")
    rows = []
    _, points = _grid(frac.isel(seed=0))
    for idx, coords in points:
        lam = float(_stage_value(cfg, coords, s, "replay_ratio", 0.0))
        shares = st["replay_shares"] or [1.0 / len(earlier[s])] * len(earlier[s])
        pi = theory.fkl_stage_weights(k_modes, st["task"], lam, earlier[s], shares)
        predicted = np.asarray(theory.mode_starvation_probability(pi, batch), np.float64)
        bound = np.asarray(theory.replay_starvation_bound(lam, shares, batch), np.float64)
        values = np.moveaxis(np.asarray(frac.values), seed_axis, -1)[idx]  # (step, mode, seed)
        values = values[inside]
        counts = np.rint(values * every).sum(axis=(0, 2))
        n = values.shape[0] * values.shape[2] * every
        for k in range(k_modes):
            p = predicted[k]
            se = math.sqrt(max(p * (1 - p), 0.0) / n)
            measured = counts[k] / n
            z = (measured - p) / se if se > 0 else (0.0 if measured == p else math.inf)
            replay = bound[earlier[s].index(k)] if k in earlier[s] else None
            rows.append(dict(lam=lam, mode=k, p=p, measured=measured, se=se, z=z, n=n, replay=replay))
    max_z = max(abs(r["z"]) for r in rows)
    agree = max(abs(r["replay"] - r["p"]) for r in rows if r["replay"] is not None)
    claims = [
        ctx.claim(
            "p3_starvation",
            f"In a Monte Carlo FKL stage (K = {k_modes}, B = {batch}, replay lambda split "
            f"{_shares_text(st)} over tasks {list(earlier[s])}), a batch misses mode k with "
            "probability (1 - pi_k)^B; for an earlier task j that is (1 - lambda share_j)^B.",
            "P3 (docs/science/pipelines.md), D6",
            "starved fraction = theory.mode_starvation_probability(p_train weights, B) "
            "= theory.replay_starvation_bound on the earlier tasks",
            f"max |z| = {fmt(max_z)} over {len(rows)} (lambda, mode) cells of {rows[0]['n']} batches each; "
            f"measured {fmt([r['measured'] for r in rows])} vs {fmt([r['p'] for r in rows])}",
            f"|z| <= {P3_Z:g} binomial standard errors (as PD3); both theory functions agree to 1e-6 (float32)",
            max_z <= P3_Z and agree <= 1e-6,
            max_abs_z=max_z,
        )
    ]
    fig, axes = new_figure(1, 1, width=4.8, height=4.2)
    ax = axes[0, 0]
    for k in range(k_modes):
        pts = [r for r in rows if r["mode"] == k]
        ax.errorbar(
            [r["p"] for r in pts],
            [r["measured"] for r in pts],
            yerr=[P3_Z * r["se"] for r in pts],
            fmt=MARKERS[k],
            color=color(k),
            ms=5,
            capsize=2,
            label=f"mode {k}" + (" (task)" if k == st["task"] else " (replayed)" if k in earlier[s] else ""),
        )
    ax.plot([0, 1], [0, 1], "--", color="0.4", lw=1, label="identity")
    ax.set_xlabel(r"predicted $(1 - \pi_k)^B$")
    ax.set_ylabel("measured starved fraction")
    ax.set_title(f"P3: K = {k_modes}, B = {batch}, pathwise FKL stage ({rows[0]['n']} batches per cell)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    label_panel(ax, rf"bars: $\pm${P3_Z:g} binomial s.e.", loc="lower right")
    ctx.save_figure(fig, "pipelines_starvation")
    return claims


# ---------------------------------------------------------------------------------------------


def analyze(stores, ctx: Context):
    claims = _analyze_p1(stores["pipelines-p1"], ctx)
    logit = [ds for name, ds in sorted(stores.items()) if name.startswith("pipelines-p2-logit")]
    direct = [ds for name, ds in sorted(stores.items()) if name.startswith("pipelines-p2-direct")]
    claims += _analyze_p2(logit, direct, ctx)
    claims += _analyze_p3(stores["pipelines-p3"], ctx)
    return claims
