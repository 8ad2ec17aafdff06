"""Train replies: the checks a reply must pass before aggregation, and the clients.csv rows.

Replies with non-finite values, wrong shapes or wrong dtypes, that claim more examples than
the node holds or another client than the node announced at hello, are rejected; failures are
attributed to their node (error replies come from the SuperLink, not from the node); every
outcome becomes a row of clients.csv.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from common import protocol
from common.packing import Layout

from .nodes import NodeInfo, NodeRegistry

REASON_CHARS = 500  # of a failure or refusal reason in clients.csv


def first_metrics(content: RecordDict) -> MetricRecord | None:
    records = list(content.metric_records.values())
    return records[0] if records else None


def check_reply(content: RecordDict, reference: ArrayRecord, layout: Layout,
                max_examples: int | None = None) -> str | None:
    """Why a train reply cannot be aggregated, or None if it can. Arrays are the packed
    vectors of common.packing, one per dtype; `layout` names the tensor at fault.
    `max_examples`: what the node holds (partition + share); FedAvg weights by the claimed
    count, so one client that claims more would dominate the average."""
    if len(content.array_records) != 1 or len(content.metric_records) != 1:
        return "expected exactly one ArrayRecord and one MetricRecord"
    metrics = first_metrics(content)
    if set(metrics.keys()) != set(protocol.TRAIN_METRIC_KEYS):
        return f"metric keys {sorted(metrics.keys())} differ from the protocol's"
    arrays = next(iter(content.array_records.values()))
    if set(arrays.keys()) != set(reference.keys()):
        missing = sorted(set(reference.keys()) - set(arrays.keys()))
        extra = sorted(set(arrays.keys()) - set(reference.keys()))
        return (f"the packed vectors differ by dtype (missing {missing}, extra {extra}): "
                "a tensor of another dtype")
    for name, ref in reference.items():
        got = arrays[name]
        if tuple(got.shape) != tuple(ref.shape):
            return (f"the packed {name} vector has shape {tuple(got.shape)}, expected "
                    f"{tuple(ref.shape)} (a tensor of another shape or a missing one)")
        if got.dtype != ref.dtype:
            return f"the packed {name} vector has dtype {got.dtype}, expected {ref.dtype}"
        values = got.numpy()
        if values.dtype.kind == "f" and not (finite := np.isfinite(values)).all():
            where = layout.locate(name, int(np.argmin(finite)))
            return f"{where} contains non-finite values (NaN or inf)"
    examples = metrics[protocol.NUM_EXAMPLES]
    if not np.isfinite(float(examples)) or examples <= 0:
        return f"num-examples = {examples} is not a positive count"
    if max_examples is not None and examples > max_examples:
        return (f"num-examples = {examples} exceeds the {max_examples} "
                "examples this node holds (its partition announced at hello plus its share "
                "of G)")
    return None


def claim_problem(metrics: MetricRecord, info: NodeInfo, local: bool) -> str | None:
    """Why a reply's client key is not the one its node announced at hello, or None."""
    claim = int(metrics[protocol.CLIENT_KEY])
    if claim == info.key:
        return None
    if local:
        return (f"the reply claims client key {claim}, but the node announced "
                f"{info.label} (key {info.key}) at hello")
    return (f"the reply claims partition {claim}, but the node announced "
            f"partition {info.key} at hello")


def cast_like(arrays: ArrayRecord, reference: ArrayRecord) -> ArrayRecord:
    """Aggregation computes in float and turns 0-d arrays into scalars; give every array
    its reference dtype and shape back (BatchNorm's num_batches_tracked is an int64 0-d)."""
    out = ArrayRecord()
    for name, ref in reference.items():
        value = arrays[name].numpy()
        dtype = np.dtype(ref.dtype)
        if dtype.kind in "iu":
            value = np.rint(value)
        # np.asarray: ufuncs turn 0-d arrays into numpy scalars, which Array refuses.
        out[name] = Array(np.asarray(value, dtype=dtype).reshape(ref.shape).copy())
    return out


class ClientRows:
    """The clients.csv rows of one training round: the refusals since the last round, then
    one row per reply in the order it came (ok, failed, rejected), then one per node that
    did not answer (timeout)."""

    def __init__(self, server_round: int, sent: list[Message], registry: NodeRegistry) -> None:
        self.server_round, self.registry = server_round, registry
        self._node_of = {m.metadata.message_id: m.metadata.dst_node_id for m in sent}
        self._share_sent = {m.metadata.dst_node_id: protocol.SHARE in m.content for m in sent}
        self._sent_to = [m.metadata.dst_node_id for m in sent]
        self._answered: set[int] = set()
        self.rows: list[dict[str, Any]] = [{"round": server_round, **r}
                                           for r in registry.take_refusal_rows()]

    def sender(self, reply: Message) -> tuple[int, NodeInfo | None]:
        """The node a reply answers for (error replies come from the SuperLink) and what the
        registry knows of it; the node counts as having answered."""
        node = self._node_of.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
        self._answered.add(node)
        return node, self.registry.nodes.get(node)

    def _row(self, node: int, info: NodeInfo | None) -> dict[str, Any]:
        return {"round": self.server_round, "node_id": str(node), **self.registry.names(info),
                "share_sent": int(self._share_sent.get(node, False))}

    def failed(self, node: int, info: NodeInfo | None, reason: str) -> None:
        self.rows.append({**self._row(node, info), "status": "failed",
                          "reason": reason.strip()[:REASON_CHARS]})

    def judged(self, node: int, info: NodeInfo | None, metrics: MetricRecord | None,
               problem: str | None) -> None:
        """A reply that arrived: "ok", or "rejected" with the problem; its metrics as
        columns (the client key is the row's own column, from hello)."""
        row = self._row(node, info)
        row.update({k.replace("-", "_"): v for k, v in (metrics or {}).items()
                    if k != protocol.CLIENT_KEY})
        self.rows.append({**row, "status": "rejected" if problem else "ok",
                          "reason": problem or ""})

    def unanswered(self) -> Iterable[int]:
        return [node for node in self._sent_to if node not in self._answered]

    def timed_out(self, node: int, info: NodeInfo | None, round_timeout: float) -> None:
        self.rows.append({**self._row(node, info), "status": "timeout",
                          "reason": f"no reply within fl.round-timeout={round_timeout} s"})
