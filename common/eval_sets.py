"""The images a central evaluation measures, for the in-run evaluation (server/central.py)
and the final evaluation of a finished run (simulation/final_eval.py) alike.

A fixed, seeded, class-balanced subset (common.partition.eval_indices) capped at
data.eval-limit images (0 = all): in-run of the validation split (data.val-size > 0, the
default), so that choosing best.pt never looks at the test set, of the test set only when a
run holds no validation split; the final evaluation always of the test set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import ExperimentConfig
from .data import Cifar10
from .partition import eval_indices, validation_indices


@dataclass(frozen=True)
class EvalSubset:
    images: torch.Tensor  # uint8 NCHW, on the evaluation device
    labels: torch.Tensor
    split: str  # "val" or "test": where the images come from

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])


def in_run_subset(cfg: ExperimentConfig, data: Cifar10, device: torch.device) -> EvalSubset:
    """What the server evaluates the global model on during the run."""
    if cfg.data.val_size > 0:
        idx = torch.from_numpy(validation_indices(data.train_y.numpy(), cfg.data.val_size,
                                                  cfg.seed))
        return _subset(data.train_x[idx], data.train_y[idx], "val", cfg.data.eval_limit,
                       cfg.seed, device)
    return _subset(data.test_x, data.test_y, "test", cfg.data.eval_limit, cfg.seed, device)


def test_subset(cfg: ExperimentConfig, data: Cifar10, device: torch.device,
                limit: int | None = None) -> EvalSubset:
    """What the final evaluation measures a finished run's models on; `limit` replaces
    data.eval-limit."""
    limit = cfg.data.eval_limit if limit is None else limit
    return _subset(data.test_x, data.test_y, "test", limit, cfg.seed, device)


def _subset(images: torch.Tensor, labels: torch.Tensor, split: str, limit: int, seed: int,
            device: torch.device) -> EvalSubset:
    idx = torch.from_numpy(eval_indices(labels.numpy(), limit, seed))
    return EvalSubset(images[idx].to(device), labels[idx].to(device), split)
