"""CIFAR ResNet-18 with an injectable activation, a width multiplier and two stem variants.

The model takes images in [0, 1] and normalizes them itself, so that attacks can work in pixel
space and clip to [0, 1] without knowing the dataset statistics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .activations import make_activation
from .data import NUM_CLASSES

if TYPE_CHECKING:  # config imports this module (VARIANTS)
    from .config import ExperimentConfig

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
VARIANTS = ("standard", "no-downsample")


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, activation: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = make_activation(activation)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 3x3 stride-1 stem, no max-pool, four stages of two basic blocks.

    `width` is the number of channels of the first stage (64 = the standard 11.2M-parameter
    model); stages use width, 2w, 4w, 8w. `variant="no-downsample"` drops the stride-2 of
    stages 2-4 (the paper's literal wording; about 20x the compute).
    """

    def __init__(
        self,
        activation: str = "relu",
        width: int = 64,
        variant: str = "standard",
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown model variant {variant!r}; valid: {', '.join(VARIANTS)}")
        if width < 1:
            raise ValueError(f"model width must be >= 1, got {width}")
        self.register_buffer("mean", torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CIFAR10_STD).view(1, 3, 1, 1), persistent=False)
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            make_activation(activation),
        )
        down = 1 if variant == "no-downsample" else 2
        stages, in_planes = [], width
        for i, stride in enumerate((1, down, down, down)):
            planes = width * 2**i
            stages.append(
                nn.Sequential(
                    BasicBlock(in_planes, planes, stride, activation),
                    BasicBlock(planes, planes, 1, activation),
                )
            )
            in_planes = planes
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def build_model(activation: str, width: int, variant: str = "standard") -> ResNet18:
    return ResNet18(activation=activation, width=width, variant=variant)


def model_from_config(cfg: ExperimentConfig) -> ResNet18:
    """The run's model (model.*), as the server, the clients and every evaluation build it:
    the packed model on the wire relies on all of them building the same one."""
    return build_model(cfg.model.activation, cfg.model.width, cfg.model.variant)
