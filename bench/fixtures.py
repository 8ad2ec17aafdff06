"""What every benchmark shares: options, the data, the CPU-preset training settings."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from common import protocol
from common.config import ExperimentConfig
from common.data import Cifar10, load_cifar10
from common.training import TrainSettings
from simulation.overrides import build_config

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ROOT / "presets"
DEFAULT_DATA = Path(os.environ.get("ROBUSTFL_TEST_DATA",
                                   ROOT.parent / "shared" / "data" / "cifar10-small"))
DEFAULT_OUT = ROOT / "bench" / "out"


@dataclass(frozen=True)
class Options:
    quick: bool = False
    data_dir: Path = DEFAULT_DATA
    out: Path = DEFAULT_OUT
    device: torch.device = torch.device("cpu")
    # Intra-op threads of the single-process benchmarks: 1 = what a Ray client actor gets
    # with cpus-per-client 1 (the harness default), and immune to the stalls that spinning
    # OpenMP threads suffer when other work shares the cores.
    threads: int = 1

    def reps(self, full: int, quick: int) -> int:
        return quick if self.quick else full


def preset_config(name: str, *assignments: str) -> ExperimentConfig:
    """A preset from presets/ with --set style overrides, validated like the harness does."""
    cfg = build_config([str(PRESETS / f"{name}.toml")], list(assignments))
    return cfg


def cpu_settings(**changes) -> TrainSettings:
    """Round-1 training settings of presets/cpu-small.toml (width 8, batch 32, PGD-3)."""
    settings = protocol.train_settings(preset_config("cpu-small"), 1)
    return dataclasses.replace(settings, epochs=1, **changes)


def load_data(opts: Options) -> Cifar10:
    return load_cifar10(opts.data_dir)


def batch_of(data: Cifar10, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n training images (uint8) and labels on `device`, repeated if n > 5000."""
    reps = -(-n // data.train_x.shape[0])
    x = data.train_x.repeat(reps, 1, 1, 1)[:n]
    y = data.train_y.repeat(reps)[:n]
    return x.to(device), y.to(device)
