"""ClientApp: answers the server's hello, trains adversarially, evaluates locally.

With fl.client-data=partition each node derives its partition from its node config
(partition-id, num-partitions, data-dir) and the run's seed; with fl.client-data=local it
trains on every image in its own data-dir and is known by its node-name. Its share of the
shared pool G arrives in a train message once and is kept in the node's context.state for the
rest of the run.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from common import protocol
from common.config import ExperimentConfig
from common.data import DataError
from common.device import training_device
from common.evaluation import EvalSettings, evaluate as evaluate_model, parse_attacks
from common.models import build_model
from common.packing import Layout, pack, unpack
from common.training import train as train_model

from . import faults, local_data
from .node import NodeConfigError, NodeSettings

app = ClientApp()
log = logging.getLogger("robustfl.client")

LOCAL_EVAL_ATTACKS = "fgsm"  # local evaluation stays cheap; the server runs the full set


def device() -> torch.device:
    return training_device()


def _global_model(msg: Message, cfg: ExperimentConfig) -> torch.nn.Module:
    """The server's model, unpacked from its one-vector-per-dtype form (common.packing)."""
    model = build_model(cfg.model.activation, cfg.model.width, cfg.model.variant)
    packed = {dtype: a.numpy() for dtype, a in msg.content[protocol.ARRAYS].items()}
    model.load_state_dict(unpack(packed, Layout.of(model.state_dict())))
    return model


def _setup(context: Context) -> tuple[ExperimentConfig, NodeSettings]:
    cfg = ExperimentConfig.from_flat(context.run_config)
    return cfg, NodeSettings.from_node_config(context.node_config, cfg.fl.client_data)


@app.query("hello")
def hello(msg: Message, context: Context) -> Message:
    """Tell the server who this node is (its client key; its node-name in local mode) and
    how many images it holds, after checking that they load. A node whose node config or
    data is broken says why instead, naming itself and the file."""
    try:
        cfg, node = _setup(context)
        images, _ = local_data.training_images(cfg, node)
    except (NodeConfigError, DataError) as exc:
        log.warning("This node cannot take part: %s", exc)
        name = context.node_config.get("node-name", "")
        return Message(RecordDict({protocol.NODE: ConfigRecord({
            "node-name": name if isinstance(name, str) else "", "problem": str(exc)})}),
            reply_to=msg)
    metrics = MetricRecord({"partition-id": node.key,
                            "num-partitions": node.num_partitions,
                            "num-examples": int(images.shape[0])})
    return Message(RecordDict({protocol.METRICS: metrics,
                               protocol.NODE: ConfigRecord({"node-name": node.name})}),
                   reply_to=msg)


def _share(msg: Message, context: Context) -> tuple[np.ndarray, np.ndarray, bool]:
    """This round's share of G: from the message if sent, else from the node's state."""
    wanted = str(msg.content[protocol.CONFIG][protocol.SHARE_HASH])
    if protocol.SHARE in msg.content:
        record = msg.content[protocol.SHARE]
        x, y = record["x"].numpy(), record["y"].numpy()
        got = protocol.content_hash(x, y)
        if got != wanted:
            raise ValueError(f"shared-pool share arrived corrupted (hash {got}, "
                             f"expected {wanted})")
        context.state[protocol.SHARE] = ArrayRecord({"x": record["x"], "y": record["y"]})
        context.state["share-meta"] = ConfigRecord({"hash": got})
        return x, y, True
    meta = context.state.get("share-meta")
    if meta is None or meta["hash"] != wanted:
        # The server thinks we hold it but we do not (e.g. this node restarted): fail so
        # the server sends it again next round.
        raise RuntimeError(f"shared-pool share {wanted} not held by this node; "
                           "the server will resend it")
    record = context.state[protocol.SHARE]
    return record["x"].numpy(), record["y"].numpy(), False


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, node = _setup(context)
    settings = protocol.settings_from_record(dict(msg.content[protocol.CONFIG]))
    server_round = int(msg.content[protocol.CONFIG][protocol.SERVER_ROUND])
    share_x, share_y, share_received = _share(msg, context)
    images, labels = local_data.training_images(cfg, node)
    if share_x.size:
        images = torch.cat([images, torch.from_numpy(share_x)])
        labels = torch.cat([labels, torch.from_numpy(share_y)])

    fault = faults.for_partition(cfg, node.key, server_round)
    fault.before_training()
    dev = device()
    model = _global_model(msg, cfg).to(dev)
    trainable = torch.compile(model) if cfg.train.compile else model
    started = time.perf_counter()
    stats = train_model(trainable, images.to(dev), labels.to(dev), settings,
                        seed=protocol.client_seed(cfg.seed, server_round, node.key))
    log.info("%s round %d: %d images, loss %.3f, %.1fs", node.label, server_round,
             stats.num_examples, stats.loss, time.perf_counter() - started)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    metrics = {
        "num-examples": fault.reported_examples(stats.num_examples),
        "partition-id": node.key,
        "shared-examples": int(share_x.shape[0]),
        "share-received": int(share_received),
        **stats.as_metrics(),
    }
    reply = RecordDict({
        protocol.ARRAYS: ArrayRecord({dtype: Array(v)
                                      for dtype, v in pack(fault.corrupt(state)).items()}),
        protocol.METRICS: MetricRecord({k: metrics[k] for k in protocol.TRAIN_METRIC_KEYS}),
    })
    return Message(reply, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Natural and FGSM accuracy of the global model on this node's own test split."""
    cfg, node = _setup(context)
    dev = device()
    model = _global_model(msg, cfg).to(dev)
    images, labels = local_data.local_test_split(cfg, node)
    settings = EvalSettings(parse_attacks(LOCAL_EVAL_ATTACKS), eps=cfg.eval.eps,
                            step=cfg.eval.step, batch_size=cfg.eval.batch_size)
    server_round = int(msg.content[protocol.CONFIG][protocol.SERVER_ROUND])
    acc = evaluate_model(model, images.to(dev), labels.to(dev), settings,
                         seed=protocol.eval_seed(cfg.seed, server_round))
    metrics = MetricRecord({"num-examples": int(images.shape[0]),
                            "partition-id": node.key, **acc})
    return Message(RecordDict({protocol.METRICS: metrics}), reply_to=msg)
