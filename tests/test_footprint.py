"""The memory estimate and the check that refuses a model the device cannot hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from common import footprint
from common.config import ConfigError, ExperimentConfig
from common.models import build_model

from .conftest import ROOT


@pytest.mark.parametrize("width, variant", [(8, "standard"), (64, "standard"),
                                            (16, "no-downsample")])
def test_parameters_are_counted_exactly(width, variant):
    model = build_model("relu", width, variant)
    assert footprint.parameters(width, variant) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("activation, variant", [("relu", "standard"), ("telu", "standard"),
                                                 ("rrelu", "no-downsample")])
def test_activations_follow_a_straight_line_in_the_width(activation, variant):
    """The estimate extrapolates from widths 1 and 2; a direct count at 6 must agree."""
    direct = footprint._saved_bytes(activation, 6, variant)
    assert footprint.activation_bytes(activation, 6, variant,
                                      footprint.PROBE_IMAGES) == direct


def test_the_probe_leaves_the_global_random_stream_alone():
    footprint._saved_bytes.cache_clear()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    footprint.activation_bytes("rrelu", 8, "standard", 1)  # RReLU draws in training mode
    assert torch.equal(torch.rand(3), expected)


MEASURE = """
import json, sys, torch
torch.set_num_threads(1)
from common.models import build_model
from common.training import train
from tests.conftest import train_settings

def status(field):
    for line in open('/proc/self/status'):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

width, batch = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
model = build_model('relu', width)
x = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
y = torch.randint(0, 10, (batch,))
settings = train_settings(lr=0.01, batch_size=batch, steps=1)  # clean + PGD + noise
train(model, x[:2], y[:2], settings, seed=0)  # load the kernels at a tiny batch
base = status('VmRSS')
open('/proc/self/clear_refs', 'w').write('5')  # restart the high-water mark here
train(model, x, y, settings, seed=1)
print(json.dumps({'peak': status('VmHWM') - base}))
"""


def test_the_estimate_covers_a_measured_training_step():
    """Peak RSS of a real clean+PGD+noise step on CPU (width 16, batch 32) against the
    estimate of its parameters, gradients, momentum and activations."""
    out = subprocess.run([sys.executable, "-c", MEASURE, "16", "32"], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=120)
    peak = json.loads(out.stdout)["peak"]
    e = footprint.training(ExperimentConfig.from_flat({"model.width": 16,
                                                       "train.batch-size": 32}))
    assert e.copies == 3 and e.batch == 32
    estimate = e.state + e.activations
    assert 0.5 * estimate < peak <= 1.1 * estimate, (peak, estimate)


def test_the_default_config_fits():
    footprint.check_fits(ExperimentConfig())
    footprint.check_fits(ExperimentConfig(), gpu_share=0.0)


def test_a_model_that_cannot_fit_is_refused_with_the_estimate():
    cfg = ExperimentConfig.from_flat({"model.width": 256, "train.batch-size": 65536})
    with pytest.raises(ConfigError) as err:
        footprint.check_fits(cfg, gpu_share=0.0)
    message = str(err.value)
    need = footprint.training(cfg).total / footprint.GIB
    assert "model.width=256" in message and "train.batch-size=65536" in message
    assert f"about {need:.1f} GiB to train" in message
    assert "3 loss parts (clean, adv, noise)" in message  # what the estimate counted
    ram, where = footprint.device_memory("cpu")
    assert where in message or torch.cuda.is_available()
    assert "lower model.width or train.batch-size" in message


def test_an_evaluation_batch_that_cannot_fit_is_refused():
    cfg = ExperimentConfig.from_flat({"model.width": 256, "eval.batch-size": 65536,
                                      "data.eval-limit": 0})
    with pytest.raises(ConfigError, match=r"eval.batch-size=65536 needs about [\d.]+ GiB "
                                          "for the central evaluation"):
        footprint.check_fits(cfg)


def test_system_ram_is_the_cpu_limit():
    ram, where = footprint.device_memory("cpu")
    assert ram == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert "system RAM" in where
