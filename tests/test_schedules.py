"""Learning-rate schedules: their values at known points of training, and that every optimizer
step of a client's round applies the rate at that step's own point of global progress."""

import pytest
import torch

from common import protocol, schedules
from common.config import ExperimentConfig
from common.models import build_model
from common.training import make_optimizer, train

KNOWN = [  # (schedule, progress, rate as a fraction of the base rate), worked out by hand
    ("fixed", 0.0, 1.0), ("fixed", 0.7, 1.0), ("fixed", 1.0, 1.0),
    ("step", 0.0, 1.0), ("step", 0.499, 1.0), ("step", 0.5, 0.1), ("step", 0.749, 0.1),
    ("step", 0.75, 0.01), ("step", 1.0, 0.01),
    ("cosine", 0.0, 1.0), ("cosine", 0.25, (2 + 2**0.5) / 4), ("cosine", 0.5, 0.5),
    ("cosine", 0.75, (2 - 2**0.5) / 4), ("cosine", 1.0, 0.0),
    ("onecycle", 0.0, 1 / 25), ("onecycle", 0.15, 0.52), ("onecycle", 0.3, 1.0),
    ("onecycle", 0.65, 0.5), ("onecycle", 1.0, 0.0),
]


@pytest.mark.parametrize("name, progress, fraction", KNOWN)
def test_rate_at_known_points(name, progress, fraction):
    assert schedules.lr_at(name, 0.2, progress) == pytest.approx(0.2 * fraction, abs=1e-12)


@pytest.mark.parametrize("name", schedules.NAMES)
def test_progress_outside_training_is_clipped(name):
    assert schedules.lr_at(name, 0.2, -0.5) == schedules.lr_at(name, 0.2, 0.0)
    assert schedules.lr_at(name, 0.2, 1.5) == schedules.lr_at(name, 0.2, 1.0)


@pytest.mark.parametrize("name", schedules.NAMES)
def test_every_step_of_a_round_applies_the_rate_at_its_progress(cifar, name):
    """Round 3 of 4, two local epochs of three steps: six steps over progress [0.5, 0.75).

    The settings take the server's road to the client (config -> round settings -> record
    -> settings), and the rate is read off the parameters' actual change: with plain SGD
    (no momentum, no weight decay) a step moves them by exactly -lr * grad.
    """
    cfg = ExperimentConfig.from_flat({
        "train.schedule": name, "train.lr": 0.1, "fl.num-rounds": 4, "train.local-epochs": 2,
        "train.batch-size": 16, "train.momentum": 0.0, "train.weight-decay": 0.0,
        "train.adversarial": False, "train.noise-std": 0.0})
    settings = protocol.settings_from_record(
        protocol.settings_to_record(protocol.train_settings(cfg, 3)))
    model = build_model("relu", 8)
    optimizer = make_optimizer(model, settings)
    applied = []
    original = optimizer.step

    def step(*args, **kwargs):
        params = [p for p in model.parameters() if p.grad is not None]
        before = [p.detach().clone() for p in params]
        grads = [p.grad.detach().clone() for p in params]
        result = original(*args, **kwargs)
        moved = sum(((b - p.detach()) * g).sum() for b, p, g in zip(before, params, grads))
        applied.append(float(moved / sum((g * g).sum() for g in grads)))
        return result

    optimizer.step = step
    torch.manual_seed(0)
    train(model, cifar.train_x[:48], cifar.train_y[:48], settings, seed=0, optimizer=optimizer)
    expected = [schedules.lr_at(name, 0.1, 0.5 + 0.25 * i / 6) for i in range(6)]
    assert applied == pytest.approx(expected, rel=1e-3)
