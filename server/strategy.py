"""Shared-pool FedAvg: ships each client its share of G, guards against bad updates.

`make_strategy` returns a subclass of Flower's FedAvg (or of FedMedian / FedTrimmedAvg /
Krum, themselves FedAvg subclasses) with the SharedPool behaviour mixed in:
- nodes are introduced with a hello query (partition-id, num-partitions, data check) and
  sampled without the unbounded wait of Flower's sampler;
- each train message carries the round's settings and, the first time a node is seen or
  whenever the node no longer holds it, the node's alpha-share of G as uint8 arrays;
- the model travels packed, one vector per dtype (common.packing): ~200 fewer SuperLink
  requests per message;
- clients are sampled by partition id, not node id (node ids are new in every run), so a
  resumed or repeated run trains the same clients;
- replies with non-finite values, wrong shapes or wrong dtypes, or that claim more examples
  than the node holds, are rejected before aggregation; failures are attributed to their
  node; every outcome becomes a row of clients.csv.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum

from common import protocol
from common.config import ExperimentConfig
from common.packing import Layout, pack, unpack
from common.partition import DataPlan

from .messaging import connected_nodes, exchange, wait_until


class NotEnoughNodes(RuntimeError):
    """Fewer than fl.min-nodes usable nodes were connected within fl.node-wait seconds."""


@dataclass
class NodeInfo:
    partition_id: int
    num_partitions: int
    num_examples: int  # its partition, as announced at hello (without its share of G)
    share_hash: str = ""  # the share this node is known to hold ("" = none yet)


@dataclass(frozen=True)
class Share:
    x: np.ndarray
    y: np.ndarray
    hash: str


class SharedPool:
    """Mixed into a FedAvg-family strategy; see the module docstring."""

    def setup(self, cfg: ExperimentConfig, train_x: np.ndarray, train_y: np.ndarray,
              plan: DataPlan, layout: Layout) -> None:
        self.cfg = cfg
        self.layout = layout
        self._train_x, self._train_y, self._plan = train_x, train_y, plan
        self._shares: dict[int, Share] = {}
        self.nodes: dict[int, NodeInfo] = {}
        self.refused: dict[int, str] = {}  # node id -> why it cannot take part
        self._num_partitions: int | None = None
        self._sent: list[Message] = []
        self.client_rows: list[dict[str, Any]] = []
        self.shares_sent = 0
        self.bytes_sent = 0

    # --- the model on the wire (see common.packing) -----------------------------------------

    def to_arrays(self, state: dict[str, Any]) -> ArrayRecord:
        return packed_record(state)

    def to_state(self, arrays: ArrayRecord) -> dict[str, Any]:
        return unpack({dtype: a.numpy() for dtype, a in arrays.items()}, self.layout)

    # --- nodes -----------------------------------------------------------------------------

    def share_for(self, partition_id: int) -> Share:
        if partition_id not in self._shares:
            idx = self._plan.share(partition_id, self.cfg.fl.shared_share, self.cfg.seed)
            x, y = self._train_x[idx], self._train_y[idx]
            self._shares[partition_id] = Share(x, y, protocol.content_hash(x, y))
        return self._shares[partition_id]

    def _introduce(self, grid: Grid, node_ids: list[int]) -> None:
        """Ask new nodes who they are; refuse those whose node config or data is broken."""
        messages = [Message(RecordDict({protocol.CONFIG: ConfigRecord({})}),
                            dst_node_id=n, message_type=protocol.HELLO) for n in node_ids]
        replies, sent = exchange(grid, messages, timeout=self.cfg.fl.hello_timeout)
        for reply in replies:
            node = sent.get(reply.metadata.reply_to_message_id)
            if node is None:
                continue
            if reply.has_error():
                self.refused[node] = f"hello failed: {reply.error.reason}"
                log(WARNING, "Node %d cannot take part: %s", node, reply.error.reason)
                continue
            m = reply.content[protocol.METRICS]
            info = NodeInfo(int(m["partition-id"]), int(m["num-partitions"]),
                            int(m["num-examples"]))
            if self._num_partitions is None:
                self._num_partitions = info.num_partitions
            if info.num_partitions != self._num_partitions:
                self.refused[node] = (
                    f"num-partitions={info.num_partitions} differs from the "
                    f"{self._num_partitions} of the other nodes; give every node the same"
                )
                log(WARNING, "Node %d refused: %s", node, self.refused[node])
                continue
            self.nodes[node] = info
            log(INFO, "Node %d holds partition %d/%d (%d images)", node, info.partition_id,
                info.num_partitions, info.num_examples)

    def usable_nodes(self, grid: Grid) -> list[int]:
        """Connected, introduced nodes; per partition only the most recently joined one
        (a restarted node gets a new id while its old id may still look connected)."""
        connected = set(connected_nodes(grid))
        latest: dict[int, int] = {}
        for node, info in self.nodes.items():  # insertion order = order of joining
            if node in connected:
                latest[info.partition_id] = node
        return sorted(latest.values())

    def ready_nodes(self, grid: Grid) -> list[int]:
        """Wait (bounded by fl.node-wait) until fl.min-nodes usable nodes are connected."""
        minimum = self.cfg.fl.min_nodes
        usable: list[int] = []

        def ready() -> bool:
            nonlocal usable
            new = [n for n in connected_nodes(grid) if n not in self.nodes
                   and n not in self.refused]
            if new:
                self._introduce(grid, new)
            usable = self.usable_nodes(grid)
            return len(usable) >= minimum

        def describe() -> str:
            return (f"{len(usable)} usable node(s) connected, fl.min-nodes={minimum}"
                    + (f", {len(self.refused)} refused" if self.refused else ""))

        if not wait_until(ready, self.cfg.fl.node_wait, describe, "nodes"):
            reasons = "; ".join(f"node {n}: {r}" for n, r in self.refused.items())
            raise NotEnoughNodes(
                f"only {len(usable)} usable node(s) after waiting {self.cfg.fl.node_wait:.0f}"
                f" s for fl.min-nodes={minimum}" + (f" (refused: {reasons})" if reasons else "")
            )
        return usable

    def _sample(self, nodes: list[int], fraction: float, server_round: int,
                tag: int) -> list[int]:
        """The nodes of the partitions drawn for this round (see sample_partitions)."""
        node_of = {self.nodes[n].partition_id: n for n in nodes}
        drawn = sample_partitions(list(node_of), fraction, self.cfg.fl.min_nodes,
                                  self.cfg.seed, server_round, tag)
        return sorted(node_of[p] for p in drawn)

    def max_examples(self, node: int) -> int:
        """The most examples `node` can train on: its partition plus its share of G."""
        info = self.nodes[node]
        return info.num_examples + len(self.share_for(info.partition_id).y)

    # --- training --------------------------------------------------------------------------

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        nodes = self._sample(self.ready_nodes(grid), self.cfg.fl.fraction_train,
                             server_round, 1)
        settings = protocol.settings_to_record(protocol.train_settings(self.cfg, server_round))
        model_bytes = sum(len(a.data) for a in arrays.values())
        self._sent = []
        for node in nodes:
            share = self.share_for(self.nodes[node].partition_id)
            content = RecordDict({
                protocol.ARRAYS: arrays,
                protocol.CONFIG: ConfigRecord({**config, **settings,
                                               protocol.SERVER_ROUND: server_round,
                                               protocol.SHARE_HASH: share.hash}),
            })
            if self.nodes[node].share_hash != share.hash:
                content[protocol.SHARE] = ArrayRecord({"x": Array(share.x), "y": Array(share.y)})
                self.bytes_sent += share.x.nbytes + share.y.nbytes
            self.bytes_sent += model_bytes
            self._sent.append(Message(content, dst_node_id=node,
                                      message_type=MessageType.TRAIN,
                                      ttl=self.cfg.fl.round_timeout + 60))
        log(INFO, "Round %d: training on %d node(s)", server_round, len(nodes))
        return self._sent

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        """Drop failed and invalid replies (recorded in client_rows), aggregate the rest."""
        node_of = {m.metadata.message_id: m.metadata.dst_node_id for m in self._sent}
        share_sent = {m.metadata.dst_node_id: protocol.SHARE in m.content for m in self._sent}
        reference = next(iter(m.content[protocol.ARRAYS] for m in self._sent), None)
        self.client_rows = []
        valid: list[tuple[int, Message]] = []
        answered = set()
        for reply in replies:
            node = node_of.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            answered.add(node)
            info = self.nodes.get(node)
            row = {"round": server_round, "node_id": str(node),
                   "partition_id": info.partition_id if info else -1,
                   "share_sent": int(share_sent.get(node, False))}
            if reply.has_error():
                if info:
                    info.share_hash = ""  # it may have lost its state: send the share again
                self.client_rows.append({**row, "status": "failed",
                                         "reason": reply.error.reason.strip()[:500]})
                log(WARNING, "Round %d: node %d failed: %s", server_round, node,
                    reply.error.reason.strip()[:300])
                continue
            if info:
                info.share_hash = self.share_for(info.partition_id).hash
            problem = check_reply(reply.content, reference, self.layout,
                                  self.max_examples(node) if info else None)
            metrics = _first_metrics(reply.content)
            row.update({k.replace("-", "_"): v for k, v in (metrics or {}).items()})
            if info and not problem and int(metrics["partition-id"]) != info.partition_id:
                problem = (f"the reply claims partition {int(metrics['partition-id'])}, but "
                           f"the node announced partition {info.partition_id} at hello")
            # The partition the node announced at hello, not what its reply claims.
            row["partition_id"] = info.partition_id if info else -1
            if problem:
                self.client_rows.append({**row, "status": "rejected", "reason": problem})
                log(WARNING, "Round %d: rejected the update of node %d: %s", server_round,
                    node, problem)
                continue
            self.client_rows.append({**row, "status": "ok", "reason": ""})
            valid.append((row["partition_id"], reply))
        for message in self._sent:
            node = message.metadata.dst_node_id
            if node not in answered:
                info = self.nodes.get(node)
                if info:
                    info.share_hash = ""
                self.client_rows.append({
                    "round": server_round, "node_id": str(node),
                    "partition_id": info.partition_id if info else -1,
                    "share_sent": int(share_sent.get(node, False)), "status": "timeout",
                    "reason": f"no reply within fl.round-timeout={self.cfg.fl.round_timeout} s",
                })
        if not valid:
            log(WARNING, "Round %d: no valid update; the global model stays as it was",
                server_round)
            return None, None
        # A fixed order (by partition) makes the floating-point sum, and so the run,
        # reproducible whatever order the replies arrived in.
        ordered = [reply for _, reply in sorted(valid, key=lambda pair: pair[0])]
        arrays, metrics = super().aggregate_train(server_round, ordered)
        return (_cast_like(arrays, reference) if arrays is not None else None), metrics

    # --- federated evaluation ----------------------------------------------------------------

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if self.cfg.fl.fraction_evaluate == 0:
            return []
        nodes = self._sample(self.usable_nodes(grid), self.cfg.fl.fraction_evaluate,
                             server_round, 2)
        content = RecordDict({protocol.ARRAYS: arrays, protocol.CONFIG: ConfigRecord(
            {**config, protocol.SERVER_ROUND: server_round})})
        return [Message(content, dst_node_id=n, message_type=MessageType.EVALUATE,
                        ttl=self.cfg.fl.round_timeout + 60) for n in nodes]


def sample_partitions(partitions: list[int], fraction: float, min_nodes: int, seed: int,
                      server_round: int, tag: int) -> list[int]:
    """The partitions that take part in a round, drawn over partition ids: node ids are
    new in every run, partition ids are not, so a resumed or repeated run draws the same
    clients. The same draw for the same seed, round, tag and available partitions."""
    size = max(int(len(partitions) * fraction), min(min_nodes, len(partitions)))
    rng = random.Random(f"{seed}-{server_round}-{tag}")
    return sorted(rng.sample(sorted(partitions), size))


def packed_record(state: dict[str, Any]) -> ArrayRecord:
    """A state dict as the ArrayRecord that travels: one Array per dtype."""
    return ArrayRecord({dtype: Array(v) for dtype, v in pack(state).items()})


def _first_metrics(content: RecordDict) -> MetricRecord | None:
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
    metrics = _first_metrics(content)
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
    if not np.isfinite(float(metrics["num-examples"])) or metrics["num-examples"] <= 0:
        return f"num-examples = {metrics['num-examples']} is not a positive count"
    if max_examples is not None and metrics["num-examples"] > max_examples:
        return (f"num-examples = {metrics['num-examples']} exceeds the {max_examples} "
                "examples this node holds (its partition announced at hello plus its share "
                "of G)")
    return None


def _cast_like(arrays: ArrayRecord, reference: ArrayRecord) -> ArrayRecord:
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


BASES = {"fedavg": FedAvg, "fedmedian": FedMedian, "fedtrimmedavg": FedTrimmedAvg,
         "krum": Krum}


def make_strategy(cfg: ExperimentConfig, train_x: np.ndarray, train_y: np.ndarray,
                  plan: DataPlan, layout: Layout) -> FedAvg:
    base = BASES[cfg.fl.aggregation]
    cls = type(f"SharedPool{base.__name__}", (SharedPool, base), {})
    kwargs: dict[str, Any] = dict(
        fraction_train=cfg.fl.fraction_train, fraction_evaluate=cfg.fl.fraction_evaluate,
        min_train_nodes=1, min_evaluate_nodes=0, min_available_nodes=cfg.fl.min_nodes,
        arrayrecord_key=protocol.ARRAYS, configrecord_key=protocol.CONFIG,
    )
    if base is FedTrimmedAvg:
        kwargs["beta"] = cfg.fl.trim_fraction
    if base is Krum:
        kwargs["num_malicious_nodes"] = cfg.fl.krum_byzantine
    strategy = cls(**kwargs)
    strategy.setup(cfg, train_x, train_y, plan, layout)
    return strategy
