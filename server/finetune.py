"""fl.sharing=server: the server fine-tunes each round's aggregate on the shared pool G, which
never leaves it.

After every round whose aggregation produced a model, the global model trains for
fl.server-steps steps of train.batch-size images of G with the clients' own recipe
(common.training.train with the round's settings: objective, PGD, noise, soft labels, the
round's span of the learning-rate schedule) and a fresh SGD optimizer. That model is what the
round's central evaluation measures, what its checkpoint holds and what the next round sends.
The images of each round's steps are a seeded shuffle of G (protocol.server_seed), so a run
and its resumption fine-tune identically.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from flwr.app import ArrayRecord

from common import protocol
from common.config import ExperimentConfig
from common.models import model_from_config
from common.packing import Layout, packed_record, unpacked_state
from common.partition import DataPlan
from common.training import train


class ServerFineTune:
    def __init__(self, cfg: ExperimentConfig, train_x: torch.Tensor, train_y: torch.Tensor,
                 plan: DataPlan, device: torch.device) -> None:
        if plan.shared.size == 0:
            raise ValueError("fl.sharing=server needs a shared pool G; fl.shared-pool="
                             f"{cfg.fl.shared_pool} of this data set holds no image")
        idx = torch.from_numpy(plan.shared)
        self.cfg, self.device = cfg, device
        self.images, self.labels = train_x[idx].to(device), train_y[idx].to(device)
        self.model = model_from_config(cfg).to(device)
        self.layout = Layout.of(self.model.state_dict())

    def images_of_round(self, server_round: int) -> torch.Tensor:
        """Indices into G of the round's fl.server-steps batches: G shuffled (seeded by the
        round), repeated as often as the steps need."""
        need = self.cfg.fl.server_steps * self.cfg.train.batch_size
        rng = np.random.default_rng(protocol.server_seed(self.cfg.seed, server_round))
        n = self.labels.numel()
        order = np.concatenate([rng.permutation(n) for _ in range(-(-need // n))])[:need]
        return torch.from_numpy(order).to(self.device)

    def __call__(self, arrays: ArrayRecord, server_round: int) -> ArrayRecord:
        """The aggregate `arrays` fine-tuned on G (a new record; `arrays` is not changed)."""
        self.model.load_state_dict(unpacked_state(arrays, self.layout))
        settings = dataclasses.replace(protocol.train_settings(self.cfg, server_round), epochs=1)
        idx = self.images_of_round(server_round)
        train(self.model, self.images[idx], self.labels[idx], settings,
              seed=protocol.server_seed(self.cfg.seed, server_round))
        return packed_record({k: v.detach().cpu() for k, v in self.model.state_dict().items()})


def server_finetune(cfg: ExperimentConfig, train_x: torch.Tensor, train_y: torch.Tensor,
                    plan: DataPlan, device: torch.device) -> ServerFineTune | None:
    """The fine-tuning of fl.sharing=server; None in every other mode (the aggregate is left
    as it is)."""
    if cfg.fl.sharing != "server":
        return None
    return ServerFineTune(cfg, train_x, train_y, plan, device)
