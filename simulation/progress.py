"""A one-line progress display fed by the server's per-round log lines."""

from __future__ import annotations

import re
import sys
import time
from typing import TextIO

ROUND_LINE = re.compile(r"\[round (\d+)/(\d+)\] (.*)$")
BAR_WIDTH = 24


class RoundProgress:
    """Shows `round i/N [#####-----] accuracies | eta` as rounds finish.

    On a terminal the line is redrawn in place; otherwise (CI logs, files) each round
    prints one line.
    """

    def __init__(self, label: str, stream: TextIO = sys.stderr) -> None:
        self.label = label
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.last = ""

    def feed(self, line: str) -> bool:
        """Update from a log line; True if it was a round line."""
        m = ROUND_LINE.search(line)
        if not m:
            return False
        done, total, detail = int(m.group(1)), int(m.group(2)), m.group(3)
        filled = round(BAR_WIDTH * done / max(total, 1))
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        text = f"{self.label} round {done}/{total} [{bar}] {detail}"
        if self.tty:
            self.stream.write("\r\033[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self.last = text
        return True

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
