"""Central evaluation of the global model on a fixed, seeded, class-balanced test subset."""

from __future__ import annotations

import time

import torch

from common import protocol
from common.config import ExperimentConfig
from common.data import Cifar10
from common.evaluation import EvalSettings, columns, evaluate
from common.models import build_model
from common.partition import eval_indices


class CentralEvaluator:
    def __init__(self, cfg: ExperimentConfig, data: Cifar10, device: torch.device) -> None:
        idx = torch.from_numpy(eval_indices(data.test_y.numpy(), cfg.data.eval_limit, cfg.seed))
        self.images = data.test_x[idx].to(device)
        self.labels = data.test_y[idx].to(device)
        self.settings = EvalSettings.from_config(cfg.eval)
        self.cfg = cfg
        self.model = build_model(cfg.model.activation, cfg.model.width, cfg.model.variant)
        self.model.to(device)

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
        return metrics
