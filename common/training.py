"""Local adversarial training: by default every batch is clean + PGD + Gaussian-noise copies,
soft labels (the `mixed` objective; common.objectives has the others: trades, mart, fgsm-rs,
calfat).

An objective's copies go through the model as one concatenated batch (one forward/backward),
each term weighted in the loss. Images stay uint8 on the training device; crop/flip, attacks
and noise are batched tensor ops there. The loop never synchronises with the host: statistics
are summed on the device and read once at the end.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
from torch import nn

from . import objectives, schedules
from .data import NUM_CLASSES, augment
from .means import MeansMix


@dataclass(frozen=True)
class TrainSettings:
    """Everything one call of `train` needs. No defaults of its own: a run builds it per round
    from the experiment config (common.protocol.train_settings), where every value has its
    one default; each field is the train.* or attack.* key of its name, except epochs
    (train.local-epochs) and the round's span of the schedule."""

    lr: float
    schedule: str
    progress_start: float  # global training progress covered by this call
    progress_end: float
    epochs: int
    batch_size: int
    momentum: float
    weight_decay: float
    label_smoothing: float
    noise_std: float
    adversarial: bool
    weight_clean: float
    weight_adv: float
    weight_noise: float
    eps: float
    step: float
    steps: int
    random_start: bool
    amp: bool  # bf16 autocast, CUDA only
    compile: bool  # torch.compile the model: done by the caller, which owns the model
    objective: str  # common.objectives.NAMES
    trades_beta: float
    mart_beta: float
    fgsm_rs_step: float  # in units of eps
    calfat_scale: float

    def part_weights(self) -> dict[str, float]:
        """Normalized loss weights of the parts the mixed objective actually uses."""
        parts = {"clean": self.weight_clean}
        if self.adversarial:
            parts["adv"] = self.weight_adv
        if self.noise_std > 0:
            parts["noise"] = self.weight_noise
        parts = {k: w for k, w in parts.items() if w > 0}
        total = sum(parts.values())
        if total <= 0:
            raise ValueError("every loss part has weight 0; give one a positive weight")
        return {k: w / total for k, w in parts.items()}


@dataclass(frozen=True)
class TrainStats:
    """Means over the call. The losses are the objective's terms (common.objectives): clean,
    adversarial (its KL for trades, its whole loss for mart) and noise; 0 when not a term.
    clean_acc is the accuracy on the first copy of each batch: the clean one unless the
    objective has none (fgsm-rs, calfat, mixed with weight-clean 0)."""

    num_examples: int
    steps: int
    loss: float
    clean_loss: float
    adv_loss: float
    noise_loss: float
    clean_acc: float
    seconds: float

    # The names of the statistics in a train reply (common.protocol.TRAIN_METRIC_KEYS).
    METRIC_KEYS = ("train_loss", "clean_loss", "adv_loss", "noise_loss", "train_acc",
                   "train_steps", "train_seconds")

    def as_metrics(self) -> dict[str, float | int]:
        return dict(zip(self.METRIC_KEYS, (self.loss, self.clean_loss, self.adv_loss,
                                           self.noise_loss, self.clean_acc, self.steps,
                                           self.seconds)))


@dataclass(frozen=True)
class FastPath:
    """Device-specific speed-ups of the training loop (same maths, other kernels).

    channels_last memory layout is on by default on every device: on this project's CPU it
    makes the adversarial-training step faster (measured in docs/performance.md), on CUDA it
    is what tensor-core convolutions want. bf16 autocast for the forward passes of training and
    of PGD generation (gradients and the optimizer stay fp32; evaluation attacks never use
    autocast) is on only on CUDA: on CPUs without native bf16 it is slower, and it changes
    the numbers. FastPath() is the plain NCHW fp32 path that tests compare against.
    """

    channels_last: bool = False
    autocast: bool = False

    @classmethod
    def for_device(cls, device: torch.device, amp: bool = True) -> FastPath:
        cuda = device.type == "cuda"
        return cls(channels_last=True, autocast=cuda and amp)

    def context(self, device: torch.device):
        if self.autocast:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def make_optimizer(model: nn.Module, s: TrainSettings) -> torch.optim.SGD:
    # foreach=True fuses the per-parameter updates into a few kernels.
    return torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum,
                           weight_decay=s.weight_decay, foreach=True)


def train(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: TrainSettings,
    seed: int,
    optimizer: torch.optim.Optimizer | None = None,
    fast: FastPath | None = None,
    mix: MeansMix | None = None,
) -> TrainStats:
    """Train `model` for settings.epochs over (images uint8 NCHW, labels) in place.

    images/labels must already be on the model's device. The learning rate follows the
    schedule from progress_start to progress_end over the steps of this call. `fast`
    defaults to FastPath.for_device(images.device, settings.amp). `mix` (fl.sharing=means)
    mixes every batch with pooled averages before the objective makes its copies, and mixes
    its loss terms with the averages' labels (common.means).
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (N,3,32,32), got {images.dtype}")
    n = images.shape[0]
    if n == 0:
        raise ValueError("no training images: this client's partition is empty")
    device = images.device
    fast = fast or FastPath.for_device(device, settings.amp)
    if fast.channels_last:
        model.to(memory_format=torch.channels_last)
    torch.manual_seed(seed)  # RReLU and anything else that draws from the global stream
    gen = torch.Generator(device=device).manual_seed(seed)
    objective = objectives.build(settings, labels, NUM_CLASSES)
    weights = objective.weights
    parts = list(weights)
    w = torch.tensor([weights[p] for p in parts], device=device)
    optimizer = optimizer or make_optimizer(model, settings)
    batch = min(settings.batch_size, n)
    steps_per_epoch = -(-n // batch)
    total_steps = steps_per_epoch * settings.epochs
    span = settings.progress_end - settings.progress_start
    sums = torch.zeros(len(parts) + 1, device=device)  # per-part loss sums, clean correct
    start = time.perf_counter()
    model.train()
    step_index = 0
    for _ in range(settings.epochs):
        order = torch.randperm(n, device=device, generator=gen)
        for first in range(0, n, batch):
            idx = order[first : first + batch]
            x = augment(images[idx], gen)
            y = labels[idx]
            if mix is not None:
                x, y_bar = mix.mix(x, gen)
            x = fast.layout(x)
            lr = schedules.lr_at(
                settings.schedule, settings.lr,
                settings.progress_start + span * step_index / total_steps,
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            with fast.context(device):
                logits = model(torch.cat(objective.copies(model, x, y, gen))).float()
            part_means = objective.terms(logits, y)
            if mix is not None:
                part_means = mix.terms(part_means, logits, y_bar)
            loss = (part_means * w).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                sums[:-1] += part_means.detach() * y.numel()
                sums[-1] += (logits[: y.numel()].argmax(1) == y).sum()
            step_index += 1
    totals = sums.tolist()  # the one host sync of the call
    seen = n * settings.epochs
    per_part = {p: totals[i] / seen for i, p in enumerate(parts)}
    return TrainStats(
        num_examples=n,
        steps=total_steps,
        loss=sum(per_part[p] * weights[p] for p in parts),
        clean_loss=per_part.get("clean", 0.0),
        adv_loss=per_part.get("adv", 0.0),
        noise_loss=per_part.get("noise", 0.0),
        clean_acc=totals[-1] / seen,  # of the first part (clean unless its weight is 0)
        seconds=time.perf_counter() - start,
    )
