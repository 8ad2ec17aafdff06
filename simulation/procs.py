"""Process-tree teardown without psutil: find descendants through /proc, stop them all.

Flower's SuperLink starts its SuperExec in a new session, so signalling the SuperLink's
process group alone does not reach the SuperExec, the ServerApp or Ray; every descendant's
group is signalled too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path


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
    then SIGKILL whatever is left."""
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
