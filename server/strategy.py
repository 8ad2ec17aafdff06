"""Shared-pool FedAvg: ships each client its share of G, guards against bad updates.

`make_strategy` returns a subclass of Flower's FedAvg (or of FedMedian / FedTrimmedAvg /
Krum, themselves FedAvg subclasses) with the SharedPool behaviour mixed in:
- nodes are introduced with a hello query (who they are, how many images they hold, after a
  check that those load) and sampled without the unbounded wait of Flower's sampler; a node
  whose node config or data is broken, or (fl.client-data=local) whose node-name a connected
  node already has, is refused with the reason: logged, and a clients.csv row (a node that
  does not answer its hello, typically a restarted node's stale id, is logged and skipped);
- each train message carries the round's settings and, the first time a node is seen or
  whenever the node no longer holds it, the node's alpha-share of G as uint8 arrays;
- the model travels packed, one vector per dtype (common.packing): ~200 fewer SuperLink
  requests per message;
- clients are sampled by client key (common.client_key: the partition id, or the key of the
  node-name), not node id (node ids are new in every run), so a resumed or repeated run
  trains the same clients, and a returning node gets the same share and seed stream;
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
from common.client_key import name_problem, of_name
from common.config import ExperimentConfig
from common.packing import Layout, pack, unpack
from common.partition import DataPlan

from .messaging import connected_nodes, exchange, wait_until


class NotEnoughNodes(RuntimeError):
    """Fewer than fl.min-nodes usable nodes were connected within fl.node-wait seconds."""


@dataclass
class NodeInfo:
    key: int  # its client key (common.client_key): partition id, or the key of its name
    num_partitions: int  # 0 in local mode
    num_examples: int  # its own images, as announced at hello (without its share of G)
    share_hash: str = ""  # the share this node is known to hold ("" = none yet)
    name: str = ""  # its node-name (fl.client-data=local)

    @property
    def label(self) -> str:
        return f"node-name {self.name!r}" if self.name else f"partition {self.key}"


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
        self.local = cfg.fl.client_data == "local"
        # Refused for a node-name a connected node holds: admitted when that node leaves.
        self._waiting: dict[int, NodeInfo] = {}
        self._refusal_rows: list[dict[str, Any]] = []  # for the next round's clients.csv
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

    def share_for(self, key: int) -> Share:
        """The share of G of the client with this key (common.client_key)."""
        if key not in self._shares:
            idx = self._plan.share(key, self.cfg.fl.shared_share, self.cfg.seed)
            x, y = self._train_x[idx], self._train_y[idx]
            self._shares[key] = Share(x, y, protocol.content_hash(x, y))
        return self._shares[key]

    def _names(self, info: NodeInfo | None) -> dict[str, Any]:
        """The clients.csv columns that say which client a row is about."""
        if self.local:
            return {"node_name": info.name if info else ""}
        return {"partition_id": info.key if info else -1}

    def _introduce(self, grid: Grid, node_ids: list[int]) -> None:
        """Ask new nodes who they are; admit or refuse each (see greet). The replies are
        taken in the order the nodes came online, so that of two nodes with one node-name the
        one that joined the federation first keeps it."""
        messages = [Message(RecordDict({protocol.CONFIG: ConfigRecord({})}),
                            dst_node_id=n, message_type=protocol.HELLO) for n in node_ids]
        replies, sent = exchange(grid, messages, timeout=self.cfg.fl.hello_timeout)
        by_node = {sent[r.metadata.reply_to_message_id]: r for r in replies
                   if r.metadata.reply_to_message_id in sent}
        online_since = {n.node_id: str(n.last_activated_at or "") for n in grid.get_nodes()}
        connected = set(connected_nodes(grid))
        for node in sorted(by_node, key=lambda n: (online_since.get(n, ""), n)):
            self.greet(node, by_node[node], connected)

    def greet(self, node: int, reply: Message, connected: set[int]) -> None:
        """Admit `node` from its hello reply, or refuse it: a failed hello, a node that says
        why it cannot take part, a num-partitions unlike the others' (partition mode), a
        missing, taken or colliding node-name (local mode)."""
        if reply.has_error():
            # Not a refusal but a node gone (e.g. a restarted node's old id, still listed
            # until its heartbeat expires): logged and skipped, no clients.csv row.
            self._refuse(node, f"hello failed: {reply.error.reason}", record=False)
            return
        said = reply.content[protocol.NODE] if protocol.NODE in reply.content else {}
        name = str(said.get("node-name", ""))
        if said.get("problem"):
            self._refuse(node, str(said["problem"]), NodeInfo(-1, 0, 0, name=name))
            return
        m = reply.content[protocol.METRICS]
        info = NodeInfo(int(m["partition-id"]), int(m["num-partitions"]),
                        int(m["num-examples"]), name=name if self.local else "")
        if self.local:
            problem = name_problem(name)
            if problem:
                self._refuse(node, f"the hello reply's {problem}; is every node running "
                             "this RobustFL version?")
                return
            info.key = of_name(name)  # the server's own derivation, not the node's claim
            holder = self._holder(name, connected, besides=node)
            if holder is not None:
                self._refuse(node, (
                    f"node-name {name!r} is taken by node {holder}, which is connected; give "
                    f"every node its own node-name (node {node} takes part as {name!r} only "
                    f"if node {holder} leaves)"), info)
                self._waiting[node] = info
                return
            clash = next((i.name for i in self.nodes.values()
                          if i.key == info.key and i.name != name), None)
            if clash is not None:
                self._refuse(node, f"node-name {name!r} has the client key of {clash!r}; "
                             "rename one of the two", info)
                return
        else:
            if self._num_partitions is None:
                self._num_partitions = info.num_partitions
            if info.num_partitions != self._num_partitions:
                self._refuse(node, (
                    f"num-partitions={info.num_partitions} differs from the "
                    f"{self._num_partitions} of the other nodes; give every node the same"),
                    info)
                return
        self.nodes[node] = info
        log(INFO, "Node %d holds %s%s (%d images)", node, info.label,
            "" if self.local else f"/{info.num_partitions}", info.num_examples)

    def _holder(self, name: str, connected: set[int], besides: int) -> int | None:
        """The connected, admitted node that has node-name `name`, if any."""
        return next((n for n, i in self.nodes.items()
                     if i.name == name and n in connected and n != besides), None)

    def _refuse(self, node: int, reason: str, info: NodeInfo | None = None,
                record: bool = True) -> None:
        self.refused[node] = reason
        log(WARNING, "Node %d refused: %s", node, reason)
        if record:
            self._refusal_rows.append({"node_id": str(node), **self._names(info),
                                       "share_sent": 0, "status": "refused",
                                       "reason": reason.strip()[:500]})

    def _admit_waiting(self, connected: set[int]) -> None:
        """A node refused for a taken node-name takes part once the holder has left (it is
        that node back, e.g. restarted before its old id was seen to go offline)."""
        for node, info in list(self._waiting.items()):
            if node not in connected:
                del self._waiting[node]
            elif self._holder(info.name, connected, besides=node) is None:
                del self._waiting[node], self.refused[node]
                self.nodes[node] = info
                log(INFO, "Node %d takes part as node-name %r: the node that had it left",
                    node, info.name)

    def usable_nodes(self, grid: Grid) -> list[int]:
        """Connected, introduced nodes; per client key only the most recently joined one
        (a restarted node gets a new id while its old id may still look connected)."""
        connected = set(connected_nodes(grid))
        latest: dict[int, int] = {}
        for node, info in self.nodes.items():  # insertion order = order of joining
            if node in connected:
                latest[info.key] = node
        return sorted(latest.values())

    def ready_nodes(self, grid: Grid) -> list[int]:
        """Wait (bounded by fl.node-wait) until fl.min-nodes usable nodes are connected."""
        minimum = self.cfg.fl.min_nodes
        usable: list[int] = []

        def ready() -> bool:
            nonlocal usable
            connected = connected_nodes(grid)
            new = [n for n in connected if n not in self.nodes and n not in self.refused]
            if new:
                self._introduce(grid, new)
            if self._waiting:
                self._admit_waiting(set(connected))
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
        """The nodes of the clients drawn for this round (see sample_partitions)."""
        node_of = {self.nodes[n].key: n for n in nodes}
        drawn = sample_partitions(list(node_of), fraction, self.cfg.fl.min_nodes,
                                  self.cfg.seed, server_round, tag)
        return sorted(node_of[p] for p in drawn)

    def max_examples(self, node: int) -> int:
        """The most examples `node` can train on: its own images plus its share of G."""
        info = self.nodes[node]
        return info.num_examples + len(self.share_for(info.key).y)

    # --- training --------------------------------------------------------------------------

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        nodes = self._sample(self.ready_nodes(grid), self.cfg.fl.fraction_train,
                             server_round, 1)
        settings = protocol.settings_to_record(protocol.train_settings(self.cfg, server_round))
        model_bytes = sum(len(a.data) for a in arrays.values())
        self._sent = []
        for node in nodes:
            share = self.share_for(self.nodes[node].key)
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
        self.client_rows = [{"round": server_round, **r} for r in self._refusal_rows]
        self._refusal_rows = []
        valid: list[tuple[int, Message]] = []
        answered = set()
        for reply in replies:
            node = node_of.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            answered.add(node)
            info = self.nodes.get(node)
            row = {"round": server_round, "node_id": str(node), **self._names(info),
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
                info.share_hash = self.share_for(info.key).hash
            problem = check_reply(reply.content, reference, self.layout,
                                  self.max_examples(node) if info else None)
            metrics = _first_metrics(reply.content)
            row.update({k.replace("-", "_"): v for k, v in (metrics or {}).items()
                        if k != "partition-id"})
            if info and not problem and int(metrics["partition-id"]) != info.key:
                claim = int(metrics["partition-id"])
                problem = (f"the reply claims client key {claim}, but the node announced "
                           f"{info.label} (key {info.key}) at hello" if self.local else
                           f"the reply claims partition {claim}, but the node announced "
                           f"partition {info.key} at hello")
            if problem:
                self.client_rows.append({**row, "status": "rejected", "reason": problem})
                log(WARNING, "Round %d: rejected the update of node %d: %s", server_round,
                    node, problem)
                continue
            self.client_rows.append({**row, "status": "ok", "reason": ""})
            valid.append((info.key if info else -1, reply))
        for message in self._sent:
            node = message.metadata.dst_node_id
            if node not in answered:
                info = self.nodes.get(node)
                if info:
                    info.share_hash = ""
                self.client_rows.append({
                    "round": server_round, "node_id": str(node), **self._names(info),
                    "share_sent": int(share_sent.get(node, False)), "status": "timeout",
                    "reason": f"no reply within fl.round-timeout={self.cfg.fl.round_timeout} s",
                })
        if not valid:
            log(WARNING, "Round %d: no valid update; the global model stays as it was",
                server_round)
            return None, None
        # A fixed order (by client key) makes the floating-point sum, and so the run,
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
