"""Peak memory of the processes a benchmark starts, read from /proc while they run.

VmHWM is a process's own peak resident set; polling it until the process exits gives the
peak of every Flower/Ray process the harness spawns (only descendants of this process are
looked at, never other users' processes).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from simulation.procs import descendants

ROLES = (  # (role, substring of the command line); first match wins
    ("client", "ClientAppActor"),
    ("server", "flwr-simulation"),
    ("superlink", "flower-superlink"),
)


@dataclass
class Peak:
    pid: int
    role: str
    command: str
    hwm_kb: int = 0


def _status_kb(pid: int, field: str) -> int | None:
    try:
        for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _command(pid: int) -> str:
    try:
        raw = (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def role_of(command: str) -> str:
    return next((role for role, key in ROLES if key in command), "other")


class PeakWatcher:
    """Polls the descendants of `root` (default: this process) every `interval` seconds
    in a background thread; use as a context manager."""

    def __init__(self, root: int | None = None, interval: float = 0.5) -> None:
        self.root = root or os.getpid()
        self.interval = interval
        self.peaks: dict[int, Peak] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _poll(self) -> None:
        for pid in descendants(self.root):
            hwm = _status_kb(pid, "VmHWM")
            if hwm is None:
                continue
            command = _command(pid)  # Ray renames actor processes once they host an actor
            peak = self.peaks.setdefault(pid, Peak(pid, role_of(command), command))
            if role_of(command) != "other":
                peak.role, peak.command = role_of(command), command
            peak.hwm_kb = max(peak.hwm_kb, hwm)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()

    def __enter__(self) -> PeakWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def by_role(self) -> dict[str, list[Peak]]:
        out: dict[str, list[Peak]] = {}
        for peak in self.peaks.values():
            out.setdefault(peak.role, []).append(peak)
        return out


def own_peak_kb() -> int:
    return _status_kb(os.getpid(), "VmHWM") or 0
