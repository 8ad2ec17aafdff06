"""AT step efficiency: the bare passes an adversarial-training step contains, over the time
of a real step of common.training.train (PGD-k + noise + clean, soft labels, SGD)."""

from __future__ import annotations

from .at_measure import measure
from .fixtures import Options
from .result import Result
from .timing import median, paired_ratio, spread

TARGET = 0.95


def run(opts: Options) -> Result:
    t = measure(opts)
    s, steps = t.settings, t.steps_per_call
    ratio = paired_ratio(t.seconds["bare"], t.seconds["train"])
    train_ms = 1000 * median(t.seconds["train"]) / steps
    bare_ms = 1000 * median(t.seconds["bare"]) / steps
    return Result(
        name="at_step", title="AT step efficiency", ratio=ratio, target=TARGET,
        meaning=(f"bare passes / train() step, width {t.width}, batch {s.batch_size}, "
                 f"PGD-{s.steps} + noise + clean ({3 * s.batch_size} images per update), "
                 f"{t.threads} thread(s), {steps} steps per timed call, "
                 f"{len(t.seconds['train'])} interleaved "
                 "repetitions, median of per-repetition ratios"),
        details={"threads": t.threads, "width": t.width, "batch": s.batch_size,
                 "pgd_steps": s.steps,
                 "steps_per_call": steps, "seconds": t.seconds},
        table=[{"what": "train() step", "ms/step": train_ms,
                "spread (IQR/median)": spread(t.seconds["train"])},
               {"what": f"bare: {s.steps} input-grad passes + fwd/bwd/SGD on 3B",
                "ms/step": bare_ms, "spread (IQR/median)": spread(t.seconds["bare"])},
               {"what": "overhead of train() over bare", "ms/step": train_ms - bare_ms}],
    )
