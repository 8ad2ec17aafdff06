"""Shared-pool federated training: ships each client its share of G, aggregates the replies
that pass the checks with Flower's FedAvg, FedMedian, FedTrimmedAvg or Krum (a member, `base`).

What travels besides the model follows fl.sharing: raw sends each client its share of G;
means sends the pool of the clients' averages (received with their hellos) in its place; none
and server send no data. `traffic` holds each round's bytes (common.run_folder's
TRAFFIC_COLUMNS).

- who takes part is the node registry's job (server.nodes): greeted, refused, waited for;
- each train message carries the round's settings and, the first time a node is seen or
  whenever the node no longer holds it, the node's alpha-share of G as uint8 arrays;
- the model travels packed, one vector per dtype (common.packing);
- clients are sampled by client key (common.client_key: the partition id, or the key of the
  node-name), not node id (node ids are new in every run), so a resumed or repeated run
  trains the same clients, and a returning node gets the same share and seed stream;
- replies are checked before aggregation and every outcome becomes a clients.csv row
  (server.replies); aggregate_train returns those rows with the new model.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import (Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord,
                      RecordDict)
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum

from common import protocol
from common.config import ExperimentConfig
from common.data import NUM_CLASSES
from common.packing import Layout, packed_record, unpacked_state
from common.partition import DataPlan
from common.run_folder import (BYTES_DOWN_DATA, BYTES_DOWN_MODEL, BYTES_UP_DATA, BYTES_UP_MODEL,
                               TRAFFIC_COLUMNS)

from .nodes import NodeRegistry
from .replies import ClientRows, cast_like, check_reply, claim_problem, first_metrics

BASES = {"fedavg": FedAvg, "fedmedian": FedMedian, "fedtrimmedavg": FedTrimmedAvg,
         "krum": Krum}


@dataclass(frozen=True)
class Share:
    x: np.ndarray
    y: np.ndarray
    hash: str


# What a client receives with fl.sharing=none or server: no data, and no share record at all.
NO_DATA = Share(np.empty((0, 3, 32, 32), np.uint8), np.empty(0, np.int64), protocol.NO_SHARE)


def make_base(cfg: ExperimentConfig) -> FedAvg:
    """Flower's strategy of fl.aggregation, which aggregates the checked replies."""
    base = BASES[cfg.fl.aggregation]
    kwargs: dict[str, Any] = dict(
        fraction_train=cfg.fl.fraction_train, fraction_evaluate=cfg.fl.fraction_evaluate,
        min_train_nodes=1, min_evaluate_nodes=0, min_available_nodes=cfg.fl.min_nodes,
        arrayrecord_key=protocol.ARRAYS, configrecord_key=protocol.CONFIG,
        weighted_by_key=protocol.NUM_EXAMPLES,
    )
    if base is FedTrimmedAvg:
        kwargs["beta"] = cfg.fl.trim_fraction
    if base is Krum:
        kwargs["num_malicious_nodes"] = cfg.fl.krum_byzantine
    return base(**kwargs)


class SharedPool:
    """See the module docstring. Driven round by round by server.rounds."""

    def __init__(self, cfg: ExperimentConfig, train_x: np.ndarray, train_y: np.ndarray,
                 plan: DataPlan, layout: Layout, base: FedAvg) -> None:
        self.cfg = cfg
        self.layout = layout
        self.base = base
        self.registry = NodeRegistry(cfg)
        self._train_x, self._train_y, self._plan = train_x, train_y, plan
        self._shares: dict[int, Share] = {}
        self._pool: tuple[tuple, Share] | None = None  # fl.sharing=means: (whose, pool)
        self._sent: list[Message] = []
        self.bytes_sent = 0
        self.traffic = dict.fromkeys(TRAFFIC_COLUMNS, 0)  # of the current round

    @property
    def name(self) -> str:
        return f"SharedPool{type(self.base).__name__}"

    # --- the model on the wire (see common.packing) -----------------------------------------

    def to_arrays(self, state: dict[str, Any]) -> ArrayRecord:
        return packed_record(state)

    def to_state(self, arrays: ArrayRecord) -> dict[str, Any]:
        return unpacked_state(arrays, self.layout)

    # --- clients -----------------------------------------------------------------------------

    def share_for(self, key: int) -> Share:
        """The data the client with this key (common.client_key) receives besides the model:
        its share of G (fl.sharing=raw), the pool of every client's averages (means), none
        (none, server)."""
        sharing = self.cfg.fl.sharing
        if sharing == "means":
            return self.means_pool()
        if sharing != "raw":
            return NO_DATA
        if key not in self._shares:
            idx = self._plan.share(key, self.cfg.fl.shared_share, self.cfg.seed)
            x, y = self._train_x[idx], self._train_y[idx]
            self._shares[key] = Share(x, y, protocol.content_hash(x, y))
        return self._shares[key]

    def means_pool(self) -> Share:
        """Every admitted client's averages (the most recently joined node of each client
        key), in client-key order, so that the same clients make the same pool and hash."""
        latest = {info.key: info for info in self.registry.nodes.values() if info.means}
        keys = tuple(sorted(latest))
        # A client key back with other averages (a node whose folder changed) is a new pool.
        held = tuple((k, id(latest[k].means)) for k in keys)
        if self._pool is None or self._pool[0] != held:
            x = np.concatenate([latest[k].means[0] for k in keys]) if keys else \
                np.empty((0, 3, 32, 32), np.float32)
            y = np.concatenate([latest[k].means[1] for k in keys]) if keys else \
                np.empty((0, NUM_CLASSES), np.float32)
            self._pool = (held, Share(x, y, protocol.content_hash(x, y)))
        return self._pool[1]

    def _sample(self, nodes: list[int], fraction: float, server_round: int,
                tag: int) -> list[int]:
        """The nodes of the clients drawn for this round (see sample_partitions)."""
        node_of = {self.registry.nodes[n].key: n for n in nodes}
        drawn = sample_partitions(list(node_of), fraction, self.cfg.fl.min_nodes,
                                  self.cfg.seed, server_round, tag)
        return sorted(node_of[p] for p in drawn)

    def max_examples(self, node: int) -> int:
        """The most examples `node` can train on: its own images plus its share of G (the
        averages of fl.sharing=means are mixed into its images, not added)."""
        info = self.registry.nodes[node]
        if self.cfg.fl.sharing != "raw":
            return info.num_examples
        return info.num_examples + len(self.share_for(info.key).y)

    # --- training --------------------------------------------------------------------------

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        nodes = self._sample(self.registry.ready_nodes(grid), self.cfg.fl.fraction_train,
                             server_round, 1)
        settings = protocol.settings_to_record(protocol.train_settings(self.cfg, server_round))
        model_bytes = sum(len(a.data) for a in arrays.values())
        self.traffic = dict.fromkeys(TRAFFIC_COLUMNS, 0)
        # The averages of the nodes greeted while waiting for this round (fl.sharing=means).
        self.traffic[BYTES_UP_DATA] = self.registry.take_data_bytes_received()
        self._sent = []
        for node in nodes:
            info = self.registry.nodes[node]
            share = self.share_for(info.key)
            content = RecordDict({
                protocol.ARRAYS: arrays,
                protocol.CONFIG: ConfigRecord({**config, **settings,
                                               protocol.SERVER_ROUND: server_round,
                                               protocol.SHARE_HASH: share.hash}),
            })
            if share is not NO_DATA and info.share_hash != share.hash:
                content[protocol.SHARE] = ArrayRecord({protocol.SHARE_X: Array(share.x),
                                                       protocol.SHARE_Y: Array(share.y)})
                self.bytes_sent += share.x.nbytes + share.y.nbytes
                self.traffic[BYTES_DOWN_DATA] += share.x.nbytes + share.y.nbytes
            self.bytes_sent += model_bytes
            self.traffic[BYTES_DOWN_MODEL] += model_bytes
            self._sent.append(Message(content, dst_node_id=node,
                                      message_type=MessageType.TRAIN,
                                      ttl=self.cfg.fl.round_timeout + 60))
        log(INFO, "Round %d: training on %d node(s)", server_round, len(nodes))
        return self._sent

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None,
                                   list[dict[str, Any]]]:
        """Drop failed and invalid replies, aggregate the rest with the base strategy.
        Returns the new arrays and metrics (None, None without a valid reply) and the round's
        clients.csv rows (ClientRows)."""
        rows = ClientRows(server_round, self._sent, self.registry)
        reference = next(iter(m.content[protocol.ARRAYS] for m in self._sent), None)
        valid: list[tuple[int, Message]] = []
        for reply in replies:
            node, info = rows.sender(reply)
            if reply.has_error():
                if info:
                    info.share_hash = ""  # it may have lost its state: send the share again
                rows.failed(node, info, reply.error.reason)
                log(WARNING, "Round %d: node %d failed: %s", server_round, node,
                    reply.error.reason.strip()[:300])
                continue
            if info:
                info.share_hash = self.share_for(info.key).hash
            update = reply.content.array_records.get(protocol.ARRAYS)
            if update is not None:
                self.traffic[BYTES_UP_MODEL] += sum(len(a.data) for a in update.values())
            problem = check_reply(reply.content, reference, self.layout,
                                  self.max_examples(node) if info else None)
            metrics = first_metrics(reply.content)
            if info and not problem:
                problem = claim_problem(metrics, info, self.registry.local)
            rows.judged(node, info, metrics, problem)
            if problem:
                log(WARNING, "Round %d: rejected the update of node %d: %s", server_round,
                    node, problem)
                continue
            valid.append((info.key if info else -1, reply))
        for node in rows.unanswered():
            info = self.registry.nodes.get(node)
            if info:
                info.share_hash = ""
            rows.timed_out(node, info, self.cfg.fl.round_timeout)
        if not valid:
            log(WARNING, "Round %d: no valid update; the global model stays as it was",
                server_round)
            return None, None, rows.rows
        # A fixed order (by client key) makes the floating-point sum, and so the run,
        # reproducible whatever order the replies arrived in.
        ordered = [reply for _, reply in sorted(valid, key=lambda pair: pair[0])]
        arrays, metrics = self.base.aggregate_train(server_round, ordered)
        return (cast_like(arrays, reference) if arrays is not None else None), metrics, rows.rows

    # --- federated evaluation ----------------------------------------------------------------

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if self.cfg.fl.fraction_evaluate == 0:
            return []
        nodes = self._sample(self.registry.usable_nodes(grid), self.cfg.fl.fraction_evaluate,
                             server_round, 2)
        content = RecordDict({protocol.ARRAYS: arrays, protocol.CONFIG: ConfigRecord(
            {**config, protocol.SERVER_ROUND: server_round})})
        return [Message(content, dst_node_id=n, message_type=MessageType.EVALUATE,
                        ttl=self.cfg.fl.round_timeout + 60) for n in nodes]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        return self.base.aggregate_evaluate(server_round, replies)


def sample_partitions(partitions: list[int], fraction: float, min_nodes: int, seed: int,
                      server_round: int, tag: int) -> list[int]:
    """The partitions that take part in a round, drawn over partition ids: node ids are
    new in every run, partition ids are not, so a resumed or repeated run draws the same
    clients. The same draw for the same seed, round, tag and available partitions."""
    size = max(int(len(partitions) * fraction), min(min_nodes, len(partitions)))
    rng = random.Random(f"{seed}-{server_round}-{tag}")
    return sorted(rng.sample(sorted(partitions), size))


def make_strategy(cfg: ExperimentConfig, train_x: np.ndarray, train_y: np.ndarray,
                  plan: DataPlan, layout: Layout) -> SharedPool:
    return SharedPool(cfg, train_x, train_y, plan, layout, make_base(cfg))
