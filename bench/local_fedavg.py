"""The federated run's work done back to back in one process: the same partitions
(split_for), shares of G, settings (protocol.train_settings), seeds (protocol.client_seed)
and FedAvg aggregation, without Flower, Ray or messages. The yardstick of `federated`."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from common import protocol
from common.config import ExperimentConfig
from common.data import Cifar10
from common.models import model_from_config
from common.partition import split_for
from common.training import train


@dataclass
class LocalRun:
    round_seconds: dict[int, float]  # round -> seconds (all clients + aggregation)
    states: dict[int, dict[str, torch.Tensor]]  # round -> global model after it
    losses: dict[int, float]  # round -> example-weighted train loss (as rounds.csv)


def initial_state(cfg: ExperimentConfig) -> dict[str, torch.Tensor]:
    torch.manual_seed(cfg.seed)  # as server.app does before building the initial model
    return model_from_config(cfg).state_dict()


def client_data(cfg: ExperimentConfig, data: Cifar10, num_partitions: int):
    """(images, labels) per partition: its split of the pool, then its share of G, the order
    in which client.app concatenates them."""
    plan = split_for(cfg, data.train_y.numpy(), num_partitions)
    out = []
    for pid in range(num_partitions):
        idx = np.concatenate([plan.partitions[pid],
                              plan.share(pid, cfg.fl.shared_share, cfg.seed)])
        idx = torch.from_numpy(idx)
        out.append((data.train_x[idx], data.train_y[idx]))
    return out


def fedavg(states: list[dict[str, torch.Tensor]], weights: list[int]) -> dict[str, torch.Tensor]:
    """Weighted mean by example count, integer buffers rounded (as the server's cast)."""
    total = float(sum(weights))
    out = {}
    for name, ref in states[0].items():
        acc = sum(s[name].double() * (w / total) for s, w in zip(states, weights))
        out[name] = (acc.round() if not ref.is_floating_point() else acc).to(ref.dtype)
    return out


def run_local(cfg: ExperimentConfig, data: Cifar10, num_partitions: int,
              start: dict[str, torch.Tensor], first_round: int = 1,
              device: torch.device = torch.device("cpu")) -> LocalRun:
    """Rounds first_round..num_rounds from the global model `start`, each timed."""
    clients = [(x.to(device), y.to(device)) for x, y in client_data(cfg, data, num_partitions)]
    state, result = start, LocalRun({}, {}, {})
    for rnd in range(first_round, cfg.fl.num_rounds + 1):
        began = time.perf_counter()
        settings = protocol.train_settings(cfg, rnd)
        states, weights, losses = [], [], []
        for pid, (images, labels) in enumerate(clients):
            model = model_from_config(cfg)
            model.load_state_dict(state)
            model.to(device)
            stats = train(model, images, labels, settings,
                          seed=protocol.client_seed(cfg.seed, rnd, pid))
            states.append({k: v.detach().cpu() for k, v in model.state_dict().items()})
            weights.append(stats.num_examples)
            losses.append(stats.loss * stats.num_examples)
        state = fedavg(states, weights)
        result.round_seconds[rnd] = time.perf_counter() - began
        result.states[rnd] = state
        result.losses[rnd] = sum(losses) / sum(weights)
    return result
