"""Fault injection (run config fault.*): clients that send poisoned or broken updates.

Robust-aggregation research needs misbehaving clients on demand, and the server's guards
need them to be tested; a fault applies only to the partitions listed in fault.partitions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from common.config import ExperimentConfig, parse_int_list

MAX_DELAY = 3600.0  # a delay beyond an hour is a typo, not an experiment
INFLATE_FACTOR = 1000  # "inflate-examples": claims this many times the examples it trained on


@dataclass(frozen=True)
class Fault:
    mode: str = "none"
    delay: float = 0.0

    def before_training(self) -> None:
        if self.mode == "delay":
            time.sleep(min(self.delay, MAX_DELAY))

    def reported_examples(self, num_examples: int) -> int:
        """The num-examples this client reports: a liar claims more, to weigh more in FedAvg."""
        return num_examples * INFLATE_FACTOR if self.mode == "inflate-examples" else num_examples

    def corrupt(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The update this client sends instead of its honest one."""
        if self.mode in ("none", "delay", "inflate-examples"):
            return state
        state = dict(state)
        name = next(k for k, v in state.items() if v.is_floating_point())
        if self.mode == "nan":
            state[name] = torch.full_like(state[name], float("nan"))
        elif self.mode == "wrong-shape":
            state[name] = state[name].flatten()[:-1].clone()
        elif self.mode == "wrong-dtype":
            state[name] = state[name].to(torch.float16)
        elif self.mode == "sign-flip":
            # Negate the weights, not the BatchNorm statistics (a negative variance would
            # only make the model NaN, which the server's finiteness guard already covers).
            state = {k: -v if v.is_floating_point() and "running" not in k else v
                     for k, v in state.items()}
        return state


def for_partition(cfg: ExperimentConfig, partition_id: int, server_round: int) -> Fault:
    f = cfg.fault
    rounds = parse_int_list(f.rounds)
    if f.mode == "none" or partition_id not in parse_int_list(f.partitions) or (
            rounds and server_round not in rounds):
        return Fault()
    return Fault(f.mode, f.delay)
