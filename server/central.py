"""Central evaluation of the global model during the run, on the in-run subset of
common.eval_sets: of the validation split (data.val-size > 0, the default), so that choosing
best.pt never looks at the test set; of the test set only when a run holds no validation split.
"""

from __future__ import annotations

import time
from logging import INFO, WARNING

import torch
from flwr.common.logger import log

from common import protocol
from common.config import ExperimentConfig
from common.data import Cifar10
from common.eval_sets import in_run_subset
from common.evaluation import EvalSettings, columns, evaluate
from common.models import model_from_config


class CentralEvaluator:
    def __init__(self, cfg: ExperimentConfig, data: Cifar10, device: torch.device) -> None:
        subset = in_run_subset(cfg, data, device)
        self.images, self.labels, self.eval_set = subset.images, subset.labels, subset.split
        self.settings = EvalSettings.from_config(cfg.eval)
        self.cfg = cfg
        self.model = model_from_config(cfg)
        self.model.to(device)
        _log_split(cfg, data, self.eval_set, subset.size)

    @property
    def columns(self) -> list[str]:
        return columns(self.settings)

    def __call__(self, state_dict: dict[str, torch.Tensor], server_round: int) -> dict:
        started = time.perf_counter()
        self.model.load_state_dict(state_dict)
        metrics = evaluate(self.model, self.images, self.labels, self.settings,
                           seed=protocol.eval_seed(self.cfg.seed, server_round))
        metrics["eval_seconds"] = time.perf_counter() - started
        metrics["eval_examples"] = int(self.images.shape[0])
        metrics["eval_set"] = self.eval_set
        return metrics


def _log_split(cfg: ExperimentConfig, data: Cifar10, eval_set: str, examples: int) -> None:
    if eval_set == "test":
        log(WARNING, "data.val-size=0: the in-run evaluation uses %d test images and no "
            "best.pt is selected; set data.val-size > 0 to select checkpoints without the "
            "test set", examples)
        return
    outside = data.train_y.numel() - cfg.data.val_size
    log(INFO, "Validation split: %d training images held out of every client and of G; the "
        "in-run evaluation uses %d of them, best.pt the best round on them", cfg.data.val_size,
        examples)
    if cfg.data.train_limit > outside:
        log(INFO, "data.train-limit=%d is more than the %d training images outside the "
            "validation split: the run trains on all %d", cfg.data.train_limit, outside,
            outside)
