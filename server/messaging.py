"""Bounded message exchange with nodes, and a bounded wait for nodes to connect.

Flower's own helpers wait without limit for nodes (sample_nodes) and poll replies every 3 s
(send_and_receive); a multi-day run needs a clear log line and an end instead of a silent
hang, and short rounds should not pay 3 s of polling each.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING

from flwr.app import Message
from flwr.common.logger import log
from flwr.serverapp import Grid

POLL_SECONDS = 0.1  # first poll for replies; then back off (each poll costs the SuperLink CPU)
POLL_MAX_SECONDS = 2.0
NODE_POLL_SECONDS = 1.0
LOG_EVERY_SECONDS = 15.0


def connected_nodes(grid: Grid) -> list[int]:
    return sorted(grid.get_node_ids())


def wait_until(
    ready: Callable[[], bool], timeout: float, describe: Callable[[], str], what: str
) -> bool:
    """Poll `ready` until it is true or `timeout` seconds pass; log progress while waiting."""
    deadline = time.monotonic() + timeout
    next_log = time.monotonic()
    while True:
        if ready():
            return True
        now = time.monotonic()
        if now >= deadline:
            log(WARNING, "Gave up waiting for %s after %.0f s: %s", what, timeout, describe())
            return False
        if now >= next_log:
            log(INFO, "Waiting for %s: %s (giving up in %.0f s)", what, describe(),
                deadline - now)
            next_log = now + LOG_EVERY_SECONDS
        time.sleep(min(NODE_POLL_SECONDS, max(0.0, deadline - now)))


def exchange(
    grid: Grid, messages: Iterable[Message], timeout: float
) -> tuple[list[Message], dict[str, int]]:
    """Send `messages`, collect replies until all arrived or `timeout` passed.

    Returns the replies and the map message id -> destination node (for every message the
    SuperLink accepted), which identifies the node behind an error reply: those come from
    the SuperLink, not from the node.
    """
    messages = list(messages)
    if not messages:
        return [], {}
    ids = list(grid.push_messages(messages))  # same order as messages; None = not accepted
    sent = {mid: msg.metadata.dst_node_id for mid, msg in zip(ids, messages) if mid}
    waiting = set(sent)
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    pause = POLL_SECONDS
    while waiting and time.monotonic() < deadline:
        for reply in grid.pull_messages(list(waiting)):
            replies.append(reply)
            waiting.discard(reply.metadata.reply_to_message_id)
        if waiting:
            # Short rounds get their replies fast, long ones cost few polls.
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 1.5, POLL_MAX_SECONDS)
    return replies, sent
