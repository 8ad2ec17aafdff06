"""The progress lines the server logs and the harness draws: one format, one parser.

The ServerApp logs them (through Flower's log stream) and simulation/progress.py parses them
back. Each kind of line is one `LineFormat`, a template that writes the line and, read
backwards, parses it, so the two cannot drift apart:

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

IMAGES_PER_SECOND_BASIS = "finished clients' images x epochs / wall time"

# What a field of a template may hold, and how its text becomes a value again.
_KINDS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "int": (r"\d+", int),
    "number": (r"[-+\w.,]+", lambda text: float(text.replace(",", ""))),  # 1,850 | 7.2 | nan
    "text": (r".*", str),
}
_FIELD = re.compile(r"\{(\w+)(?::[^}]*)?\}")  # a str.format field: {name} or {name:spec}


class LineFormat:
    """A line laid out by a str.format template whose fields each have a kind (_KINDS):
    `format` fills the template, `parse` finds such a line (after any prefix) and returns
    its fields' values."""

    def __init__(self, template: str, **kinds: str) -> None:
        self.template, self.kinds = template, kinds
        parts = _FIELD.split(template)  # literal, field name, literal, ...
        pattern = "".join(re.escape(part) if i % 2 == 0
                          else f"(?P<{part}>{_KINDS[kinds[part]][0]})"
                          for i, part in enumerate(parts))
        self._regex = re.compile(pattern + "$")

    def format(self, **values: Any) -> str:
        return self.template.format(**values)

    def parse(self, line: str) -> dict[str, Any] | None:
        m = self._regex.search(line)
        if m is None:
            return None
        return {name: _KINDS[self.kinds[name]][1](text) for name, text in m.groupdict().items()}


_ROUND = {"round": "int", "total": "int"}
END = LineFormat("[round {round}/{total}] {detail}", **_ROUND, detail="text")
EVALUATING = LineFormat("[round {round}/{total} evaluating] {detail}", **_ROUND, detail="text")
WAITING = LineFormat("[round {round}/{total} training] {sampled} clients training, "
                     "{elapsed:.0f} s elapsed, no reply yet",
                     **_ROUND, sampled="int", elapsed="number")
TRAINING = LineFormat("[round {round}/{total} training] {done}/{sampled} clients done, "
                      "{elapsed:.0f} s elapsed | {rate:,.0f} images/s ("
                      + IMAGES_PER_SECOND_BASIS + ") | round eta {eta_minutes:.1f} min",
                      **_ROUND, done="int", sampled="int", elapsed="number", rate="number",
                      eta_minutes="number")


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
    return END.format(round=rnd, total=total, detail=detail)


def round_evaluating(rnd: int, total: int, detail: str) -> str:
    return EVALUATING.format(round=rnd, total=total, detail=detail)


def round_training(rnd: int, total: int, sampled: int, done: int, elapsed: float,
                   images: int = 0) -> str:
    """`images`: the training images the finished clients went through (their examples x
    local epochs); the rate is that over the round's wall time so far."""
    if not done:
        return WAITING.format(round=rnd, total=total, sampled=sampled, elapsed=elapsed)
    status = RoundTraining(rnd, total, sampled, done, elapsed)
    return TRAINING.format(round=rnd, total=total, done=done, sampled=sampled, elapsed=elapsed,
                           rate=images / elapsed if elapsed > 0 else 0.0,
                           eta_minutes=status.eta / 60)


def parse(line: str) -> RoundEnd | RoundTraining | RoundEvaluating | None:
    """The progress line inside a log line (any prefix), or None."""
    if (v := TRAINING.parse(line)) is not None:
        return RoundTraining(v["round"], v["total"], v["sampled"], v["done"], v["elapsed"],
                             v["rate"])
    if (v := WAITING.parse(line)) is not None:
        return RoundTraining(v["round"], v["total"], v["sampled"], 0, v["elapsed"])
    if (v := EVALUATING.parse(line)) is not None:
        return RoundEvaluating(v["round"], v["total"], v["detail"])
    if (v := END.parse(line)) is not None:
        return RoundEnd(v["round"], v["total"], v["detail"])
    return None
