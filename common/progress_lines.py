"""The progress lines the server logs and the harness draws: one format, one parser.

The ServerApp logs them (through Flower's log stream) and simulation/progress.py parses them
back, so both sides live here:

    [round 3/10] natural 41.2% | ... | 10 ok, 0 failed, 0 rejected | 62 s, eta 7.2 min
    [round 3/10 training] 10 clients training, 30 s elapsed, no reply yet
    [round 3/10 training] 4/10 clients done, 41 s elapsed | 1,850 images/s (finished
        clients' images x epochs / wall time) | round eta 1.0 min        (one line)
    [round 3/10 evaluating] central evaluation (fgsm,pgd10)

The first ends a round; the others report a round in progress (a heartbeat before the first
reply, then one line per batch of replies, then the central evaluation).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_END = re.compile(r"\[round (\d+)/(\d+)\] (.*)$")
_EVALUATING = re.compile(r"\[round (\d+)/(\d+) evaluating\] (.*)$")
_TRAINING = re.compile(
    r"\[round (\d+)/(\d+) training\] (?:(\d+) clients training, (\d+) s elapsed, no reply yet"
    r"|(\d+)/(\d+) clients done, (\d+) s elapsed \| ([\d,]+) images/s .*)$")
IMAGES_PER_SECOND_BASIS = "finished clients' images x epochs / wall time"


@dataclass(frozen=True)
class RoundEnd:
    round: int
    total: int
    detail: str  # accuracies, client counts, time, run eta


@dataclass(frozen=True)
class RoundEvaluating:
    round: int
    total: int
    detail: str


@dataclass(frozen=True)
class RoundTraining:
    round: int
    total: int
    sampled: int
    done: int  # replies so far (failed ones included)
    elapsed: float  # seconds since the round's messages were sent
    images_per_second: float = 0.0  # images (x local epochs) of finished clients / elapsed

    @property
    def eta(self) -> float | None:
        """Seconds until the last reply, if the rest take as long as the finished ones."""
        if not self.done:
            return None
        return self.elapsed / self.done * (self.sampled - self.done)


def round_end(rnd: int, total: int, detail: str) -> str:
    return f"[round {rnd}/{total}] {detail}"


def round_evaluating(rnd: int, total: int, detail: str) -> str:
    return f"[round {rnd}/{total} evaluating] {detail}"


def round_training(rnd: int, total: int, sampled: int, done: int, elapsed: float,
                   images: int = 0) -> str:
    """`images`: the training images the finished clients went through (their examples x
    local epochs); the rate is that over the round's wall time so far."""
    head = f"[round {rnd}/{total} training]"
    if not done:
        return f"{head} {sampled} clients training, {elapsed:.0f} s elapsed, no reply yet"
    status = RoundTraining(rnd, total, sampled, done, elapsed)
    rate = images / elapsed if elapsed > 0 else 0.0
    return (f"{head} {done}/{sampled} clients done, {elapsed:.0f} s elapsed | "
            f"{rate:,.0f} images/s ({IMAGES_PER_SECOND_BASIS}) | "
            f"round eta {status.eta / 60:.1f} min")


def parse(line: str) -> RoundEnd | RoundTraining | RoundEvaluating | None:
    """The progress line inside a log line (any prefix), or None."""
    m = _TRAINING.search(line)
    if m:
        rnd, total = int(m.group(1)), int(m.group(2))
        if m.group(3) is not None:
            return RoundTraining(rnd, total, int(m.group(3)), 0, float(m.group(4)))
        return RoundTraining(rnd, total, int(m.group(6)), int(m.group(5)), float(m.group(7)),
                             float(m.group(8).replace(",", "")))
    m = _EVALUATING.search(line)
    if m:
        return RoundEvaluating(int(m.group(1)), int(m.group(2)), m.group(3))
    m = _END.search(line)
    if m:
        return RoundEnd(int(m.group(1)), int(m.group(2)), m.group(3))
    return None
