"""Shared fixtures: the real CIFAR-10 subset, a briefly trained tiny model, Flower isolation."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("ROBUSTFL_TEST_DATA", ROOT.parent / "shared" / "data" /
                               "cifar10-small"))


def train_settings(**values):
    """TrainSettings for unit tests, which TrainSettings no longer gives defaults: the
    config's defaults over the whole LR schedule, changed to what the tests were written
    against (one epoch, batch 128, PGD-10 with step 2/255), then by `values`."""
    from common import protocol
    from common.config import ExperimentConfig

    written_against = dict(progress_start=0.0, progress_end=1.0, epochs=1, batch_size=128,
                           step=2 / 255, steps=10)
    return dataclasses.replace(protocol.train_settings(ExperimentConfig(), 1),
                               **{**written_against, **values})


def pytest_configure(config):
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "cifar-10-batches-py" / "data_batch_1").exists():
        pytest.skip(f"the CIFAR-10 test subset is not at {DATA_DIR} (set ROBUSTFL_TEST_DATA)")
    return DATA_DIR


@pytest.fixture(scope="session")
def cifar(data_dir):
    from common.data import load_cifar10

    return load_cifar10(data_dir)


@pytest.fixture(scope="session")
def trained_model(cifar):
    """Width-8 ResNet-18 after two epochs of adversarial training on the 5,000 images."""
    from common.models import build_model
    from common.training import make_optimizer, train

    torch.manual_seed(0)
    model = build_model("relu", 8)
    settings = train_settings(lr=0.05, epochs=1, batch_size=64, steps=3,
                              step=2.5 * 8 / 255 / 3)
    optimizer = make_optimizer(model, settings)
    for epoch in range(2):
        train(model, cifar.train_x, cifar.train_y, settings, seed=epoch, optimizer=optimizer)
    model.eval()
    return model


@pytest.fixture
def flower_env(tmp_path, monkeypatch):
    """An isolated FLWR_HOME and the environment Flower needs offline."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    for key, value in {
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }.items():
        monkeypatch.setenv(key, value)
    return home
