"""Each training objective's step over the mixed step (the paper's): the same width, batch
and images, calls of common.training.train timed side by side (interleaved), ratio =
time(objective) / time(mixed), the median of per-repetition ratios.

The objectives run as the objectives study runs them (simulation.studies: the published
ones without noise copies and soft labels, mixed with both); at the CPU preset's PGD-3 and,
in the full run, at the published PGD-10, the inner attacks of mixed, trades, mart and
calfat taking the same number of steps. fgsm-rs takes one step whatever the count.
"""

from __future__ import annotations

import dataclasses

import torch

from common import protocol
from common.models import build_model
from common.objectives import NAMES
from common.training import make_optimizer, train
from simulation.studies import PUBLISHED

from .fixtures import Options, batch_of, load_data, preset_config
from .result import Result
from .timing import interleaved, median, paired_ratio, spread

WIDTH, BATCH = 8, 32  # the CPU preset's
STEPS = 2  # batches per timed call: short calls, many repetitions
TARGET = 0.5  # fgsm-rs should cost a fraction of the mixed step with PGD


def settings_for(objective: str, pgd_steps: int):
    """Round-1 settings of presets/cpu-small.toml with the study's overrides, one epoch."""
    changes = {} if objective == "mixed" else PUBLISHED
    cfg = preset_config("cpu-small", f"train.objective={objective}",
                        *(f"{k}={v}" for k, v in changes.items()))
    s = protocol.train_settings(cfg, 1)
    return dataclasses.replace(s, epochs=1, steps=pgd_steps, step=2.5 * s.eps / pgd_steps)


def measure(opts: Options, images, labels, pgd_steps: int) -> dict[str, list[float]]:
    calls = iter(range(10**9))
    contenders = {}
    for objective in NAMES:
        settings = settings_for(objective, pgd_steps)
        torch.manual_seed(0)
        model = build_model("relu", WIDTH).to(opts.device)
        optimizer = make_optimizer(model, settings)
        contenders[objective] = (lambda m=model, o=optimizer, s=settings:
                                 train(m, images, labels, s, seed=next(calls), optimizer=o))
    return interleaved(contenders, reps=opts.reps(11, 5), warmup=1, device=opts.device)


def run(opts: Options) -> Result:
    images, labels = batch_of(load_data(opts), STEPS * BATCH, opts.device)
    rows, details = [], {}
    for pgd_steps in (3,) if opts.quick else (3, 10):
        seconds = measure(opts, images, labels, pgd_steps)
        details[f"pgd{pgd_steps}"] = seconds
        for objective in NAMES:
            rows.append({"objective": objective, "PGD steps (fgsm-rs: 1)": pgd_steps,
                         "ms/step": 1000 * median(seconds[objective]) / STEPS,
                         "spread (IQR/median)": spread(seconds[objective]),
                         "time / mixed": paired_ratio(seconds[objective], seconds["mixed"])})
    headline = paired_ratio(details["pgd3"]["fgsm-rs"], details["pgd3"]["mixed"])
    return Result(
        name="objectives", title="Objective step cost (vs mixed)", ratio=headline,
        target=TARGET, direction="<=",
        meaning=(f"fgsm-rs train() step / mixed train() step with PGD-3 (the CPU preset), "
                 f"width {WIDTH}, batch {BATCH}, {torch.get_num_threads()} thread(s), "
                 f"{STEPS} steps per timed call; every objective's ratio in the table, "
                 "median of per-repetition ratios. Mixed holds clean + PGD + noise copies (3B "
                 "images per update); trades and mart clean + adversarial (2B), fgsm-rs and "
                 "calfat adversarial only (B), as the objectives study runs them"),
        details={"width": WIDTH, "batch": BATCH, "steps_per_call": STEPS,
                 "seconds": details, "rows": rows},
        table=rows,
    )
