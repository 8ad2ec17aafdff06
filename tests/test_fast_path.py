"""The training fast path (channels_last, bf16 autocast) computes what the plain path does,
and the adversarial loop never waits for the host.

Comparisons are over ONE optimizer step: at initialisation this network is chaotic (plain
fp32 and fp64 weights already differ by ~25% of the update after 8 steps), so longer
trajectories cannot be compared tightly for any numerics. channels_last on the CPU gets
BatchNorm gradients ~0.4% off fp64 at init (the plain path: 1e-6), hence its tolerance.
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from common.attacks import pgd
from common.data import to_float
from common.models import build_model
from common.training import FastPath, train

from .conftest import train_settings

SETTINGS = train_settings(lr=0.05, epochs=1, batch_size=32, steps=2,
                          step=2.5 * 8 / 255 / 3)
SYNCS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten() for p in model.parameters()])


def _step(cifar, fast: FastPath, n: int = 32, seed: int = 0):
    """(loss, parameter update, conv-hook log) of train() on the first n images."""
    torch.manual_seed(seed)
    model = build_model("relu", 8)
    start = _flat(model)
    seen = []  # (training?, input channels_last?, output dtype) of the stem conv

    def hook(module, inputs, output):
        seen.append((model.training,
                     inputs[0].is_contiguous(memory_format=torch.channels_last), output.dtype))

    model.stem[0].register_forward_hook(hook)
    stats = train(model, cifar.train_x[:n], cifar.train_y[:n], SETTINGS, seed=1, fast=fast)
    return stats.loss, _flat(model) - start, seen, model


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_channels_last_step_matches_the_plain_path(cifar):
    loss, update, seen, _ = _step(cifar, FastPath())
    loss_cl, update_cl, seen_cl, model = _step(cifar, FastPath(channels_last=True))
    assert all(not cl for _, cl, _ in seen)
    assert seen_cl and all(cl for _, cl, _ in seen_cl)  # PGD and training forwards alike
    assert model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert loss_cl == pytest.approx(loss, rel=1e-5)  # PGD, noise and forward all agree
    assert _rel(update_cl, update) < 3e-2


def test_default_fast_path_is_channels_last_everywhere_and_bf16_only_on_cuda():
    # channels_last pays on the CPU too (bench/out/ablations.md); bf16 there would change
    # the numbers of every CPU run, so it stays a CUDA default.
    assert FastPath.for_device(torch.device("cpu")) == FastPath(channels_last=True)
    assert FastPath.for_device(torch.device("cuda")) == FastPath(True, True)
    assert FastPath.for_device(torch.device("cuda"), amp=False) == FastPath(True, False)


def test_channels_last_first_epoch_loss_matches(cifar):
    loss, _, _, _ = _step(cifar, FastPath(), n=128)
    loss_cl, _, _, _ = _step(cifar, FastPath(channels_last=True), n=128)
    assert loss_cl == pytest.approx(loss, rel=5e-3)


def test_bf16_autocast_on_cpu_is_close_to_fp32(cifar):
    loss, update, seen, _ = _step(cifar, FastPath())
    loss_bf, update_bf, seen_bf, model = _step(cifar, FastPath(channels_last=True,
                                                               autocast=True))
    assert {dtype for _, _, dtype in seen} == {torch.float32}
    assert {dtype for _, _, dtype in seen_bf} == {torch.bfloat16}
    assert {training for training, _, _ in seen_bf} == {False, True}  # PGD and training
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights
    assert torch.isfinite(update_bf).all()
    assert loss_bf == pytest.approx(loss, rel=1e-2)
    # Same direction of descent; training on transposed images (a broken input path)
    # gives a cosine of 0.25-0.4 here, bf16 0.86-0.92.
    assert F.cosine_similarity(update_bf, update, dim=0) > 0.75


@pytest.fixture
def host_syncs(monkeypatch):
    """Names of the torch.Tensor methods that wait for the device, as they get called."""
    calls: list[str] = []
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def spy(self, *a, _original=original, _name=name, **k):
            calls.append(_name)
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    return calls


def test_pgd_on_the_fast_path_makes_no_host_synchronisation(cifar, host_syncs):
    fast = FastPath(channels_last=True, autocast=True)
    model = build_model("relu", 8).to(memory_format=torch.channels_last)
    x = fast.layout(to_float(cifar.train_x[:8]))
    with fast.context(x.device):
        x_adv = pgd(model, x, cifar.train_y[:8], 8 / 255, 2 / 255, 4)
    assert host_syncs == []
    assert x_adv.shape == x.shape


def test_training_loop_synchronises_once_at_the_end(cifar, host_syncs):
    train(build_model("relu", 8), cifar.train_x[:96], cifar.train_y[:96], SETTINGS, seed=0,
          fast=FastPath(channels_last=True))
    assert host_syncs == ["tolist"]  # the statistics, read once after the last step


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pgd_makes_no_cuda_synchronisation(cifar):
    device = torch.device("cuda")
    fast = FastPath.for_device(device)
    model = build_model("relu", 8).to(device).to(memory_format=torch.channels_last)
    x = fast.layout(to_float(cifar.train_x[:32].to(device)))
    y = cifar.train_y[:32].to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    with fast.context(device):
        pgd(model, x, y, 8 / 255, 2 / 255, 2, generator=gen)  # warm-up: lazy CUDA init
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            pgd(model, x, y, 8 / 255, 2 / 255, 5, generator=gen)
        finally:
            torch.cuda.set_sync_debug_mode(0)
