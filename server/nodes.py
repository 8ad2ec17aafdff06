"""The node registry: who takes part, greeted with a hello and refused with a reason.

Nodes are introduced with a hello query (who they are, how many images they hold, after a
check that those load) and waited for without the unbounded wait of Flower's sampler. A node
whose node config or data is broken, or (fl.client-data=local) whose node-name a connected
node already has, is refused with the reason: logged, and a clients.csv row of the next round
(a node that does not answer its hello, typically a restarted node's stale id, is logged and
skipped). Nodes are known by client key (common.client_key: the partition id, or the key of
the node-name), not node id: node ids are new in every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from common import protocol
from common.client_key import name_problem, of_name
from common.config import ExperimentConfig
from common.data import NUM_CLASSES
from common.means import group_count

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
    means: tuple[np.ndarray, np.ndarray] | None = None  # its averages (fl.sharing=means)

    @property
    def label(self) -> str:
        return f"node-name {self.name!r}" if self.name else f"partition {self.key}"


class NodeRegistry:
    """The nodes admitted (`nodes`), refused (`refused`, with why) and waiting for a taken
    node-name to come free; the refusals not yet in clients.csv."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.local = cfg.fl.client_data == "local"
        self.nodes: dict[int, NodeInfo] = {}
        self.refused: dict[int, str] = {}  # node id -> why it cannot take part
        # Refused for a node-name a connected node holds: admitted when that node leaves.
        self._waiting: dict[int, NodeInfo] = {}
        self._refusal_rows: list[dict[str, Any]] = []  # for the next round's clients.csv
        self._num_partitions: int | None = None
        self._data_bytes_received = 0  # client data (averages) since the last take

    def names(self, info: NodeInfo | None) -> dict[str, Any]:
        """The clients.csv columns that say which client a row is about."""
        if self.local:
            return {"node_name": info.name if info else ""}
        return {"partition_id": info.key if info else -1}

    def take_refusal_rows(self) -> list[dict[str, Any]]:
        """The refusals since the last call, as clients.csv rows (without the round)."""
        rows, self._refusal_rows = self._refusal_rows, []
        return rows

    def take_data_bytes_received(self) -> int:
        """Bytes of client data (fl.sharing=means: the averages of hello replies) received
        since the last call."""
        received, self._data_bytes_received = self._data_bytes_received, 0
        return received

    def introduce(self, grid: Grid, node_ids: list[int]) -> None:
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
        why it cannot take part, a reply without the hello's metrics, a num-partitions unlike
        the others' (partition mode), a missing, taken or colliding node-name (local mode)."""
        if reply.has_error():
            # Not a refusal but a node gone (e.g. a restarted node's old id, still listed
            # until its heartbeat expires): logged and skipped, no clients.csv row.
            self._refuse(node, f"hello failed: {reply.error.reason}", record=False)
            return
        said = reply.content[protocol.NODE] if protocol.NODE in reply.content else {}
        name = str(said.get(protocol.NODE_NAME, ""))
        if said.get(protocol.PROBLEM):
            self._refuse(node, str(said[protocol.PROBLEM]), NodeInfo(-1, 0, 0, name=name))
            return
        m = reply.content[protocol.METRICS] if protocol.METRICS in reply.content else {}
        missing = [k for k in protocol.HELLO_METRIC_KEYS if k not in m]
        if missing:
            self._refuse(node, f"the hello reply lacks {missing}; is every node running this "
                         "RobustFL version?", NodeInfo(-1, 0, 0, name=name))
            return
        info = NodeInfo(int(m[protocol.CLIENT_KEY]), int(m[protocol.NUM_PARTITIONS]),
                        int(m[protocol.NUM_EXAMPLES]), name=name if self.local else "")
        if self.cfg.fl.sharing == "means":
            problem = self._take_means(reply, info)
            if problem:
                self._refuse(node, problem, info)
                return
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

    def _take_means(self, reply: Message, info: NodeInfo) -> str | None:
        """Keep the averages of a hello reply in `info` (fl.sharing=means), or say why they
        cannot be used: missing, or not the averages fl.means-size makes of the images the
        node announced (common.means)."""
        if protocol.MEANS not in reply.content:
            return ("the hello reply carries no averages, which fl.sharing=means needs; is "
                    "every node running this RobustFL version?")
        record = reply.content[protocol.MEANS]
        x, y = record[protocol.SHARE_X].numpy(), record[protocol.SHARE_Y].numpy()
        count = group_count(info.num_examples, self.cfg.fl.means_size)
        if x.shape != (count, 3, 32, 32) or y.shape != (count, NUM_CLASSES) \
                or x.dtype != np.float32 or y.dtype != np.float32:
            return (f"the hello reply's averages have shapes {x.shape} {x.dtype} and {y.shape} "
                    f"{y.dtype}; fl.means-size={self.cfg.fl.means_size} of "
                    f"{info.num_examples} images makes ({count}, 3, 32, 32) and "
                    f"({count}, {NUM_CLASSES}) float32")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            return "the hello reply's averages hold non-finite values"
        self._data_bytes_received += x.nbytes + y.nbytes
        info.means = (x, y)
        return None

    def _holder(self, name: str, connected: set[int], besides: int) -> int | None:
        """The connected, admitted node that has node-name `name`, if any."""
        return next((n for n, i in self.nodes.items()
                     if i.name == name and n in connected and n != besides), None)

    def _refuse(self, node: int, reason: str, info: NodeInfo | None = None,
                record: bool = True) -> None:
        self.refused[node] = reason
        log(WARNING, "Node %d refused: %s", node, reason)
        if record:
            self._refusal_rows.append({"node_id": str(node), **self.names(info),
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
                self.introduce(grid, new)
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
