"""One interleaved measurement of the AT step shared by at_step and data_path: a call of
`common.training.train` over S batches, the bare passes those S steps contain, and the data
path (index, augment, concatenate) of the same S batches."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from common.data import augment, to_float
from common.models import build_model
from common.training import FastPath, TrainSettings, make_optimizer, train

from .fixtures import Options, batch_of, cpu_settings, load_data
from .timing import interleaved


@dataclass(frozen=True)
class StepTimes:
    settings: TrainSettings
    width: int
    steps_per_call: int
    threads: int
    seconds: dict[str, list[float]]  # contender -> seconds per call (S steps)


def bare_passes(model, optimizer, x, y, pgd_steps: int, parts: int, steps: int,
                fast: FastPath = FastPath()):
    """What an AT step must compute at the least: pgd_steps input-gradient passes at batch B
    in eval mode, then one fwd/bwd/SGD step on the parts*B concatenated batch (in the
    memory layout of x and of the model: the same one train() uses)."""
    x_all = torch.cat([x] * parts)
    y_all = y.repeat(parts)

    def run() -> None:
        for _ in range(steps):
            model.eval()
            for _ in range(pgd_steps):
                x_in = x.detach().requires_grad_(True)
                with fast.context(x.device):
                    loss = F.cross_entropy(model(x_in).float(), y, reduction="sum")
                torch.autograd.grad(loss, x_in)
            model.train()
            with fast.context(x.device):
                logits = model(x_all).float()
            loss = F.cross_entropy(logits, y_all)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run


def data_path(images, labels, batch: int, steps: int, parts: int, gen: torch.Generator):
    """The training loop's data handling for `steps` batches: shuffle, index, augment and
    concatenate the parts (here the clean batch `parts` times: same sizes, same copy)."""

    def run() -> None:
        order = torch.randperm(images.shape[0], device=images.device, generator=gen)
        for s in range(steps):
            idx = order[s * batch:(s + 1) * batch]
            x = augment(images[idx], gen)
            labels[idx]
            torch.cat([x] * parts)

    return run


@functools.lru_cache(maxsize=4)
def measure(opts: Options, width: int = 8, batch: int = 32) -> StepTimes:
    settings = cpu_settings(batch_size=batch)
    steps = 2  # short calls, many repetitions: each pair of timings shares the machine state
    data = load_data(opts)
    images, labels = batch_of(data, steps * batch, opts.device)
    parts = len(settings.part_weights())
    torch.manual_seed(0)
    model = build_model("relu", width).to(opts.device)
    fast = FastPath.for_device(opts.device)  # train()'s default, given to the bare passes too
    if fast.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, settings)
    x = fast.layout(to_float(images[:batch]))
    calls = iter(range(10**9))
    gen = torch.Generator(device=opts.device).manual_seed(0)
    contenders = {
        "train": lambda: train(model, images, labels, settings, seed=next(calls),
                               optimizer=optimizer),
        "bare": bare_passes(model, optimizer, x, labels[:batch], settings.steps, parts, steps,
                            fast),
        "data": data_path(images, labels, batch, steps, parts, gen),
    }
    seconds = interleaved(contenders, reps=opts.reps(25, 11), warmup=2, device=opts.device)
    return StepTimes(settings, width, steps, torch.get_num_threads(), seconds)
