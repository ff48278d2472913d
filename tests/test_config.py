"""Sweep configuration: grid expansion, defaults, the chen2025 preset, dims order, and validation
(every mistake is rejected by load_config with one line naming the field, the value and what is
allowed, before anything runs). No JAX program is compiled here."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from forget_jax.config import ConfigError, config_model, load_config

# ---------------------------------------------------------------------------------------------
# grid expansion


def test_grid_lists_linspace_logspace_match_numpy():
    spec = load_config(
        {
            "grid": {
                "separation": {"linspace": [0.5, 6.0, 12]},
                "learning_rate": {"logspace": [-3, -1, 5]},
                "replay_ratio": [0.0, 0.1, 0.5],
                "init_old_weight": 0.3,  # a scalar is a one-value axis
            }
        }
    )
    np.testing.assert_array_equal(spec.axes["separation"], np.linspace(0.5, 6.0, 12))
    np.testing.assert_array_equal(spec.axes["learning_rate"], np.logspace(-3, -1, 5))
    assert spec.axes["replay_ratio"] == [0.0, 0.1, 0.5]
    assert spec.axes["init_old_weight"] == [0.3]
    assert spec.shape == (12, 5, 3, 1, 1)
    assert spec.size == 180


def test_grid_values_keep_their_types():
    spec = load_config({"grid": {"batch_size": [8, 64], "objective": ["fkl", "rkl"], "estimator": ["score"]}})
    assert spec.axes["batch_size"] == [8, 64] and all(type(b) is int for b in spec.axes["batch_size"])
    assert spec.axes["objective"] == ["fkl", "rkl"]


def test_yaml_file_equals_dict(tmp_path):
    cfg = {
        "objective": "rkl",
        "estimator": "score",
        "seeds": 3,
        "grid": {"separation": {"linspace": [1, 4, 4]}, "replay_ratio": [0.0, 0.2]},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    a, b = load_config(path), load_config(cfg)
    assert a.to_yaml() == b.to_yaml()
    assert a.axes == b.axes and a.seeds == b.seeds == [0, 1, 2]


def test_to_yaml_round_trips():
    spec = load_config(
        {
            "objective": "fkl",
            "estimator": "score",
            "batch_size": 16,
            "seeds": 2,
            "seed_offset": 5,
            "grid": {"separation": {"linspace": [1, 3, 3]}, "learning_rate": [0.01, 0.1]},
        }
    )
    again = load_config(yaml.safe_load(spec.to_yaml()))
    assert again.to_yaml() == spec.to_yaml()
    assert again.axes == spec.axes and again.dims == spec.dims
    assert again.seeds == spec.seeds == [5, 6]


# ---------------------------------------------------------------------------------------------
# defaults and dims


def test_defaults():
    spec = load_config({})
    base = spec.base
    assert base == config_model()()  # the model of now: another test file may have registered fields
    assert (base.objective, base.estimator, base.sampling) == ("fkl", "population", "ancestral")
    assert (base.dim, base.batch_size, base.steps, base.log_every) == (1, 64, 1000, 10)
    assert (base.weight_param, base.optimizer) == ("logit", "sgd")
    assert (base.separation, base.target_old_weight, base.init_old_weight) == (4.0, 0.5, 0.5)
    assert (base.init_old_offset, base.init_new_offset, base.replay_ratio) == (0.0, -1.0, 0.0)
    assert base.learning_rate == 0.05
    assert base.seeds == 1
    assert spec.axes == {} and spec.dims == ("seed",) and spec.shape == (1,)


def test_empty_yaml_file_is_refused_and_empty_mapping_is_all_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing set\n")
    with pytest.raises(ConfigError, match="empty config"):
        load_config(path)  # an empty file is a mistake (it used to run the defaults silently)
    path.write_text("{}  # every default, on purpose\n")
    assert load_config(path).base == config_model()()


def test_dims_order_static_first_then_traced_then_seed():
    spec = load_config(
        {
            "estimator": "score",
            "seeds": 2,
            "grid": {
                "separation": [1.0, 2.0],
                "objective": ["fkl", "rkl"],
                "replay_ratio": [0.0, 0.1, 0.2],
                "batch_size": [8, 16],
                "learning_rate": [0.1],
            },
        }
    )
    assert spec.dims == ("objective", "batch_size", "separation", "replay_ratio", "learning_rate", "seed")
    assert spec.shape == (2, 2, 2, 3, 1, 2)
    point = spec.point((1, 0, 1, 2, 0, 1))
    assert (point.objective, point.batch_size, point.separation, point.replay_ratio) == ("rkl", 8, 2.0, 0.2)


def test_user_keys_and_grid_win_over_base():
    spec = load_config({"separation": 3.0, "grid": {"separation": [1.0, 5.0]}})
    assert spec.axes["separation"] == [1.0, 5.0]
    assert spec.point((1, 0)).separation == 5.0


# ---------------------------------------------------------------------------------------------
# the chen2025 preset: CRNC25's TwoModeSetting (docs/science/studies.md section 5), numbers written out here


def _crnc25_checks(base):
    # Grid: x in [-8, 8], 500 points; NUM_ITERS = 200; NUM_SAMPLES = 1000; every iteration logged
    assert tuple(base.overlap_grid) == (-8.0, 8.0, 500)
    assert base.steps == 200 and base.batch_size == 1000 and base.log_every == 1
    # target p = 0.75 N(-3.0, 1.0) + 0.25 N(3.5, 0.7)   (sigmas are standard deviations)
    assert base.target_old_weight == 0.75
    assert base.target_old_mean == -3.0 and base.target_old_scale == 1.0
    assert base.target_old_mean + base.separation * base.target_old_scale == pytest.approx(3.5)
    assert base.target_new_scale == 0.7
    # initial learner q = 0.75 N(-3.5, 1.0) + 0.25 N(0.5, 0.7)
    assert base.init_old_weight == 0.75
    assert base.target_old_mean + base.init_old_offset == pytest.approx(-3.5)
    assert 3.5 + base.init_new_offset == pytest.approx(0.5)
    assert base.init_old_scale == 1.0 and base.init_new_scale == 0.7
    # plain SGD, pi_1 learned directly and clipped to [1e-3, 1 - 1e-3], sigma >= 1e-3, scales learned
    assert base.optimizer == "sgd" and base.weight_param == "direct"
    assert base.weight_clip == 1e-3 and base.scale_min == 1e-3 and base.train_scales
    assert base.train_weight and base.train_old_mean and base.train_new_mean
    # SLOW_FACTOR = 0.005 on the old group, REINFORCE_BETA = 0.1, no replay
    assert base.old_lr_scale == 0.005 and base.new_lr_scale == 1.0
    assert base.reward_temperature == 0.1
    assert base.replay_ratio == 0.0
    assert base.dim == 1


@pytest.mark.parametrize("objective, lr", [("chen2025_fkl", 0.15), ("chen2025_rkl", 0.01)])
def test_chen2025_preset_fills_crnc25_setting(objective, lr):
    base = load_config({"objective": objective}).base
    _crnc25_checks(base)
    assert base.objective == objective
    assert base.learning_rate == lr  # FWD_LR[0] = 0.15, REV_LR = [0.01]


def test_chen2025_preset_user_keys_win():
    base = load_config({"objective": "chen2025_fkl", "steps": 20, "batch_size": 50, "learning_rate": 0.01}).base
    assert (base.steps, base.batch_size, base.learning_rate) == (20, 50, 0.01)
    assert base.old_lr_scale == 0.005 and base.target_new_scale == 0.7


def test_chen2025_config_files():
    fkl = load_config("configs/chen2025.yaml")
    _crnc25_checks(fkl.base)
    assert fkl.base.objective == "chen2025_fkl"
    assert fkl.axes == {"learning_rate": [0.15, 0.01]}  # FWD_LR = [0.15, 0.01]
    assert fkl.dims == ("learning_rate", "seed") and len(fkl.seeds) == 8
    rkl = load_config("configs/chen2025_rkl.yaml")
    _crnc25_checks(rkl.base)
    assert rkl.base.objective == "chen2025_rkl" and rkl.base.learning_rate == 0.01 and rkl.axes == {}


def test_shipped_configs_load():
    quick = load_config("configs/quickstart.yaml")
    assert quick.dims == ("objective", "separation", "replay_ratio", "seed")
    phase = load_config("configs/phase_fkl_rkl.yaml")
    assert phase.dims == ("objective", "batch_size", "separation", "replay_ratio", "seed")
    assert phase.axes["objective"] == ["fkl", "rkl"]
    assert (phase.base.estimator, phase.base.sampling) == ("score", "ancestral")


# ---------------------------------------------------------------------------------------------
# validation: (config, substrings the one-line message must contain)

BAD = [
    ("replay_ratio_one", {"replay_ratio": 1.0}, ["replay_ratio", "1.0", "less than 1"]),
    ("replay_ratio_negative", {"replay_ratio": -0.1}, ["replay_ratio", "-0.1", "greater than or equal to 0"]),
    ("batch_size_zero", {"batch_size": 0}, ["batch_size", "0", "greater than or equal to 1"]),
    ("batch_size_fraction", {"batch_size": 3.5}, ["batch_size", "3.5", "integer"]),
    ("separation_negative", {"separation": -1}, ["separation", "-1", "greater than or equal to 0"]),
    ("unknown_objective", {"objective": "sdft2"}, ["objective", "'sdft2'", "'fkl'", "'rkl'", "'chen2025_fkl'"]),
    (
        "sdft_unknown_conditioning",
        {"objective": "sdft", "sdft_conditioning": "tilt"},
        ["sdft_conditioning", "'tilt'", "anchor_component"],
    ),
    ("oapl_fractional_lag", {"objective": "oapl", "oapl_lag": 2.5}, ["oapl_lag=2.5"]),
    ("typo_key", {"seperation": 3.0}, ["seperation", "did you mean 'separation'"]),
    ("steps_not_divisible", {"steps": 100, "log_every": 30}, ["log_every=30", "steps=100", "divide"]),
    (
        "linspace_two_args",
        {"grid": {"separation": {"linspace": [0, 1]}}},
        ["grid.separation", "linspace", "[0, 1]", "[start, stop, count]"],
    ),
    (
        "range_kind_typo",
        {"grid": {"separation": {"linspce": [0, 1, 3]}}},
        ["grid.separation", "linspce", "linspace", "logspace"],
    ),
    (
        "logspace_fractional_count",
        {"grid": {"learning_rate": {"logspace": [-3, -1, 2.5]}}},
        ["grid.learning_rate", "2.5", "integer count"],
    ),
    ("empty_grid_list", {"grid": {"separation": []}}, ["grid.separation", "empty", "at least one value"]),
    (
        "grid_unknown_field",
        {"grid": {"temperature": [1, 2]}},
        ["temperature", "not a griddable field", "reward_temperature"],
    ),
    ("grid_seeds", {"grid": {"seeds": [1, 2]}}, ["'seeds'", "not a griddable field"]),
    ("grid_not_mapping", {"grid": [1, 2]}, ["grid", "[1, 2]", "mapping"]),
    ("learning_rate_string", {"learning_rate": "abc"}, ["learning_rate", "'abc'", "valid number"]),
    ("learning_rate_zero", {"learning_rate": 0}, ["learning_rate", "0", "greater than 0"]),
    ("steps_string", {"steps": "many"}, ["steps", "'many'", "integer"]),
    (
        "rkl_pathwise_replay",
        {"objective": "rkl", "estimator": "pathwise", "replay_ratio": 0.2},
        ["replay_ratio=0.2", "objective=rkl", "pathwise", "estimator=score or population"],
    ),
    (
        "rkl_pathwise_replay_grid",
        {"objective": "rkl", "estimator": "pathwise", "grid": {"replay_ratio": [0.0, 0.2]}},
        ["replay_ratio=0.2", "pathwise", "estimator=score or population"],
    ),
    ("dim_unequal_scales", {"dim": 2, "target_new_scale": 0.5}, ["dim=2", "equal", "target_new_scale=0.5"]),
    ("dim_zero", {"dim": 0}, ["dim", "0", "greater than or equal to 1"]),
    ("init_old_weight_zero", {"init_old_weight": 0}, ["init_old_weight", "0", "greater than 0"]),
    ("target_old_weight_one", {"target_old_weight": 1}, ["target_old_weight", "1", "less than 1"]),
    ("seeds_zero", {"seeds": 0}, ["seeds", "0", "greater than or equal to 1"]),
    ("seeds_list", {"seeds": [0, 1, 2]}, ["seeds", "[0, 1, 2]", "integer"]),
    (
        "weight_param_softmax",
        {"weight_param": "softmax"},
        ["weight_param", "'softmax'", "'logit'", "'direct'", "'replicator'"],
    ),
    ("optimizer_rmsprop", {"optimizer": "rmsprop"}, ["optimizer", "'rmsprop'", "'sgd'", "'adam'"]),
    ("estimator_unknown", {"estimator": "reinforce"}, ["estimator", "'reinforce'", "'population'", "'score'"]),
    ("sampling_unknown", {"sampling": "random"}, ["sampling", "'random'", "'ancestral'", "'stratified'"]),
    ("log_every_zero", {"log_every": 0}, ["log_every", "0", "greater than or equal to 1"]),
    ("grid_value_out_of_range", {"grid": {"replay_ratio": [0.5, 1.2]}}, ["grid.replay_ratio", "1.2", "less than 1"]),
    (
        "grid_value_wrong_type",
        {"grid": {"learning_rate": [0.1, "fast"]}},
        ["grid.learning_rate", "'fast'", "valid number"],
    ),
    ("grid_static_value_bad", {"grid": {"batch_size": [8, 0]}}, ["grid.batch_size", "0", "greater than or equal to 1"]),
    ("grid_log_every_not_dividing", {"steps": 100, "grid": {"log_every": [10, 30]}}, ["log_every=30", "steps=100"]),
    ("grid_objective_unknown", {"grid": {"objective": ["fkl", "sft"]}}, ["objective", "'sft'", "'fkl'"]),
    (
        "chen2025_population",
        {"objective": "chen2025_fkl", "estimator": "population"},
        ["objective=chen2025_fkl", "estimator=score"],
    ),
    (
        "chen2025_objective_grid",
        {"objective": "chen2025_fkl", "grid": {"objective": ["chen2025_fkl", "chen2025_rkl"]}},
        ["grid.objective", "chen2025_rkl", "0.15", "0.01"],
    ),
]


@pytest.mark.parametrize("raw, expected", [pytest.param(r, e, id=i) for i, r, e in BAD])
def test_bad_config_rejected_with_one_line(raw, expected):
    with pytest.raises(ConfigError) as info:
        load_config(raw)
    message = str(info.value)
    assert "\n" not in message, message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("- a\n- b\n", ["mapping", "list"]),
        ("just a string\n", ["mapping", "str"]),
        ("42\n", ["mapping", "int"]),
        ("a: [1, 2\n", ["not valid YAML"]),
        ("seperation: 3\n", ["seperation", "did you mean 'separation'"]),
    ],
    ids=["yaml_list", "yaml_string", "yaml_int", "yaml_syntax", "yaml_typo"],
)
def test_bad_yaml_file_rejected_with_one_line(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message, message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_missing_file_rejected(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_valid_corner_cases_accepted():
    # rkl + replay is fine with the score estimator (ancestral) and the population estimator
    load_config({"objective": "rkl", "estimator": "score", "replay_ratio": 0.3})
    load_config({"objective": "rkl", "estimator": "population", "replay_ratio": 0.3})
    # rkl + pathwise without replay is fine
    load_config({"objective": "rkl", "estimator": "pathwise", "grid": {"separation": [1, 2]}})
    # dim > 1 with equal fixed scales
    load_config({"dim": 8, "estimator": "score"})
    # chen2025 grid over objectives is fine when the learning rate is set explicitly
    spec = load_config(
        {"objective": "chen2025_fkl", "learning_rate": 0.01, "grid": {"objective": ["chen2025_fkl", "chen2025_rkl"]}}
    )
    assert spec.axes["objective"] == ["chen2025_fkl", "chen2025_rkl"] and spec.base.learning_rate == 0.01
