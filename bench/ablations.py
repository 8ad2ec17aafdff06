"""Before/after timings of the choices in the training path, each pair interleaved:
speed-up = time(before) / time(after) (> 1: the choice pays on this machine)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from common.data import augment, to_float
from common.models import build_model
from common.training import FastPath, make_optimizer, train

from . import bn_fold
from .at_measure import measure
from .fixtures import Options, batch_of, cpu_settings, load_data
from .result import Result
from .timing import interleaved, median, paired_ratio

BATCH = 32  # the CPU preset's batch
STEPS = 2  # steps (batches) per timed call: short calls, many repetitions


def _row(what: str, before: str, after: str, seconds: dict[str, list[float]],
         per: int = STEPS) -> dict:
    b, a = seconds["before"], seconds["after"]
    return {"optimisation": what, "before": before, "after": after,
            "before ms": 1000 * median(b) / per, "after ms": 1000 * median(a) / per,
            "speed-up": paired_ratio(b, a)}


def _sgd_step(model, optimizer, x, y):
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def concatenated_forward(opts: Options, x, y) -> dict:
    """Clean, PGD and noise parts through the model as one 3B batch vs three B batches."""
    torch.manual_seed(0)
    model = build_model("relu", 8).to(opts.device)
    optimizer = make_optimizer(model, cpu_settings())
    parts = [x, (x + 0.03).clamp(0, 1), (x + 0.05 * torch.randn_like(x)).clamp(0, 1)]
    joined = torch.cat(parts)

    def separate():
        for _ in range(STEPS):
            loss = sum(F.cross_entropy(model(p), y) for p in parts) / 3
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def together():
        for _ in range(STEPS):
            logits = model(joined)
            loss = F.cross_entropy(logits, y.repeat(3), reduction="none").view(3, -1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    seconds = interleaved({"before": separate, "after": together}, reps=opts.reps(11, 7))
    return _row("one concatenated fwd/bwd (width 8)", "3 forwards of B, 1 backward",
                "1 forward of 3B", seconds)


class PilCifar(Dataset):
    """What torchvision.datasets.CIFAR10 does per item: PIL image -> transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.hwc[i])), self.labels[i]


def batched_augmentation(opts: Options, images, labels) -> dict:
    """uint8 on the device + one batched crop/flip vs a torchvision DataLoader pipeline."""
    import torchvision.transforms as T

    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(),
                           T.ToTensor()])
    loader = DataLoader(PilCifar(images.cpu(), labels.cpu(), transform), batch_size=BATCH,
                        shuffle=True, num_workers=0)  # no workers inside Ray actors
    gen = torch.Generator(device=opts.device).manual_seed(0)

    def dataloader():
        for step, (x, y) in zip(range(STEPS), loader):
            x.to(opts.device), y.to(opts.device)

    def on_device():
        order = torch.randperm(images.shape[0], device=opts.device, generator=gen)
        for step in range(STEPS):
            idx = order[step * BATCH:(step + 1) * BATCH]
            augment(images[idx], gen), labels[idx]

    seconds = interleaved({"before": dataloader, "after": on_device}, reps=opts.reps(9, 5))
    return _row("uint8 on device + batched crop/flip", "torchvision DataLoader (PIL, "
                "per-image transforms)", "augment() on a uint8 tensor", seconds)


def foreach_sgd(opts: Options, x, y) -> dict:
    """SGD (momentum, weight decay) over the 62 parameter tensors: fused vs per tensor."""
    torch.manual_seed(0)
    model = build_model("relu", 8).to(opts.device)
    s = cpu_settings()
    F.cross_entropy(model(x), y).backward()
    optimizers = {flag: torch.optim.SGD(model.parameters(), lr=1e-6, momentum=s.momentum,
                                        weight_decay=s.weight_decay, foreach=flag)
                  for flag in (False, True)}
    for opt in optimizers.values():
        opt.step()  # create the momentum buffers

    def stepper(opt):
        return lambda: [opt.step() for _ in range(STEPS * 10)]

    seconds = interleaved({"before": stepper(optimizers[False]),
                           "after": stepper(optimizers[True])}, reps=opts.reps(9, 5))
    return _row("foreach SGD (width 8)", "for-loop over tensors", "foreach=True", seconds,
                per=STEPS * 10)


def channels_last(opts: Options, x, y, width: int) -> dict:
    """fwd/bwd/SGD step, NCHW contiguous vs channels_last (model and input)."""
    torch.manual_seed(0)
    plain = build_model("relu", width).to(opts.device)
    cl = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    opt_plain, opt_cl = make_optimizer(plain, cpu_settings()), make_optimizer(cl, cpu_settings())
    x_cl = x.contiguous(memory_format=torch.channels_last)
    steps = 1 if width >= 64 else STEPS
    seconds = interleaved({
        "before": lambda: [_sgd_step(plain, opt_plain, x, y) for _ in range(steps)],
        "after": lambda: [_sgd_step(cl, opt_cl, x_cl, y) for _ in range(steps)],
    }, reps=opts.reps(3 if width >= 64 else 11, 7))
    return _row(f"channels_last (width {width}, fwd/bwd/SGD)", "NCHW", "channels_last",
                seconds, per=steps)


def fast_path(opts: Options, images, labels) -> list[dict]:
    """The whole AT step of train() on the CPU from the plain NCHW fp32 path to FastPath's
    options: channels_last (the default on every device since this measurement), bf16
    autocast (CUDA only by default), both."""
    settings = cpu_settings()
    variants = {"before": FastPath(), "channels_last": FastPath(channels_last=True),
                "bf16 autocast": FastPath(autocast=True),
                "channels_last + bf16": FastPath(channels_last=True, autocast=True)}
    calls = {}
    for name, fast in variants.items():
        torch.manual_seed(0)
        model = build_model("relu", 8).to(opts.device)
        optimizer = make_optimizer(model, settings)
        calls[name] = (lambda m=model, o=optimizer, f=fast:
                       train(m, images, labels, settings, seed=0, optimizer=o, fast=f))
    seconds = interleaved(calls, reps=opts.reps(9, 5))
    return [_row(f"FastPath {name} on CPU (train() AT step, width 8)", "FastPath() (NCHW, "
                 "fp32)", name, {"before": seconds["before"], "after": seconds[name]})
            for name in variants if name != "before"]


OMP_PROBE = """
import pathlib, sys, time, torch
from bench.fixtures import Options, batch_of, cpu_settings, load_data
from common.models import build_model
from common.training import make_optimizer, train
threads, data_dir, steps = int(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
s = cpu_settings()
x, y = batch_of(load_data(Options(data_dir=data_dir)), steps * s.batch_size, torch.device('cpu'))
m = build_model('relu', 8); o = make_optimizer(m, s)
train(m, x, y, s, seed=0, optimizer=o)
t = time.perf_counter()
for i in range(2):
    train(m, x, y, s, seed=i, optimizer=o)
print((time.perf_counter() - t) / 2)
"""


def omp_threads(opts: Options) -> list[dict]:
    """AT step (width 8, batch 32) in fresh processes: 2 OpenMP threads that spin while
    waiting (the default), 2 threads that sleep (OMP_WAIT_POLICY=PASSIVE), 1 thread.
    Spinning threads lose their core whenever other work shares the machine."""
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}

    def probe(threads: int, policy: str | None):
        env = {**base, **({"OMP_WAIT_POLICY": policy} if policy else {})}

        def run():
            out = subprocess.run([sys.executable, "-c", OMP_PROBE, str(threads),
                                  str(opts.data_dir), str(STEPS)], env=env, capture_output=True,
                                 text=True, check=True, timeout=600)
            probe.last[(threads, policy)] = float(out.stdout.strip().splitlines()[-1])
        return run

    probe.last = {}
    step_seconds: dict[str, list[float]] = {}
    contenders = {"2 threads, active wait": (2, None), "2 threads, passive": (2, "PASSIVE"),
                  "1 thread": (1, None)}
    runners = {name: probe(*spec) for name, spec in contenders.items()}

    def timed(name):
        def run():
            runners[name]()
            step_seconds.setdefault(name, []).append(probe.last[contenders[name]])
        return run

    interleaved({name: timed(name) for name in contenders}, reps=2, warmup=0)
    active = step_seconds["2 threads, active wait"]
    return [{"optimisation": f"OpenMP: {name} (AT step, width 8)",
             "before": "2 threads, active wait", "after": name,
             "before ms": 1000 * median(active) / STEPS,
             "after ms": 1000 * median(v) / STEPS, "speed-up": paired_ratio(active, v)}
            for name, v in step_seconds.items() if name != "2 threads, active wait"]


def run(opts: Options) -> Result:
    began = time.perf_counter()
    data = load_data(opts)
    images, labels = batch_of(data, 2048, opts.device)
    x, y = to_float(images[:BATCH]), labels[:BATCH]
    rows = [concatenated_forward(opts, x, y), batched_augmentation(opts, images, labels),
            foreach_sgd(opts, x, y)]
    for width in (8, 16) if opts.quick else (8, 16, 64):
        rows.append(channels_last(opts, x, y, width))
        if width != 8:  # not the preset's step: a share of its AT step would mislead
            rows[-1]["saved, % of AT step"] = float("nan")
    rows += fast_path(opts, images[:STEPS * BATCH], labels[:STEPS * BATCH])
    rows.append(bn_fold.measure(opts, 8, BATCH))
    if not opts.quick:
        rows.append(bn_fold.measure(opts, 16, 128))
        rows[-1]["saved, % of AT step"] = float("nan")
    if not opts.quick:
        rows += omp_threads(opts)
    step_ms = 1000 * median(measure(opts).seconds["train"]) / measure(opts).steps_per_call
    for row in rows:  # per AT step: the PGD rows are one attack = one step's PGD
        row.setdefault("saved, % of AT step",
                       100 * (row["before ms"] - row["after ms"]) / step_ms)
    return Result(
        name="ablations", title="What each optimisation buys (CPU)", ratio=None,
        meaning=(f"speed-up = before / after (median of per-repetition ratios); ms per step "
                 f"(per attack in the PGD rows), batch {BATCH} unless stated; the last column "
                 f"relates the saving to one train() AT step of the CPU preset "
                 f"({step_ms:.0f} ms). PGD in-place buffers vs fresh tensors: see the attack "
                 "benchmark."),
        details={"rows": rows, "at_step_ms": step_ms}, table=rows,
        seconds=time.perf_counter() - began)
