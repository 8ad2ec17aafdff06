"""ClientApp: answers the server's hello, trains adversarially, evaluates locally.

With fl.client-data=partition each node derives its partition from its node config
(partition-id, num-partitions, data-dir) and the run's seed; with fl.client-data=local it
trains on every image in its own data-dir and is known by its node-name. Its share of the
shared pool G arrives in a train message once and is kept in the node's context.state for the
rest of the run. With fl.sharing=means the node sends the averages of its images with its hello
reply and receives the pool of every node's averages in place of a share (common.means); with
none and server it receives no data at all.

How to train in a round (every train.* and attack.* setting, common.protocol.train_settings)
comes from the train message alone, as the server built it from its validated config; the
run config gives the node only what the server does not send: the model, how the data is
split, the seed, the fault injection and the local evaluation's budget.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from flwr.app import (Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord,
                      RecordDict)
from flwr.clientapp import ClientApp

from common import protocol
from common.config import ExperimentConfig
from common.data import DataError
from common.device import training_device
from common.evaluation import EvalSettings, evaluate as evaluate_model, parse_attacks
from common.means import MeansError, MeansMix, client_means
from common.models import model_from_config
from common.packing import Layout, packed_record, unpacked_state
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
    model = model_from_config(cfg)
    model.load_state_dict(unpacked_state(msg.content[protocol.ARRAYS],
                                         Layout.of(model.state_dict())))
    return model


def _setup(context: Context) -> tuple[ExperimentConfig, NodeSettings]:
    cfg = ExperimentConfig.from_flat(context.run_config)
    return cfg, NodeSettings.from_node_config(context.node_config, cfg.fl.client_data)


@app.query(protocol.HELLO_QUERY)
def hello(msg: Message, context: Context) -> Message:
    """Tell the server who this node is (its client key; its node-name in local mode) and
    how many images it holds, after checking that they load. A node whose node config or
    data is broken says why instead, naming itself and the file."""
    try:
        cfg, node = _setup(context)
        images, labels = local_data.training_images(cfg, node)
        # fl.sharing=means: the averages travel once, with the hello (a node's images do not
        # change in a run); a node too small for fl.means-size says so instead.
        means = means_record(cfg, node, images, labels) if cfg.fl.sharing == "means" else None
    except (NodeConfigError, DataError, MeansError) as exc:
        log.warning("This node cannot take part: %s", exc)
        name = context.node_config.get("node-name", "")  # client.node's key, unchecked
        return Message(RecordDict({protocol.NODE: ConfigRecord({
            protocol.NODE_NAME: name if isinstance(name, str) else "",
            protocol.PROBLEM: str(exc)})}), reply_to=msg)
    said = {protocol.CLIENT_KEY: node.key, protocol.NUM_PARTITIONS: node.num_partitions,
            protocol.NUM_EXAMPLES: int(images.shape[0])}
    metrics = MetricRecord({k: said[k] for k in protocol.HELLO_METRIC_KEYS})
    content = RecordDict({protocol.METRICS: metrics,
                          protocol.NODE: ConfigRecord({protocol.NODE_NAME: node.name})})
    if means is not None:
        content[protocol.MEANS] = means
    return Message(content, reply_to=msg)


def means_record(cfg: ExperimentConfig, node: NodeSettings, images: torch.Tensor,
                 labels: torch.Tensor) -> ArrayRecord:
    """This node's averages of fl.means-size images (common.means): all it sends of its data."""
    x, y = client_means(images, labels, cfg.fl.means_size, cfg.seed, node.key)
    return ArrayRecord({protocol.SHARE_X: Array(x), protocol.SHARE_Y: Array(y)})


def _share(msg: Message, context: Context) -> tuple[np.ndarray, np.ndarray, bool]:
    """This round's share of G: from the message if sent, else from the node's state."""
    wanted = str(msg.content[protocol.CONFIG][protocol.SHARE_HASH])
    if wanted == protocol.NO_SHARE:  # fl.sharing=none or server: no data comes
        return np.empty((0, 3, 32, 32), np.uint8), np.empty(0, np.int64), False
    if protocol.SHARE in msg.content:
        record = msg.content[protocol.SHARE]
        x, y = record[protocol.SHARE_X].numpy(), record[protocol.SHARE_Y].numpy()
        got = protocol.content_hash(x, y)
        if got != wanted:
            raise ValueError(f"shared-pool share arrived corrupted (hash {got}, "
                             f"expected {wanted})")
        context.state[protocol.SHARE] = ArrayRecord({protocol.SHARE_X: record[protocol.SHARE_X],
                                                     protocol.SHARE_Y: record[protocol.SHARE_Y]})
        context.state[protocol.SHARE_META] = ConfigRecord({protocol.SHARE_META_HASH: got})
        return x, y, True
    meta = context.state.get(protocol.SHARE_META)
    if meta is None or meta[protocol.SHARE_META_HASH] != wanted:
        # The server thinks we hold it but we do not (e.g. this node restarted): fail so
        # the server sends it again next round.
        raise RuntimeError(f"shared-pool share {wanted} not held by this node; "
                           "the server will resend it")
    record = context.state[protocol.SHARE]
    return record[protocol.SHARE_X].numpy(), record[protocol.SHARE_Y].numpy(), False


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, node = _setup(context)
    settings = protocol.settings_from_record(dict(msg.content[protocol.CONFIG]))
    server_round = int(msg.content[protocol.CONFIG][protocol.SERVER_ROUND])
    share_x, share_y, share_received = _share(msg, context)
    images, labels = local_data.training_images(cfg, node)
    dev = device()
    mix = None
    if cfg.fl.sharing == "means":  # the share is the pool of averages: mixed in, not appended
        mix = MeansMix(torch.from_numpy(share_x).to(dev), torch.from_numpy(share_y).to(dev),
                       cfg.fl.mix_weight)
    elif share_x.size:
        images = torch.cat([images, torch.from_numpy(share_x)])
        labels = torch.cat([labels, torch.from_numpy(share_y)])

    fault = faults.for_partition(cfg, node.key, server_round)
    fault.before_training()
    model = _global_model(msg, cfg).to(dev)
    trainable = torch.compile(model) if settings.compile else model
    started = time.perf_counter()
    stats = train_model(trainable, images.to(dev), labels.to(dev), settings,
                        seed=protocol.client_seed(cfg.seed, server_round, node.key), mix=mix)
    log.info("%s round %d: %d images, loss %.3f, %.1fs", node.label, server_round,
             stats.num_examples, stats.loss, time.perf_counter() - started)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    metrics = {
        protocol.NUM_EXAMPLES: fault.reported_examples(stats.num_examples),
        protocol.CLIENT_KEY: node.key,
        protocol.SHARED_EXAMPLES: 0 if mix is not None else int(share_x.shape[0]),  # images of G
        protocol.SHARE_RECEIVED: int(share_received),
        **stats.as_metrics(),
    }
    reply = RecordDict({
        protocol.ARRAYS: packed_record(fault.corrupt(state)),
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
    settings = EvalSettings.from_config(cfg.eval, attacks=parse_attacks(LOCAL_EVAL_ATTACKS),
                                        noise_std=0.0)  # without the test-time noise
    server_round = int(msg.content[protocol.CONFIG][protocol.SERVER_ROUND])
    acc = evaluate_model(model, images.to(dev), labels.to(dev), settings,
                         seed=protocol.eval_seed(cfg.seed, server_round))
    metrics = MetricRecord({protocol.NUM_EXAMPLES: int(images.shape[0]),
                            protocol.CLIENT_KEY: node.key, **acc})
    return Message(RecordDict({protocol.METRICS: metrics}), reply_to=msg)
