"""Bounded message exchange with nodes, and a bounded wait for nodes to connect.

Flower's own helpers wait without limit for nodes (sample_nodes) and poll replies every 3 s
(send_and_receive); a multi-day run needs a clear log line and an end instead of a silent
hang, and short rounds should not pay 3 s of polling each. While a training round's replies
come in, a RoundReporter logs the progress within the round (common.progress_lines).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING

from flwr.app import Message
from flwr.common.logger import log
from flwr.serverapp import Grid

from common import progress_lines, protocol

POLL_SECONDS = 0.1  # first poll for replies; then back off (each poll costs the SuperLink CPU)
POLL_MAX_SECONDS = 2.0
NODE_POLL_SECONDS = 1.0
LOG_EVERY_SECONDS = 15.0
HEARTBEAT_SECONDS = 30.0  # the longest a training round stays silent in the log


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


class RoundReporter:
    """Logs a training round while its replies come in: at the start, after each batch of
    replies (clients done, images/s, round eta) and otherwise every HEARTBEAT_SECONDS, so that
    the log is never silent for minutes while clients train."""

    def __init__(self, server_round: int, num_rounds: int, local_epochs: int,
                 every: float = HEARTBEAT_SECONDS) -> None:
        self.server_round, self.num_rounds = server_round, num_rounds
        self.local_epochs, self.every = local_epochs, every
        self.sampled = self.done = self.images = 0
        self.started = self.last_line = time.monotonic()

    def start(self, sampled: int) -> None:
        self.sampled, self.done, self.images = sampled, 0, 0
        self.started = time.monotonic()
        self._log()

    def update(self, new_replies: list[Message]) -> None:
        for reply in new_replies:
            self.done += 1
            self.images += trained_examples(reply) * self.local_epochs
        if new_replies or time.monotonic() - self.last_line >= self.every:
            self._log()

    def _log(self) -> None:
        self.last_line = time.monotonic()
        log(INFO, progress_lines.round_training(
            self.server_round, self.num_rounds, self.sampled, self.done,
            self.last_line - self.started, self.images))


def trained_examples(reply: Message) -> int:
    """The examples a train reply says it trained on; 0 for errors and malformed replies
    (the strategy rejects those and records why)."""
    if reply.has_error():
        return 0
    try:
        count = float(reply.content[protocol.METRICS][protocol.NUM_EXAMPLES])
    except (KeyError, TypeError, ValueError):
        return 0
    return int(count) if math.isfinite(count) and count > 0 else 0


def exchange(
    grid: Grid, messages: Iterable[Message], timeout: float,
    reporter: RoundReporter | None = None,
) -> tuple[list[Message], dict[str, int]]:
    """Send `messages`, collect replies until all arrived or `timeout` passed.

    Returns the replies and the map message id -> destination node (for every message the
    SuperLink accepted), which identifies the node behind an error reply: those come from
    the SuperLink, not from the node. `reporter`, if given, logs the progress.
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
    if reporter is not None:
        reporter.start(len(sent))
    while waiting and time.monotonic() < deadline:
        new = list(grid.pull_messages(list(waiting)))
        for reply in new:
            replies.append(reply)
            waiting.discard(reply.metadata.reply_to_message_id)
        if reporter is not None:
            reporter.update(new)
        if waiting:
            # Short rounds get their replies fast, long ones cost few polls.
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 1.5, POLL_MAX_SECONDS)
    return replies, sent
