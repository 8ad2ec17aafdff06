"""Find and stop the processes a test started, by a marker in their environment; wait for a
condition, bounded."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def processes_with(marker: str) -> dict[int, str]:
    """pid -> command line of every process whose command line or environment mentions
    `marker` (tests put their temporary folder in FLWR_HOME/TMPDIR, which children inherit)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline or marker in environ:
            found[int(entry.name)] = cmdline.strip()
    return found


def wait_until_gone(marker: str, timeout: float = 30.0) -> dict[int, str]:
    """Wait (bounded) for every marked process to exit; return the ones still alive."""
    deadline = time.monotonic() + timeout
    while (alive := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return alive


def kill_all(marker: str) -> None:
    """Last-resort cleanup so that a failing test does not leave processes behind."""
    for pid in processes_with(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def wait_for(ready, timeout: float, what: str, details=lambda: "", interval: float = 0.5) -> None:
    """Poll `ready()` every `interval` s; after `timeout` s fail with `what` and `details()`."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n"
                                 f"{details()}")
        time.sleep(interval)
