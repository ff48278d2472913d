"""Figures from a store (forget_jax/plots.py): heatmaps, line plots and trajectories render to
non-trivial images, the theory overlays equal an independent NumPy computation of the
closed forms in docs/science/claims.md (T2: beta = lambda; D6/T6: ((1 - lambda)(1 - beta))^B), and user mistakes end in a
one-line ValueError (CLI: exit status 2 and one `error:` line).

Two tiny sweeps are built once per module (20 steps, logged every 10)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from matplotlib import image as mpimg
from matplotlib.figure import Figure
from scipy import integrate, optimize, stats
from typer.testing import CliRunner

import forget_jax
from forget_jax import plots
from forget_jax.cli import app
from forget_jax.plots import plot_store, theory_overlay
from forget_jax.store import open_store


@pytest.fixture(scope="module")
def phase_store(tmp_path_factory):
    """FKL vs RKL, population estimator: objective x separation x replay_ratio, one seed."""
    path = tmp_path_factory.mktemp("plots") / "phase.zarr"
    config = dict(
        name="phase",
        estimator="population",
        steps=20,
        log_every=10,
        learning_rate=0.1,
        samplewise_items=0,  # no plot here reads the sample-wise variables; they are most of the compile
        grid=dict(objective=["fkl", "rkl"], separation=[2.0, 4.0], replay_ratio=[0.0, 0.25, 0.5]),
    )
    forget_jax.sweep(config, out=path, progress=False)
    return path


@pytest.fixture(scope="module")
def starve_store(tmp_path_factory):
    """RKL, score estimator with ancestral sampling: batch_size x replay_ratio, two seeds."""
    path = tmp_path_factory.mktemp("plots") / "starve.zarr"
    config = dict(
        name="starve",
        objective="rkl",
        estimator="score",
        sampling="ancestral",
        steps=20,
        log_every=10,
        learning_rate=0.05,
        seeds=2,
        samplewise_items=0,
        grid=dict(batch_size=[2, 8], replay_ratio=[0.0, 0.5]),
    )
    forget_jax.sweep(config, out=path, progress=False)
    return path


def _assert_image(path, min_kb=15, min_colours=30):
    assert path.exists()
    assert path.stat().st_size > min_kb * 1024, path.stat().st_size
    pixels = mpimg.imread(path)
    colours = np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)
    assert len(colours) > min_colours, len(colours)


@pytest.fixture
def overlay_spy(monkeypatch):
    """Records every call of theory_overlay made by plot_store, with what it returned."""
    calls = []

    def spy(var, **kwargs):
        value = theory_overlay(var, **kwargs)
        calls.append((var, kwargs, value))
        return value

    monkeypatch.setattr(plots, "theory_overlay", spy)
    return calls


# ---------------------------------------------------------------------------------------------
# the overlays against an independent NumPy computation


def _fkl_population_optimum(lam, delta=4.0):
    """argmin_beta KL(p_lambda || q_beta), p_lambda = lambda N(0,1) + (1-lambda) N(Delta,1) and
    q_beta the same components with weight beta, by scipy quad and bounded scalar minimisation."""
    p = lambda x: lam * stats.norm.pdf(x) + (1 - lam) * stats.norm.pdf(x, delta)

    def kl(beta):
        q = lambda x: beta * stats.norm.pdf(x) + (1 - beta) * stats.norm.pdf(x, delta)
        return integrate.quad(lambda x: p(x) * np.log(p(x) / q(x)), -12, delta + 12, points=[0.0, delta])[0]

    return optimize.minimize_scalar(kl, bounds=(1e-6, 1 - 1e-6), method="bounded", options={"xatol": 1e-9}).x


def test_theory_overlay_matches_numpy():
    lam, batch, beta = np.meshgrid([0.0, 0.1, 0.35, 0.6, 0.9], [1, 2, 8, 32, 64], [0.05, 0.5, 0.8], indexing="ij")
    starve = theory_overlay(
        "starved_fraction",
        objective="rkl",
        replay_ratio=lam,
        batch_size=batch,
        old_weight=beta,
        estimator="score",
        sampling="ancestral",
    )
    np.testing.assert_allclose(starve, np.power((1.0 - lam) * (1.0 - beta), batch), rtol=1e-12, atol=0)
    # docs/science/claims.md fact 10: beta = .05, lambda = .1, B = 8 -> .2856
    single = theory_overlay("starved_fraction", objective="rkl", replay_ratio=0.1, batch_size=8, old_weight=0.05)
    assert abs(float(single) - 0.2856) < 5e-4
    # forward KL draws its batch from p_lambda: the old share is lambda alone
    fkl = theory_overlay("starved_fraction", objective="fkl", replay_ratio=lam, batch_size=batch, estimator="score")
    np.testing.assert_allclose(fkl, np.power(1.0 - lam, batch), rtol=1e-12, atol=0)
    # T2: the FKL population optimum, independently: minimise KL(p_lambda || q_beta) over beta by
    # scipy (means at the truth, Delta = 4, KL by quad); the overlay must sit at that minimiser
    lams = np.array([0.1, 0.35, 0.6, 0.9])
    optimum = theory_overlay("old_weight", objective="fkl", replay_ratio=lams)
    np.testing.assert_allclose(optimum, [_fkl_population_optimum(v) for v in lams], atol=1e-6)
    # no closed form drawn: reverse KL old weight, population / stratified starvation, other variables
    assert theory_overlay("old_weight", objective="rkl", replay_ratio=lam) is None
    assert (
        theory_overlay(
            "starved_fraction",
            objective="rkl",
            replay_ratio=lam,
            batch_size=batch,
            old_weight=beta,
            estimator="population",
        )
        is None
    )
    assert (
        theory_overlay(
            "starved_fraction",
            objective="rkl",
            replay_ratio=lam,
            batch_size=batch,
            old_weight=beta,
            sampling="stratified",
        )
        is None
    )
    assert theory_overlay("old_drift", objective="fkl", replay_ratio=lam) is None


# ---------------------------------------------------------------------------------------------
# the three views


def test_heatmap_with_fkl_optimum(phase_store, tmp_path, overlay_spy):
    ds = open_store(phase_store)
    out = tmp_path / "new" / "folder" / "heat.png"
    fig = plot_store(ds, x="separation", y="replay_ratio", var="old_weight", sel={"objective": "fkl"}, out=out)
    assert isinstance(fig, Figure) and fig.axes  # the Figure comes back, and is saved to out
    _assert_image(out)
    ((var, kwargs, value),) = overlay_spy
    assert var == "old_weight" and kwargs["objective"] == "fkl"
    np.testing.assert_array_equal(value, kwargs["replay_ratio"])  # contours of beta = lambda over the plane


def test_starvation_heatmap_and_trajectory(starve_store, tmp_path, overlay_spy):
    ds = open_store(starve_store)
    heat = tmp_path / "s.png"
    plot_store(ds, x="batch_size", y="replay_ratio", var="starved_fraction", step="mean", out=heat)
    _assert_image(heat)
    ((_var, kwargs, value),) = overlay_spy
    assert kwargs["objective"] == "rkl" and value is not None
    beta = kwargs["old_weight"]
    logged = float(ds["old_weight"].mean())
    assert beta == pytest.approx(logged, rel=1e-6)  # the mean logged old weight (mean over everything)
    assert beta != 0.5  # ... not the configured beta(0)
    np.testing.assert_allclose(value, ((1 - kwargs["replay_ratio"]) * (1 - beta)) ** kwargs["batch_size"], rtol=1e-12)

    overlay_spy.clear()
    traj = tmp_path / "t.png"
    plot_store(ds, x="step", y="replay_ratio", var="starved_fraction", sel={"batch_size": "2"}, out=traj)
    _assert_image(traj)
    assert len(overlay_spy) == 2 and all(v is not None for _, _, v in overlay_spy)  # one per line


def test_line_plot_and_pdf(phase_store, tmp_path, overlay_spy):
    ds = open_store(phase_store)
    png = tmp_path / "line.png"
    plot_store(ds, x="replay_ratio", var="old_weight", sel={"separation": "4"}, out=png)
    _assert_image(png)
    drawn = {kw["objective"]: v for _, kw, v in overlay_spy}
    assert drawn["rkl"] is None
    np.testing.assert_allclose(drawn["fkl"], np.linspace(0.0, 0.5, 200))  # the identity line beta = lambda
    pdf = tmp_path / "line.pdf"
    plot_store(ds, x="replay_ratio", var="old_weight", sel={"separation": "4"}, out=pdf)
    assert pdf.read_bytes()[:4] == b"%PDF"


def test_default_views(phase_store, tmp_path):
    ds = open_store(phase_store)
    req = plots._resolve(ds, None, None, "old_weight", None)
    assert (req.kind, req.x, req.y, req.averaged) == ("heatmap", "objective", "separation", ["replay_ratio"])
    req = plots._resolve(ds, None, None, "old_weight", {"objective": "rkl", "separation": "2"})
    assert (req.kind, req.x, req.hue) == ("line", "replay_ratio", None)
    req = plots._resolve(ds, None, None, "old_weight", {"objective": "rkl", "separation": "2", "replay_ratio": "0.25"})
    assert (req.kind, req.x) == ("trajectory", "step")
    req = plots._resolve(ds, "step", None, "old_weight", {"objective": "fkl"})
    assert (req.kind, req.hue, req.averaged) == ("trajectory", "separation", ["replay_ratio"])
    plot_store(ds, out=tmp_path / "default.png")
    _assert_image(tmp_path / "default.png")
    plot_store(ds, sel={"objective": "fkl", "separation": "4", "replay_ratio": "0.5"}, out=tmp_path / "one.png")
    _assert_image(tmp_path / "one.png", min_kb=10, min_colours=10)


def test_figure_without_out_writes_nothing_and_default_out_stays_in_its_folder(phase_store, tmp_path, monkeypatch):
    """out=None returns the Figure and writes no file; the default file name never leaves the
    store's folder (or the working directory), whatever the config's `name` says."""
    monkeypatch.chdir(tmp_path)
    ds = open_store(phase_store)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    fig = plot_store(ds, x="separation", y="replay_ratio", sel={"objective": "fkl"})
    assert isinstance(fig, Figure) and fig.axes[0].get_xlabel().endswith("separation")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert plots.default_out(ds, "old_weight") == phase_store.with_name(phase_store.name + ".old_weight.png")
    for name in ("../x", "/etc/passwd", "..", "a/../../b", ""):
        memory = xr.Dataset(attrs={"name": name})  # no source: a Dataset not opened from a store
        path = plots.default_out(memory, "old_weight")
        assert path.parent == Path(".") and path.name.endswith(".old_weight.png"), (name, path)
        assert not path.name.startswith(".") and "/" not in path.name, (name, path)


def test_steps_and_selection_values(phase_store):
    ds = open_store(phase_store)
    assert plots._resolve_step(ds, "last").value == 20
    exact = plots._resolve_step(ds, "10")
    assert (exact.value, exact.note) == (10, "")
    near = plots._resolve_step(ds, 13)
    assert near.value == 10 and "nearest logged step to 13" in near.note
    assert plots._cast(ds, "separation", "4") == 4.0
    assert plots._cast(ds, "replay_ratio", "0.250") == 0.25
    assert plots._cast(ds, "objective", "rkl") == "rkl"
    assert plots._cast(ds, "seed", "0") == 0


def test_diverged_runs_are_masked_and_counted(phase_store):
    ds = open_store(phase_store).load()
    diverged = ds["diverged"].copy()
    diverged.loc[dict(objective="fkl", separation=4.0, replay_ratio=0.5)] = True
    ds["diverged"] = diverged
    req = plots._resolve(ds, "separation", "replay_ratio", "old_weight", {"objective": "fkl"})
    data = plots._selected(ds, "old_weight", req, plots._resolve_step(ds, "last"))
    assert np.isnan(data.sel(separation=4.0, replay_ratio=0.5)).all()
    assert np.isfinite(data.sel(separation=2.0)).all()
    title = plots._title(req, "old_weight", plots._resolve_step(ds, "last"), ds, [])
    assert "1/6 runs diverged (masked)" in title
    ds["diverged"] = ds["diverged"] | True
    with pytest.raises(ValueError, match="no finite value"):
        plot_store(ds, x="separation", y="replay_ratio", sel={"objective": "fkl"}, out="unused.png")


BAD = [
    (dict(var="nope"), ["var='nope'", "old_weight", "starved_fraction"]),
    (dict(x="separation", y="replay_ratio", sel={"objective": "sft"}), ["objective=sft", "fkl, rkl"]),
    (dict(x="separation", y="replay_ratio", sel={"separation": "3"}), ["separation=3", "2, 4"]),
    (dict(x="separation", y="replay_ratio", sel={"lr": "1"}), ["'lr'", "objective, separation, replay_ratio, seed"]),
    (dict(x="sepration"), ["x='sepration'", "separation", "step"]),
    (dict(x="step", y="nope"), ["y='nope'", "replay_ratio"]),
    (dict(x="separation", sel={"separation": "2"}), ["x='separation'", "sel"]),
    (dict(step="soon"), ["step='soon'", "logged steps 0..20 every 10"]),
    (dict(step="500"), ["step=500", "outside"]),
]


@pytest.mark.parametrize("kwargs, needles", BAD, ids=[str(i) for i in range(len(BAD))])
def test_user_errors_are_one_line(phase_store, tmp_path, kwargs, needles):
    ds = open_store(phase_store)
    with pytest.raises(ValueError) as info:
        plot_store(ds, **{**dict(out=tmp_path / "x.png"), **kwargs})
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)
    assert not (tmp_path / "x.png").exists()


def test_bad_extension(phase_store, tmp_path):
    with pytest.raises(ValueError, match=r"use \.png or \.pdf"):
        plot_store(open_store(phase_store), out=tmp_path / "x.jpg")


# ---------------------------------------------------------------------------------------------
# the CLI end to end


def test_cli_plot(phase_store, tmp_path):
    out = tmp_path / "figs" / "f.png"
    result = CliRunner().invoke(
        app,
        [
            "plot",
            str(phase_store),
            "--x",
            "separation",
            "--y",
            "replay_ratio",
            "--var",
            "old_weight",
            "--sel",
            "objective=fkl",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.stdout
    _assert_image(out)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--var", "nope"], "var='nope'"),
        (["--x", "separation", "--y", "replay_ratio", "--sel", "objective=xyz"], "objective=xyz"),
        (["--x", "nofield"], "x='nofield'"),
        (["--sel", "nofield=1"], "'nofield'"),
        (["--sel", "objective"], "field=value"),
        (["--step", "abc"], "step='abc'"),
    ],
)
def test_cli_plot_errors(phase_store, tmp_path, args, needle):
    result = CliRunner().invoke(app, ["plot", str(phase_store), *args, "--out", str(tmp_path / "e.png")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert needle in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "e.png").exists()
