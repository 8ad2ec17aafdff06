import tomllib

import numpy as np
import pytest

from common.config import ConfigError, ExperimentConfig, defaults

from .conftest import ROOT, train_settings


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


# --- upper bounds: values that would validate but could not run ----------------------------

BOUNDED = [  # key, largest allowed value, a fragment of the reason in the message
    ("seed", 2**32 - 1, "numpy and torch"),
    ("data.train-limit", 50_000, "50,000 training images"),
    ("data.eval-limit", 10_000, "10,000 test images"),
    ("model.width", 256, "GiB to train"),
    ("train.local-epochs", 1000, "200-epoch"),
    ("train.batch-size", 65_536, "50,000 training images"),
    ("attack.steps", 10_000, "PGD-10"),
    ("eval.eot-samples", 1000, "EOT-PGD step"),
    ("eval.batch-size", 65_536, "10,000 test images"),
    ("eval.every", 100_000, "fl.num-rounds is at most"),
    ("fl.num-rounds", 100_000, "500x the paper's"),
    ("fl.min-partition-size", 50_000, "training images"),
    ("fl.min-nodes", 10_000, "5 of CIFAR-10's"),
    ("fl.krum-byzantine", 10_000, "fl.min-nodes is at most"),
    ("fl.node-wait", 604_800.0, "a week"),
    ("fl.round-timeout", 604_800.0, "a week"),
    ("fault.delay", 604_800.0, "a week"),
]


@pytest.mark.parametrize("key, largest, reason", BOUNDED, ids=[b[0] for b in BOUNDED])
def test_huge_values_are_refused_with_the_reason(key, largest, reason):
    huge = 2**63 if isinstance(largest, int) else 1e300
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_flat({key: huge})
    message = str(err.value)
    assert key in message and f"<= {largest:,}" in message and reason in message, message
    with pytest.raises(ConfigError):
        ExperimentConfig.from_flat({key: largest + 1})
    assert ExperimentConfig.from_flat({key: largest}).to_flat()[key] == largest


def test_every_integer_key_has_an_upper_bound():
    """A new integer key without one would accept 2**63 again (Flower cannot even carry it:
    its run-config integers are signed 64-bit)."""
    from common.config import describe, key_type

    unbounded = []
    for key, _, _ in describe():
        if key_type(key) is int:
            try:
                ExperimentConfig.from_flat({key: 2**63})
            except ConfigError:
                continue
            unbounded.append(key)
    assert not unbounded


def test_attack_specs_have_a_step_bound():
    with pytest.raises(ConfigError, match="exceeds 10,000 steps or 100 restarts"):
        ExperimentConfig.from_flat({"eval.attacks": f"fgsm,pgd{2**63}"})
    with pytest.raises(ConfigError, match="pgd10x101"):
        ExperimentConfig.from_flat({"eval.attacks": "pgd10x101"})
    ExperimentConfig.from_flat({"eval.attacks": "pgd10000x100"})


# --- the loss terms a batch holds ----------------------------------------------------------


def test_loss_parts_are_exactly_the_parts_training_builds():
    """For every on/off combination: the config accepts exactly what training can run, and
    names the same parts that TrainSettings.part_weights keeps."""
    import itertools

    from common import protocol

    for wc, adv, wa, sigma, wn in itertools.product((0.0, 1.0), (False, True), (0.0, 1.0),
                                                    (0.0, 0.05), (0.0, 1.0)):
        flat = {"train.weight-clean": wc, "train.adversarial": adv, "train.weight-adv": wa,
                "train.noise-std": sigma, "train.weight-noise": wn}
        try:
            cfg = ExperimentConfig.from_flat(flat)
        except ConfigError as err:
            assert "no loss term" in str(err), flat
            with pytest.raises(ValueError, match="every loss part has weight 0"):
                train_settings(lr=0.1, weight_clean=wc, adversarial=adv, weight_adv=wa,
                               noise_std=sigma, weight_noise=wn).part_weights()
            continue
        parts = tuple(protocol.train_settings(cfg, 1).part_weights())
        assert cfg.train.loss_parts() == parts, flat


def test_no_loss_term_is_refused_with_what_each_term_needs():
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_flat({"train.weight-clean": 0.0, "train.adversarial": False,
                                    "train.noise-std": 0.0})  # weight-noise stays 1
    message = str(err.value)
    assert "no loss term" in message and "train.noise-std=0.0" in message
    assert "train.noise-std > 0 and train.weight-noise > 0" in message


# --- the shared pool is opt-in -------------------------------------------------------------


def test_the_default_run_holds_no_data_back():
    """No pool by default: the clients hold every image outside the validation split."""
    from common.partition import split_for, validation_indices

    cfg = ExperimentConfig()
    assert cfg.fl.shared_pool == 0.0 and cfg.fl.shared_share == 0.0
    labels = np.repeat(np.arange(10), 100)
    plan = split_for(cfg, labels, 4)
    assert plan.shared.size == 0
    val = validation_indices(labels, cfg.data.val_size, cfg.seed)
    assert np.array_equal(np.sort(np.concatenate(plan.partitions)),
                          np.setdiff1d(np.arange(1000), val))


def test_a_share_without_a_pool_is_refused():
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_flat({"fl.shared-share": 0.4})
    message = str(err.value)
    assert "fl.shared-share=0.4" in message and "fl.shared-pool=0" in message
    assert "set fl.shared-pool > 0" in message  # the fix
    ExperimentConfig.from_flat({"fl.shared-share": 0.4, "fl.shared-pool": 0.1})
    ExperimentConfig.from_flat({"fl.shared-pool": 0.1})  # a pool no client gets is allowed


@pytest.mark.parametrize("preset", sorted((ROOT / "presets").glob("*.toml")),
                         ids=lambda p: p.name)
def test_presets_that_share_set_their_pool(preset):
    from simulation.overrides import load_preset

    flat = load_preset(preset)
    if flat.get("fl.shared-share", 0) > 0:
        assert flat.get("fl.shared-pool", 0) > 0
    ExperimentConfig.from_flat(flat)


def test_every_cell_of_the_noniid_study_holds_the_same_pool_back():
    from simulation.studies import SHARES, study_cells

    for scale in ("toy", "cpu", "paper"):
        cells = study_cells("noniid", scale)
        assert {c.overrides.get("fl.shared-pool") for c in cells} == {0.1}, scale
        assert {c.overrides.get("fl.shared-share") for c in cells} == set(SHARES)
