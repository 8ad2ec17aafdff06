"""What the server and the clients say to each other: message, metric and state keys, and
the round settings.

Flower-free on purpose: server/ and client/ never import each other, so the names they must
agree on live here, next to the conversions between the experiment config and the flat
dicts that travel in a ConfigRecord. Neither side writes one of these keys as a literal.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np

from .config import ExperimentConfig
from .schedules import lr_at
from .training import TrainSettings, TrainStats

# Record keys inside a Message's RecordDict.
ARRAYS = "arrays"  # the global model (server -> client) or the update (client -> server)
CONFIG = "config"  # the round's settings (server -> client)
SHARE = "share"  # the client's share of the shared pool G: {SHARE_X: uint8, SHARE_Y: int64};
# with fl.sharing=means the pool of every client's averages instead: {SHARE_X: float32
# (k, 3, 32, 32), SHARE_Y: float32 (k, 10) averaged one-hot labels} (common.means)
SHARE_X, SHARE_Y = "x", "y"
# The hello reply's ArrayRecord with fl.sharing=means: the node's own averages, keys SHARE_X and
# SHARE_Y as above; the only data a client ever sends.
MEANS = "means"
METRICS = "metrics"  # the client's reply metrics
# The hello reply's ConfigRecord: NODE_NAME (fl.client-data=local) and, when the node cannot
# take part (its node config or data is broken), PROBLEM: why, naming the node and the file.
NODE = "node"
NODE_NAME = "node-name"
PROBLEM = "problem"

HELLO_QUERY = "hello"  # server asks a new node who it is; the node checks its data
HELLO = f"query.{HELLO_QUERY}"  # its message type
SHARE_HASH = "share-hash"  # content hash of the share the client must use this round
NO_SHARE = ""  # SHARE_HASH of fl.sharing=none and server: the message carries no data at all
SERVER_ROUND = "server-round"

# The node's own state (Context.state), kept between rounds: its share (SHARE) and a
# ConfigRecord {SHARE_META_HASH: content hash} that says which share that is.
SHARE_META = "share-meta"
SHARE_META_HASH = "hash"

# Metric keys. CLIENT_KEY in hello, train and evaluate replies carries the client key
# (common.client_key): the partition id, or in local mode the key of the node-name.
NUM_EXAMPLES = "num-examples"  # what FedAvg weights by (Flower's weighted_by_key)
CLIENT_KEY = "partition-id"
NUM_PARTITIONS = "num-partitions"  # 0 in local mode
SHARED_EXAMPLES = "shared-examples"
SHARE_RECEIVED = "share-received"
# Keys every train reply carries, in this order (Flower requires identical key sets).
TRAIN_METRIC_KEYS = (NUM_EXAMPLES, CLIENT_KEY, SHARED_EXAMPLES, SHARE_RECEIVED,
                     *TrainStats.METRIC_KEYS)
# Keys of the hello reply's MetricRecord: who the node is and how many images it holds.
HELLO_METRIC_KEYS = (CLIENT_KEY, NUM_PARTITIONS, NUM_EXAMPLES)


def train_settings(cfg: ExperimentConfig, server_round: int) -> TrainSettings:
    """The settings of round `server_round` (1-based): every train.* and attack.* key under
    its own name (train.local-epochs as epochs) and the round's span of the LR schedule. The
    config is their one source: a new training key reaches TrainSettings by its name."""
    t, rounds = cfg.train, cfg.fl.num_rounds
    by_name = {f.name: getattr(section, f.name)
               for section in (t, cfg.attack) for f in dataclasses.fields(section)}
    by_name.update(epochs=t.local_epochs, progress_start=(server_round - 1) / rounds,
                   progress_end=server_round / rounds)
    names = [f.name for f in dataclasses.fields(TrainSettings)]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise TypeError(f"TrainSettings fields {unknown} name no train.* or attack.* key")
    return TrainSettings(**{n: by_name[n] for n in names})


def round_lr_range(cfg: ExperimentConfig, server_round: int) -> tuple[float, float]:
    s = train_settings(cfg, server_round)
    return lr_at(s.schedule, s.lr, s.progress_start), lr_at(s.schedule, s.lr, s.progress_end)


def settings_to_record(settings: TrainSettings) -> dict[str, Any]:
    """TrainSettings as a flat dict of ConfigRecord-compatible values (dashes in keys)."""
    return {k.replace("_", "-"): v for k, v in dataclasses.asdict(settings).items()}


def settings_from_record(record: dict[str, Any]) -> TrainSettings:
    names = {f.name for f in dataclasses.fields(TrainSettings)}
    values = {k.replace("-", "_"): v for k, v in record.items()}
    missing = names - values.keys()
    if missing:
        raise ValueError(f"round config lacks {sorted(missing)}; server and client versions "
                         "differ? Run the same RobustFL version on every machine")
    return TrainSettings(**{k: values[k] for k in names})


def client_seed(seed: int, server_round: int, key: int) -> int:
    """The seed of one client's local training in one round (key: common.client_key):
    independent of node ids and of which other clients took part, so resumed and repeated
    runs train identically."""
    return int(np.random.SeedSequence([seed, 101, server_round, key])
               .generate_state(1)[0])


def server_seed(seed: int, server_round: int) -> int:
    """The seed of the server's fine-tuning on G after round `server_round` (fl.sharing=
    server): a resumed run fine-tunes exactly as the first attempt did."""
    return int(np.random.SeedSequence([seed, 104, server_round]).generate_state(1)[0])


def eval_seed(seed: int, server_round: int) -> int:
    return int(np.random.SeedSequence([seed, 102, server_round]).generate_state(1)[0])


def content_hash(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]
