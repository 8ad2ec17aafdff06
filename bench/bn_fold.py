"""A proposal measured here, not (yet) used by common/: PGD on a copy of the model whose
BatchNorms are folded into the convolutions before them.

PGD runs the model in eval mode, where BatchNorm is a fixed per-channel affine map that folds
exactly into the preceding convolution; at small widths the BatchNorm passes (forward and
input-gradient backward) are a large share of the time. The copy must be rebuilt after every
optimizer step; its cost is included in the timing.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from common.attacks import pgd
from common.data import to_float
from common.models import BasicBlock, build_model

from .fixtures import Options, batch_of, cpu_settings, load_data
from .timing import interleaved, median, paired_ratio


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode, gradient-free copy of a common.models.ResNet18 with every
    Conv2d -> BatchNorm2d pair replaced by one Conv2d."""
    folded = copy.deepcopy(model).eval()
    for module in list(folded.modules()):
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                    module[i] = fuse_conv_bn_eval(module[i], module[i + 1])
                    module[i + 1] = nn.Identity()
        if isinstance(module, BasicBlock):
            module.conv1, module.bn1 = fuse_conv_bn_eval(module.conv1, module.bn1), nn.Identity()
            module.conv2, module.bn2 = fuse_conv_bn_eval(module.conv2, module.bn2), nn.Identity()
    folded.requires_grad_(False)
    return folded


def measure(opts: Options, width: int, batch: int) -> dict:
    s = cpu_settings()
    images, labels = batch_of(load_data(opts), batch, opts.device)
    x = to_float(images)
    torch.manual_seed(0)
    model = build_model("relu", width).to(opts.device)
    with torch.no_grad():  # non-trivial running statistics, as after some training
        model(x)
    model.eval()

    def attack(target):
        gen = torch.Generator(device=opts.device).manual_seed(0)
        return pgd(target, x, labels, s.eps, s.step, s.steps, generator=gen)

    same = float((attack(model) == attack(fold_batchnorm(model))).float().mean())
    seconds = interleaved({"before": lambda: attack(model),
                           "after": lambda: attack(fold_batchnorm(model))},
                          reps=opts.reps(9 if batch > 32 else 15, 7), device=opts.device)
    return {"optimisation": f"proposal: PGD-{s.steps} on a BN-folded copy (width {width}, "
                            f"batch {batch}; {100 * same:.2f}% identical pixels)",
            "before": "pgd(model)", "after": "pgd(fold_batchnorm(model)), fold included",
            "before ms": 1000 * median(seconds["before"]),
            "after ms": 1000 * median(seconds["after"]),
            "speed-up": paired_ratio(seconds["before"], seconds["after"])}
