"""The field table (fields.py) as the single declaration of every configuration field, the
objective registry, and the import graph.

* A toy objective declared in this file (its loss, one knob, a rule) validates, sweeps, lands in
  the store and gets a plot label with no edit anywhere else; its dynamics are checked against
  their closed form, so the test fails if the knob does not reach the loss.
* The README configuration table is the generated one (fails when it drifts).
* Derived views agree with the table: Setup / Hyper defaults, pydantic bounds and choices.
* Import graph: theory.py is a leaf of formulas (no objective, loop or engine-derived module),
  the store imports neither the runner nor the loop, the runner does not use the package
  `__init__`, and module-level imports have no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

import forget_jax
from forget_jax import fields, plots
from forget_jax.config import ConfigError, config_model, load_config
from forget_jax.model import learner_mixture, target_mixture
from forget_jax.objectives import Estimate, Objective, register, unregister

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "forget_jax"


# ---------------------------------------------------------------------------------------------
# a toy objective, entirely local to this file


def toy_pull(params, hyper, setup, key, companion):
    r"""L = kappa / 2 |m_n - mu_n*|^2 / s_n*^2: pulls the new mean to its target at rate kappa, and
    nothing else moves. Under GD with step eta, m_n(t) - mu_n* = (1 - eta kappa)^t (m_n(0) - mu_n*)."""
    target = target_mixture(hyper, setup)
    q = learner_mixture(params, setup)
    loss = 0.5 * hyper.toy_stiffness * jnp.sum(jnp.square(q.new_mean - target.new_mean)) / jnp.square(target.new_scale)
    return loss, Estimate(loss, jnp.zeros((), bool), jnp.ones((), setup.dtype))


def _stable_step(v):
    if v["objective"] == "toy" and v["learning_rate"] * v["toy_stiffness"] >= 2:
        return f"learning_rate * toy_stiffness = {v['learning_rate'] * v['toy_stiffness']} must be < 2 (stable GD)"
    return None


TOY = Objective(
    "toy",
    toy_pull,
    "a quadratic pull of the new mean (test only)",
    fields=(
        fields.Field(
            "toy_stiffness", "traced", 1.0, "stiffness kappa of the toy pull", gt=0, symbol="κ", objective=("toy",)
        ),
    ),
    rules=(fields.Rule(("objective", "learning_rate", "toy_stiffness"), _stable_step, "toy GD is stable"),),
)


@pytest.fixture
def toy():
    register(TOY)
    yield TOY
    unregister("toy")


def test_toy_objective_validates_sweeps_stores_and_labels(toy, tmp_path):
    base = {
        "objective": "toy",
        "estimator": "population",
        "steps": 20,
        "log_every": 5,
        "learning_rate": 0.1,
        "init_new_offset": -2.0,
        "name": "toy",
    }
    # validation: bounds and the toy's own cross-field rule, as one-line errors
    with pytest.raises(ConfigError, match=r"toy_stiffness=-1.0: Input should be greater than 0"):
        load_config({**base, "toy_stiffness": -1.0})
    with pytest.raises(ConfigError, match=r"must be < 2 \(stable GD\)"):
        load_config({**base, "grid": {"toy_stiffness": [1.0, 30.0]}})
    with pytest.raises(ConfigError, match="did you mean 'toy_stiffness'"):
        load_config({**base, "toy_stifness": 1.0})

    kappas = [0.5, 1.0, 2.0]
    ds = forget_jax.sweep({**base, "grid": {"toy_stiffness": kappas}}, out=tmp_path / "toy.zarr", progress=False)
    stored = xr.open_zarr(tmp_path / "toy.zarr")
    assert stored.toy_stiffness.values.tolist() == kappas
    error = stored.new_mean_error.sel(seed=0).values  # (kappa, step)
    steps = stored.step.values
    expected = 2.0 * np.abs(1 - 0.1 * np.asarray(kappas))[:, None] ** steps[None, :]
    np.testing.assert_allclose(error, expected, rtol=1e-5)
    np.testing.assert_allclose(ds.old_weight.values, 0.5, rtol=1e-6)  # the pull moves nothing else
    assert plots.label("toy_stiffness") == "κ toy stiffness"
    plots.plot_store(stored, x="toy_stiffness", var="new_mean_error", out=tmp_path / "toy.png")
    assert (tmp_path / "toy.png").exists()


def test_unregistered_toy_leaves_the_table(toy):
    assert "toy_stiffness" in fields.names("traced")
    unregister("toy")
    try:
        assert "toy_stiffness" not in fields.names("traced")
        with pytest.raises(ConfigError, match="objective='toy' is not allowed"):
            load_config({"objective": "toy"})
    finally:
        register(TOY)


def test_a_field_is_declared_once():
    with pytest.raises(ValueError, match="already declared"):
        fields.declare(fields.Field("separation", "traced", 5.0, "a second separation"))


# ---------------------------------------------------------------------------------------------
# derived views


def test_setup_and_hyper_defaults_come_from_the_table():
    setup = forget_jax.Setup()
    for name, f in fields.all_fields().items():
        if f.kind == "static":
            assert getattr(setup, name) == f.default, name
    hyper = forget_jax.make_hyper()
    for name in fields.names("traced"):
        assert float(getattr(hyper, name)) == pytest.approx(fields.get(name).default, rel=1e-7), name
    assert setup == forget_jax.Setup(**fields.defaults("static")) and hash(setup) == hash(forget_jax.Setup())


def test_setup_runs_the_static_rules():
    with pytest.raises(ValueError, match="group_size=3 must divide batch_size=64"):
        forget_jax.Setup(objective="ttt_discover", estimator="score", group_size=3)
    with pytest.raises(ValueError, match="unknown Setup field"):
        forget_jax.Setup(separation=2.0)


@pytest.mark.parametrize("name", ["replay_ratio", "target_old_weight", "learning_rate", "dim", "weight_clip"])
def test_pydantic_bounds_come_from_the_table(name):
    f = fields.get(name)
    model = config_model()
    edge = f.lt if f.lt is not None else (f.le + 1 if f.le is not None else None)
    assert edge is not None
    with pytest.raises(Exception):
        model(**{name: f.type(edge)})
    assert getattr(model(), name) == f.default


def test_choices_come_from_the_table():
    assert fields.get("objective").choices == tuple(forget_jax.objectives.OBJECTIVES)
    with pytest.raises(ConfigError, match="estimator='exact' is not allowed"):
        load_config({"estimator": "exact"})


def test_readme_configuration_table_is_generated():
    readme = (ROOT / "README.md").read_text()
    expected = fields.readme_with_table(readme, fields.markdown_table())
    assert readme == expected, "README configuration table is stale: forget-jax fields --write-readme README.md"


def test_every_field_is_documented():
    for f in fields.all_fields().values():
        assert f.doc and not f.doc.endswith("."), f.name
        assert f.objective == ("all",) or set(f.objective) <= set(forget_jax.objectives.OBJECTIVES), f.name


# ---------------------------------------------------------------------------------------------
# import graph


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(path: Path, module_level_only: bool) -> set[str]:
    """forget_jax modules imported by a file (relative imports resolved; TYPE_CHECKING blocks
    skipped; `from . import x` counts as module x when x is one, else as the package)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(nodes, top: bool):
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node):
                continue
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and module_level_only:
                if isinstance(node, ast.ClassDef):
                    visit(node.body, top)
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("forget_jax"))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("forget_jax"):
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if (ROOT / Path(*sub.split("."))).with_suffix(".py").exists() or (
                        ROOT / Path(*sub.split("."))
                    ).is_dir():
                        found.add(sub)
                    else:
                        found.add(target)
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    visit([child], False)

    visit(tree.body, True)
    found.discard(name)
    return found


def _graph(module_level_only: bool) -> dict[str, set[str]]:
    return {_module_name(p): _imports(p, module_level_only) for p in PACKAGE.rglob("*.py")}


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_theory_is_a_leaf_of_formulas():
    deps = _closure(_graph(module_level_only=False), "forget_jax.theory")
    forbidden = [
        d
        for d in deps
        if d.startswith(
            (
                "forget_jax.objectives",
                "forget_jax.train",
                "forget_jax.analysis",
                "forget_jax.metrics",
                "forget_jax.runner",
                "forget_jax.config",
            )
        )
    ]
    assert not forbidden, forbidden


def test_compiled_loop_does_not_import_theory():
    graph = _graph(module_level_only=False)
    for module in ("forget_jax.train", "forget_jax.metrics", "forget_jax.update", "forget_jax.objectives"):
        assert "forget_jax.theory" not in _closure(graph, module), module


def test_store_imports_neither_runner_nor_loop():
    deps = _closure(_graph(module_level_only=False), "forget_jax.store")
    assert not [d for d in deps if d.startswith(("forget_jax.runner", "forget_jax.train"))], deps


def test_runner_does_not_use_the_package_init():
    graph = _graph(module_level_only=False)
    for module, deps in graph.items():
        if module.startswith("forget_jax.runner"):
            assert "forget_jax" not in deps, module


def test_no_import_cycles():
    graph = _graph(module_level_only=True)
    cyclic = sorted(m for m in graph if m in _closure(graph, m))
    assert cyclic == [], f"module-level import cycles through {cyclic}"


def test_version_is_declared_once():
    from importlib.metadata import version

    from forget_jax._version import __version__

    assert forget_jax.__version__ == __version__ == version("forget-jax")
    assert "version =" not in (ROOT / "pyproject.toml").read_text().split("[tool.setuptools.dynamic]")[0]


def test_shipped_configs_are_found_without_the_source_tree(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the packaged copies are used
    assert load_config("quickstart").base.name == "quickstart"
    assert load_config("configs/quickstart.yaml").base.name == "quickstart"
    from forget_jax.reproduce.framework import configs_dir

    assert (configs_dir() / "pd1.yaml").is_file()


def test_suite_runs_with_strict_dtype_promotion():
    assert jax.config.jax_numpy_dtype_promotion == "strict"
    with pytest.raises(Exception, match="promotion"):
        jnp.ones(2, jnp.float32) + jnp.ones(2, jnp.int32)
