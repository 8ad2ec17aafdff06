import tomllib

import pytest

from common.config import ConfigError, ExperimentConfig, defaults

from .conftest import ROOT


def test_defaults_build_and_round_trip():
    cfg = ExperimentConfig.from_flat({})
    assert cfg.attack.eps == pytest.approx(8 / 255)
    assert ExperimentConfig.from_flat(cfg.to_flat()) == cfg


def test_pyproject_run_config_matches_the_schema():
    # Flower only accepts override keys that pyproject.toml declares: the two must agree.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    from simulation.overrides import flatten

    declared = flatten(pyproject["tool"]["flwr"]["app"]["config"])
    assert declared == defaults()


def test_nested_values_are_typed():
    cfg = ExperimentConfig.from_flat({"train.lr": 1, "fl.num-rounds": 7, "model.width": 16})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.fl.num_rounds == 7 and cfg.model.width == 16


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("attack.eps", -0.1, "[0.0, 1.0]"),
        ("eval.eps", 1.5, "[0.0, 1.0]"),
        ("fl.shared-share", 1.2, "[0.0, 1.0]"),
        ("fl.fraction-train", -0.5, "[0.0, 1.0]"),
        ("fl.shared-pool", 1.0, "[0.0, 1.0)"),
        ("model.activation", "swish", "relu, rrelu"),
        ("train.schedule", "linear", "fixed, step, cosine, onecycle"),
        ("fl.partition", "shards", "iid, classes, dirichlet"),
        ("model.width", 0, ">= 1"),
        ("fl.num-rounds", 0, ">= 1"),
        ("fl.min-nodes", 0, ">= 1"),
        ("train.lr", 0.0, "> 0"),
        ("eval.attacks", "fgsm,pgdx", "pgd<k>"),
        ("fault.partitions", "1,a", "comma-separated"),
        ("out.dir", "relative/path", "absolute path"),
    ],
)
def test_out_of_range_values_name_key_value_and_what_is_allowed(key, value, allowed):
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_flat({key: value})
    message = str(err.value)
    assert key in message and repr(value) in message and allowed in message


@pytest.mark.parametrize(
    "key, value, expected",
    [("fl.num-rounds", 2.5, "int"), ("train.adversarial", 1, "bool"),
     ("model.width", True, "int"), ("train.lr", "0.1", "float"), ("seed", "x", "int")],
)
def test_wrong_types_are_refused(key, value, expected):
    with pytest.raises(ConfigError, match=f"{key}.*expected {expected}"):
        ExperimentConfig.from_flat({key: value})


def test_unknown_keys_suggest_the_closest_one():
    with pytest.raises(ConfigError, match=r"unknown key 'train\.learning-rate'") as err:
        ExperimentConfig.from_flat({"train.learning-rate": 0.1})
    with pytest.raises(ConfigError, match="did you mean 'attack.eps'"):
        ExperimentConfig.from_flat({"attack.esp": 0.1})
    assert "keys" in str(err.value)


def test_all_problems_are_reported_in_one_error():
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_flat({"attack.eps": -1, "model.activation": "nope", "x": 1})
    message = str(err.value)
    assert "attack.eps" in message and "model.activation" in message and "'x'" in message


def test_cross_key_checks():
    with pytest.raises(ConfigError, match="weight"):
        ExperimentConfig.from_flat({"train.weight-clean": 0.0, "train.weight-adv": 0.0,
                                    "train.weight-noise": 0.0})
    with pytest.raises(ConfigError, match="resume"):
        ExperimentConfig.from_flat({"resume": True, "resume-from": "/tmp/x"})


def test_identity_ignores_where_a_run_writes_but_not_what_it_trains():
    base = ExperimentConfig.from_flat({})
    moved = ExperimentConfig.from_flat({"out.dir": "/elsewhere", "fl.node-wait": 5.0})
    changed = ExperimentConfig.from_flat({"train.lr": 0.01})
    assert base.identity_hash() == moved.identity_hash()
    assert base.identity_hash() != changed.identity_hash()
    assert base.run_name().startswith("iid-relu-")
