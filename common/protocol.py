"""What the server and the clients say to each other: message keys and round settings.

Flower-free on purpose: server/ and client/ never import each other, so the names they must
agree on live here, next to the conversions between the experiment config and the flat
dicts that travel in a ConfigRecord.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np

from .config import ExperimentConfig
from .schedules import lr_at
from .training import TrainSettings

# Record keys inside a Message's RecordDict.
ARRAYS = "arrays"  # the global model (server -> client) or the update (client -> server)
CONFIG = "config"  # the round's settings (server -> client)
SHARE = "share"  # the client's share of the shared pool G: {"x": uint8, "y": int64}
METRICS = "metrics"  # the client's reply metrics

HELLO = "query.hello"  # server asks a new node who it is; the node checks its data
SHARE_HASH = "share-hash"  # content hash of the share the client must use this round
SERVER_ROUND = "server-round"

# Keys every train reply carries, in this order (Flower requires identical key sets).
TRAIN_METRIC_KEYS = (
    "num-examples", "partition-id", "shared-examples", "share-received",
    "train_loss", "clean_loss", "adv_loss", "noise_loss", "train_acc",
    "train_steps", "train_seconds",
)
HELLO_METRIC_KEYS = ("partition-id", "num-partitions", "num-examples")
# The hello reply's ConfigRecord: "node-name" (fl.client-data=local) and, when the node cannot
# take part (its node config or data is broken), "problem": why, naming the node and the file.
NODE = "node"
# "partition-id" in hello and train replies carries the client key (common.client_key): the
# partition id, or in local mode the key of the node-name.


def train_settings(cfg: ExperimentConfig, server_round: int) -> TrainSettings:
    """The settings of round `server_round` (1-based): LR schedule position, attack, noise."""
    t, a, rounds = cfg.train, cfg.attack, cfg.fl.num_rounds
    return TrainSettings(
        lr=t.lr,
        schedule=t.schedule,
        progress_start=(server_round - 1) / rounds,
        progress_end=server_round / rounds,
        epochs=t.local_epochs,
        batch_size=t.batch_size,
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        label_smoothing=t.label_smoothing,
        noise_std=t.noise_std,
        adversarial=t.adversarial,
        weight_clean=t.weight_clean,
        weight_adv=t.weight_adv,
        weight_noise=t.weight_noise,
        eps=a.eps,
        step=a.step,
        steps=a.steps,
        random_start=a.random_start,
        amp=t.amp,
        objective=t.objective,
        trades_beta=t.trades_beta,
        mart_beta=t.mart_beta,
        fgsm_rs_step=t.fgsm_rs_step,
        calfat_scale=t.calfat_scale,
    )


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


def eval_seed(seed: int, server_round: int) -> int:
    return int(np.random.SeedSequence([seed, 102, server_round]).generate_state(1)[0])


def content_hash(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]
