"""Process-tree teardown without psutil: find descendants through /proc, stop them all.

Flower's SuperLink starts its SuperExec in a new session, so signalling the SuperLink's
process group alone does not reach the SuperExec, the ServerApp or Ray; every descendant's
group is signalled too.

SIGTERM and SIGHUP (`kill`, a closed terminal, a batch scheduler's time limit) take the same
path as Ctrl-C: `stop_signals` turns the first of them into `Stopped`, a KeyboardInterrupt,
so the `finally` blocks that call stop_tree run; later ones are ignored, and one that arrives
during stop_tree waits until that tree is stopped, so teardown is never cut short.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """The harness was asked to stop by a signal (Ctrl-C, `kill`, a closed terminal)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def stop_signal(exc: KeyboardInterrupt) -> int:
    """The signal behind an interruption; a plain KeyboardInterrupt is Ctrl-C's SIGINT."""
    return getattr(exc, "signum", signal.SIGINT)


def stop_reason(exc: KeyboardInterrupt) -> str:
    return f"stopped by {signal.Signals(stop_signal(exc)).name}"


class _StopGuard:
    """State shared by the signal handler and `stop_deferred` (main thread only)."""

    def __init__(self) -> None:
        self.stopping: int | None = None  # the signal being acted on
        self.deferring = 0
        self.pending: int | None = None

    def handle(self, signum: int, frame: object) -> None:
        if self.stopping is not None:
            return  # already stopping: a second Ctrl-C or `kill` must not cut teardown short
        if self.deferring:
            self.pending = signum
            return
        self.stopping = signum
        raise Stopped(signum)


_guard = _StopGuard()


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Within the block, SIGINT, SIGTERM and SIGHUP raise `Stopped` once. A signal ignored
    when the process started (nohup, background jobs) stays ignored. The previous handlers
    come back afterwards unless a stop is under way (then later signals stay ignored)."""
    global _guard
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _guard = _StopGuard()
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(sig, _guard.handle)
    try:
        yield
    finally:
        if _guard.stopping is None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


@contextlib.contextmanager
def stop_deferred() -> Iterator[None]:
    """Hold a stop signal that arrives inside the block; raise it when the block is done."""
    _guard.deferring += 1
    try:
        yield
    finally:
        _guard.deferring -= 1
    if not _guard.deferring and _guard.pending is not None and _guard.stopping is None:
        _guard.stopping, _guard.pending = _guard.pending, None
        raise Stopped(_guard.stopping)


def _parent_of(pid: int) -> int | None:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; the fields after it are fixed.
    return int(stat.rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    """True for a running process; zombies count as gone."""
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent = _parent_of(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _signal_tree(pids: list[int], sig: int) -> None:
    own_group = os.getpgrp()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            group = os.getpgid(pid)
            if group != own_group:  # never signal the caller's own group
                os.killpg(group, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def stop_tree(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the process and all its descendants (and their groups), wait (bounded),
    then SIGKILL whatever is left. A stop signal meanwhile is raised afterwards."""
    with stop_deferred():
        tree = [proc.pid, *descendants(proc.pid)]
        _signal_tree(tree, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(alive(p) for p in tree):
            # Descendants started during shutdown are caught by the SIGKILL sweep below.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.2)
        tree = list(dict.fromkeys(tree + descendants(proc.pid)))
        _signal_tree([p for p in tree if alive(p)], signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
