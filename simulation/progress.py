"""A one-line progress display fed by the server's progress log lines (common.progress_lines)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from common import progress_lines
from common.progress_lines import RoundEnd, RoundEvaluating, RoundTraining

BAR_WIDTH = 24


class RoundProgress:
    """Shows `round i/N [#####-----] accuracies | eta` as rounds finish and
    `round i/N [###------] training: 4/10 clients done | images/s | round eta` within a round
    (and `evaluating: ...` while the server evaluates the new global model).

    On a terminal the line is redrawn in place; otherwise (CI logs, files) each update
    prints one line.
    """

    def __init__(self, label: str, stream: TextIO = sys.stderr) -> None:
        self.label = label
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.last = ""

    def feed(self, line: str) -> bool:
        """Update from a log line; True if it was a progress line."""
        status = progress_lines.parse(line)
        if isinstance(status, RoundEnd):
            text = self._bar(status.round, status.total, status.round, status.detail)
        elif isinstance(status, RoundTraining):
            text = self._bar(status.round, status.total,
                             status.round - 1 + status.done / max(status.sampled, 1),
                             self._training(status))
        elif isinstance(status, RoundEvaluating):
            text = self._bar(status.round, status.total, status.round,
                             f"evaluating: {status.detail}")
        else:
            return False
        if self.tty:
            self.stream.write("\r\033[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self.last = text
        return True

    def _bar(self, rnd: int, total: int, rounds_done: float, detail: str) -> str:
        filled = round(BAR_WIDTH * rounds_done / max(total, 1))
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        return f"{self.label} round {rnd}/{total} [{bar}] {detail}"

    @staticmethod
    def _training(status: RoundTraining) -> str:
        if status.eta is None:
            return (f"training on {status.sampled} clients, {status.elapsed:.0f} s elapsed, "
                    "no reply yet")
        return (f"training: {status.done}/{status.sampled} clients done | "
                f"{status.images_per_second:,.0f} images/s (wall time) | "
                f"round eta {status.eta / 60:.1f} min")

    def note(self, text: str) -> None:
        """Print a message above the bar."""
        if self.tty and self.last:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        if self.tty and self.last:
            self.stream.write(self.last)
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.last:
            self.stream.write("\n")
        self.stream.write(f"{self.label}: {time.monotonic() - self.started:.0f} s\n")
        self.stream.flush()
