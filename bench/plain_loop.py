"""The yardstick of ../shared/CALIBRATION.md: a minimal single-process PyTorch loop (no
Flower, no Ray, no common.training), to compare accuracy and wall time with the harness at
equal settings.

    python -m bench.plain_loop --width 16 --epochs 6 [--pgd-mode train|eval] [--no-at]

The model and the evaluation are the project's (the same architecture and the same
measurement); everything in between is the textbook loop: DataLoader-free tensor batches,
PGD written out inline, one optimizer over the whole run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common.data import augment, load_cifar10
from common.evaluation import EvalSettings, evaluate, parse_attacks
from common.models import build_model

from .fixtures import DEFAULT_DATA

EPS = 8 / 255


def pgd_inline(model, x, y, steps: int, step: float, train_mode: bool) -> torch.Tensor:
    was_training = model.training
    model.train(train_mode)
    x_adv = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + step * grad.sign(), x - EPS), x + EPS)
        x_adv = x_adv.clamp(0, 1)
    model.train(was_training)
    return x_adv.detach()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.plain_loop", description=__doc__)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--pgd-steps", type=int, default=3)
    p.add_argument("--pgd-mode", choices=("train", "eval"), default="train",
                   help="BatchNorm mode while generating training PGD (default train)")
    p.add_argument("--no-at", action="store_true", help="clean batches only")
    p.add_argument("--eval-limit", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = p.parse_args(argv)
    if not (args.data_dir / "cifar-10-batches-py").is_dir():
        p.error(f"no CIFAR-10 at {args.data_dir} (needs cifar-10-batches-py/); pass --data-dir")

    torch.manual_seed(args.seed)
    data = load_cifar10(args.data_dir)
    images, labels = data.train_x, data.train_y
    model = build_model("relu", args.width)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=2e-4)
    gen = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(images), generator=gen)
        for first in range(0, len(images), args.batch):
            idx = order[first:first + args.batch]
            x, y = augment(images[idx], gen), labels[idx]
            parts = [x]
            if not args.no_at:
                parts.append(pgd_inline(model, x, y, args.pgd_steps, 2.5 * EPS / args.pgd_steps,
                                        args.pgd_mode == "train"))
                parts.append((x + 0.05 * torch.randn_like(x)).clamp(0, 1))
            logits = model(torch.cat(parts))
            loss = F.cross_entropy(logits, y.repeat(len(parts)), label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.3f}, "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    train_seconds = time.perf_counter() - started
    n = args.eval_limit or len(data.test_y)
    settings = EvalSettings(parse_attacks("fgsm,pgd10"), eps=EPS, step=2 / 255, noise_std=0.0,
                            batch_size=250)
    acc = evaluate(model, data.test_x[:n], data.test_y[:n], settings)
    result = {"width": args.width, "epochs": args.epochs, "pgd_mode": args.pgd_mode,
              "adversarial": not args.no_at, "train_seconds": round(train_seconds, 1),
              **{k: round(100 * v, 1) for k, v in acc.items()}}
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
