"""Start checks (forget_jax/runner/checks.py): grid points whose start is a symmetric point of the
dynamics are named before a sweep runs, and the quickstart has none.

The start means are computed here from their definition (docs/science/model.md section 1:
mu_o* = target_old_mean, mu_n* = mu_o* + Delta s_o*, m(0) = mu* + offset), not from the engine.
That such a start is locked was measured on the old quickstart (beta = 0.5000 at separation 1 for
every replay ratio after 2000 steps, issue 11); no engine run here (compile budget).
"""

from __future__ import annotations

import numpy as np
import yaml

from forget_jax.config import load_config, resolve_config_path
from forget_jax.runner.checks import start_warnings

#: The quickstart's start before issue 11: the new component 1 below its mode.
OLD_START = dict(init_old_offset=0.0, init_new_offset=-1.0)


def _quickstart(**changes) -> dict:
    raw = yaml.safe_load(resolve_config_path("quickstart").read_text())
    return {**raw, **changes}


def _start_means(cfg: dict, separation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """m_o(0), m_n(0) along e_1 from their definition, float64."""
    mu_o = cfg.get("target_old_mean", 0.0)
    s_o = cfg.get("target_old_scale", 1.0)
    return mu_o + cfg["init_old_offset"] + 0 * separation, mu_o + separation * s_o + cfg["init_new_offset"]


def _separations(cfg: dict) -> np.ndarray:
    a, b, n = cfg["grid"]["separation"]["linspace"]
    return np.linspace(a, b, n)


def test_old_quickstart_start_is_flagged_new_one_is_not():
    old = _quickstart(**OLD_START)
    sep = _separations(old)
    m_o, m_n = _start_means(old, sep)
    coincide = sep[np.isclose(m_o, m_n, rtol=0, atol=1e-9)]
    assert coincide.tolist() == [1.0]  # the column the issue saw: both means start at 0
    lines = start_warnings(load_config(old))
    assert len(lines) == 1, lines
    assert lines[0].startswith("grid point separation=1.0: the old and new components start at the same point")
    assert "init_old_offset=0.0, init_new_offset=-1.0" in lines[0] and "\n" not in lines[0]

    new = _quickstart()
    m_o, m_n = _start_means(new, _separations(new))
    assert np.all(np.abs(m_n - m_o) > 0.5)  # never on top of each other
    # nor mirror images about p_lambda's centre: mu_n* at lambda = 0, the midpoint at lambda = 1/2
    assert np.all(np.abs((m_o + m_n) / 2 - _separations(new)) > 0.1)
    assert np.all(np.abs((m_o + m_n) / 2 - _separations(new) / 2) > 0.1)
    assert start_warnings(load_config(new)) == []


def test_mirror_symmetric_start_and_long_lists_are_capped():
    # offset +1: m_o + m_n = Delta + 1 = 2 mu_n* at Delta = 1, lambda = 0 (FKL trains on N(mu_n*, 1))
    lines = start_warnings(load_config(_quickstart(init_new_offset=1.0)))
    assert len(lines) == 1, lines
    assert lines[0].startswith("grid point objective=fkl, separation=1.0, replay_ratio=0.0: beta(0) = 1/2")
    assert start_warnings(load_config(_quickstart(init_new_offset=1.0, init_old_weight=0.4))) == []
    # the offsets named are each point's own
    cfg = dict(estimator="population", grid=dict(separation=[1.0, 2.0, 3.0], init_new_offset=[-1.0, -2.0]))
    lines = start_warnings(load_config(cfg))
    assert [line.split(":")[0] for line in lines] == [
        "grid point separation=1.0, init_new_offset=-1.0",
        "grid point separation=2.0, init_new_offset=-2.0",
    ]
    assert "init_new_offset=-2.0)" in lines[1]
    # four coincident points (m_o(0) = init_old_offset = m_n(0) = Delta - 1): one line, three examples
    # (init_old_weight .4: no mirror-symmetric point among them)
    grid = dict(separation=[1.0, 2.0, 3.0, 4.0, 5.0], init_old_offset=[1.0, 2.0, 3.0, 4.0, 5.0])
    (line,) = start_warnings(load_config(dict(estimator="population", init_old_weight=0.4, grid=grid)))
    assert line.startswith(
        "4 grid points (e.g. separation=2.0, init_old_offset=1.0; separation=3.0, init_old_offset=2.0;"
    )
