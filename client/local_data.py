"""This node's own training data (its share of G arrives in the messages).

fl.client-data=partition: its partition of the training set in data-dir (or data.dir), which
every node derives alike; fl.client-data=local: every image in its own data-dir.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from common.config import ExperimentConfig
from common.data import Cifar10, DataError, load_cifar10, load_own_images
from common.partition import DataPlan, eval_indices, make_plan, split_for

from .node import NodeSettings


def dataset(cfg: ExperimentConfig, node: NodeSettings) -> Cifar10:
    # The node's own data-dir wins: each machine knows where its data lives.
    return load_cifar10(node.data_dir or cfg.data.dir, download=cfg.data.download)


def plan(cfg: ExperimentConfig, node: NodeSettings) -> DataPlan:
    return _plan(cfg, node.data_dir, node.num_partitions)


@functools.lru_cache(maxsize=4)
def _plan(cfg: ExperimentConfig, data_dir: str, num_partitions: int) -> DataPlan:
    # Cached per process (Ray actor or SuperNode subprocess): every round asks for it again.
    labels = load_cifar10(data_dir or cfg.data.dir, download=cfg.data.download).train_y
    return split_for(cfg, labels.numpy(), num_partitions)


def training_images(cfg: ExperimentConfig, node: NodeSettings
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images, labels) this node trains on besides its share of G, on the CPU."""
    return own_images(node) if node.local else partition(cfg, node)


def own_images(node: NodeSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image in a local-mode node's data-dir; a problem names the node and the file."""
    try:
        return load_own_images(node.data_dir)
    except DataError as exc:
        raise DataError(f"{node.label}: {exc}") from None


def partition(cfg: ExperimentConfig, node: NodeSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images, labels) of this node's partition, on the CPU."""
    data = dataset(cfg, node)
    idx = torch.from_numpy(plan(cfg, node).partitions[node.partition_id])
    return data.train_x[idx], data.train_y[idx]


def local_test_split(cfg: ExperimentConfig, node: NodeSettings) -> tuple[torch.Tensor, ...]:
    """The test images of this node's classes, split like the training set (no shared pool),
    capped at data.eval-limit / num-partitions images: the node's own view of test data."""
    data = dataset(cfg, node)
    fl = cfg.fl
    test_plan = make_plan(data.test_y.numpy(), fl.partition, node.num_partitions, cfg.seed,
                          classes_per_client=fl.classes_per_client,
                          dirichlet_alpha=fl.dirichlet_alpha, min_partition_size=0)
    idx = test_plan.partitions[node.partition_id]
    if cfg.data.eval_limit:
        cap = max(1, cfg.data.eval_limit // node.num_partitions)
        keep = eval_indices(data.test_y.numpy()[idx], cap, cfg.seed)
        idx = idx[keep]
    idx = torch.from_numpy(np.asarray(idx))
    return data.test_x[idx], data.test_y[idx]
