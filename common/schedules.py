"""Learning-rate schedules as functions of global training progress p in [0, 1].

Keying on progress (not on epochs or rounds) lets a federated run (rounds x local epochs) and
a centralized run (epochs) share one schedule: a client training in round r of R covers
p in [(r-1)/R, r/R] and looks up the rate for each of its steps.
"""

from __future__ import annotations

import math

NAMES = ("fixed", "step", "cosine", "onecycle")
STEP_MILESTONES = (0.5, 0.75)  # the rate drops 10x at half and at three quarters of training
ONECYCLE_WARMUP = 0.3  # fraction of training spent ramping up from lr/25 to lr


def lr_at(schedule: str, base_lr: float, progress: float) -> float:
    """The learning rate at `progress` (clipped to [0, 1]) for a schedule in NAMES."""
    p = min(max(progress, 0.0), 1.0)
    if schedule == "fixed":
        return base_lr
    if schedule == "step":
        return base_lr * 0.1 ** sum(p >= m for m in STEP_MILESTONES)
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule == "onecycle":
        if p < ONECYCLE_WARMUP:
            return base_lr * (0.04 + 0.96 * p / ONECYCLE_WARMUP)
        q = (p - ONECYCLE_WARMUP) / (1.0 - ONECYCLE_WARMUP)
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * q))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; valid: {', '.join(NAMES)}")
