"""The progress lines between the server's log and the harness: format, parse, draw.

The harness test in test_simulation.py checks that real runs show them."""

from __future__ import annotations

import io
import logging
import time

import pytest
from flwr.app import Message, MessageType, Metadata, MetricRecord, RecordDict

from common import progress_lines, protocol
from common.progress_lines import RoundEnd, RoundEvaluating, RoundTraining
from server.messaging import RoundReporter, trained_examples
from simulation.progress import RoundProgress

FLOWER_PREFIX = "INFO :      "  # how the ServerApp's log lines reach the harness


def test_round_end_line_round_trips():
    line = progress_lines.round_end(3, 10, "natural 41.2% | 10 ok | 62 s, eta 7.2 min")
    assert progress_lines.parse(FLOWER_PREFIX + line) == RoundEnd(
        3, 10, "natural 41.2% | 10 ok | 62 s, eta 7.2 min")


def test_evaluating_line_round_trips():
    line = progress_lines.round_evaluating(3, 10, "central evaluation (fgsm,pgd10)")
    assert progress_lines.parse(FLOWER_PREFIX + line) == RoundEvaluating(
        3, 10, "central evaluation (fgsm,pgd10)")


def test_heartbeat_before_the_first_reply_round_trips():
    line = progress_lines.round_training(1, 10, sampled=10, done=0, elapsed=45.2)
    assert "10 clients training, 45 s elapsed" in line
    status = progress_lines.parse(FLOWER_PREFIX + line)
    assert status == RoundTraining(1, 10, sampled=10, done=0, elapsed=45.0)
    assert status.eta is None


def test_clients_done_line_round_trips_with_rate_and_eta():
    # 4 clients of 450 images x 2 epochs in 40 s: 90 images/s; 6 more at 10 s each.
    line = progress_lines.round_training(3, 10, sampled=10, done=4, elapsed=40.0,
                                         images=4 * 450 * 2)
    assert "4/10 clients done" in line and "90 images/s" in line and "round eta 1.0 min" in line
    assert progress_lines.IMAGES_PER_SECOND_BASIS in line  # says what the rate is
    status = progress_lines.parse(FLOWER_PREFIX + line)
    assert status == RoundTraining(3, 10, sampled=10, done=4, elapsed=40.0,
                                   images_per_second=90.0)
    assert status.eta == pytest.approx(60.0)
    big = progress_lines.round_training(1, 2, sampled=3, done=1, elapsed=1.0, images=12345)
    assert progress_lines.parse(big).images_per_second == 12345.0  # thousands separators


def test_other_lines_are_not_progress():
    for line in ("INFO :      Node 7 holds partition 1/3 (450 images)",
                 "[round x/10] broken", "round 3/10 done", ""):
        assert progress_lines.parse(line) is None


def test_harness_draws_a_partial_bar_within_a_round_and_a_full_one_at_its_end():
    out = io.StringIO()
    progress = RoundProgress("run", stream=out)
    assert progress.feed(FLOWER_PREFIX + progress_lines.round_training(2, 4, 10, 0, 31.0))
    assert progress.feed(progress_lines.round_training(2, 4, 10, 5, 50.0, images=5000))
    assert progress.feed(progress_lines.round_evaluating(2, 4, "central evaluation (fgsm)"))
    assert progress.feed(progress_lines.round_end(2, 4, "natural 30.0%"))
    assert not progress.feed("INFO :      something else")
    lines = out.getvalue().splitlines()
    assert lines[0] == ("run round 2/4 [######------------------] training on 10 clients, "
                        "31 s elapsed, no reply yet")
    assert lines[1] == ("run round 2/4 [#########---------------] training: 5/10 clients done "
                        "| 100 images/s (wall time) | round eta 0.8 min")
    assert lines[2] == ("run round 2/4 [############------------] evaluating: central "
                        "evaluation (fgsm)")
    assert lines[3] == "run round 2/4 [############------------] natural 30.0%"


def _reply(num_examples: float) -> Message:
    metrics = {k: 0.0 for k in protocol.TRAIN_METRIC_KEYS}
    metrics["num-examples"] = num_examples
    metadata = Metadata(run_id=1, message_id="", src_node_id=5, dst_node_id=1,
                        reply_to_message_id="m1", group_id="1", created_at=time.time(),
                        ttl=3600.0, message_type=MessageType.TRAIN)
    return Message(RecordDict({protocol.METRICS: MetricRecord(metrics)}), metadata=metadata)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def flower_log():
    handler = _Lines()
    logger = logging.getLogger("flwr")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


def test_reporter_logs_start_each_batch_of_replies_and_a_heartbeat(flower_log):
    reporter = RoundReporter(server_round=2, num_rounds=5, local_epochs=2, every=3600.0)
    reporter.start(sampled=3)
    reporter.update([])  # nothing new, heartbeat not due: silent
    reporter.update([_reply(450), _reply(float("inf"))])  # a bogus count adds nothing
    reporter.every = 0.0
    reporter.update([])  # heartbeat due
    parsed = [progress_lines.parse(line) for line in flower_log]
    assert [(p.round, p.total, p.sampled, p.done) for p in parsed] == [
        (2, 5, 3, 0), (2, 5, 3, 2), (2, 5, 3, 2)]
    assert reporter.images == 450 * 2
    assert trained_examples(_reply(450)) == 450
    assert trained_examples(_reply(-3)) == trained_examples(_reply(float("nan"))) == 0
