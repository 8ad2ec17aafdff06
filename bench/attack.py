"""Attack throughput: common.attacks.pgd as common.evaluation runs it (channels_last model
and batch) against a straightforward PGD loop (NCHW, fresh tensors every step, the loss read
back with .item() each step) on the same weights and batch; the same pgd in NCHW is timed
beside them, so the table separates the layout's gain from the loop's."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from common.attacks import pgd
from common.data import to_float
from common.models import build_model

from .fixtures import Options, batch_of, load_data
from .result import Result
from .timing import interleaved, median, paired_ratio

TARGET = 1.0
EPS, STEP = 8 / 255, 2 / 255


def reference_pgd(model, x, y, eps: float, step: float, steps: int) -> torch.Tensor:
    """The textbook loop: a new leaf tensor per step and a host read of the loss per step."""
    model.eval()
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0.0, 1.0)
    losses = []
    for _ in range(steps):
        x_adv = x_adv.clone().detach().requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        losses.append(loss.item())  # e.g. to watch the attack's progress
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + step * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)
    model.train()
    return x_adv


def run(opts: Options, width: int = 8, batch: int = 64, steps: int = 10) -> Result:
    images, labels = batch_of(load_data(opts), batch, opts.device)
    x = to_float(images)
    torch.manual_seed(0)
    model = build_model("relu", width).to(opts.device)
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    gen = torch.Generator(device=opts.device).manual_seed(0)
    seconds = interleaved({
        "pgd": lambda: pgd(model_cl, x_cl, labels, EPS, STEP, steps, generator=gen),
        "pgd, NCHW": lambda: pgd(model, x, labels, EPS, STEP, steps, generator=gen),
        "reference": lambda: reference_pgd(model, x, labels, EPS, STEP, steps),
    }, reps=opts.reps(13, 7), warmup=1, device=opts.device)
    ratio = paired_ratio(seconds["reference"], seconds["pgd"])
    return Result(
        name="attack", title="Attack throughput (PGD vs reference loop)", ratio=ratio,
        target=TARGET,
        meaning=(f"reference loop time (NCHW) / common.attacks.pgd time in evaluate()'s "
                 f"channels_last layout (= throughput ratio), "
                 f"width {width}, batch {batch}, PGD-{steps}, eval mode, same model and batch, "
                 f"{torch.get_num_threads()} thread(s)"),
        details={"threads": torch.get_num_threads(), "width": width, "batch": batch,
                 "steps": steps, "seconds": seconds},
        table=[{"what": name, "ms/attack": 1000 * median(v),
                "images/s": batch / median(v)} for name, v in seconds.items()],
    )
