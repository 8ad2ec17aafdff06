"""What a study is: its cells (run-config overrides on top of a scale's base), its tables and
its figures; and the scales (paper, CPU, toy) its cells are built at.

A cell is a set of run-config overrides on top of the scale's base, plus whether it is
centralized (one client with all the data) or federated.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..overrides import CENTRALIZED, UsageError, load_preset

PRESETS = Path(__file__).resolve().parent.parent.parent / "presets"
SCALES = ("paper", "cpu", "toy")
NO_AT = {"train.adversarial": False, "train.noise-std": 0.0}
SHARED_POOL = 0.1  # beta of the federated studies where the scale sets none: the paper's 10%
# Test images of each cell's final (honest, expensive) evaluation; None = the run's own
# data.eval-limit. At CPU scale 1,000 images (the whole test set of the 5,000/1,000 subset;
# with 200, one image was half a point, and "reproduced" was decided inside the noise).
FINAL_EVAL_LIMIT = {"paper": 0, "cpu": 1000, "toy": None}


@dataclass(frozen=True)
class Cell:
    name: str
    overrides: dict[str, Any]
    centralized: bool
    num_supernodes: int
    varied: dict[str, Any] = field(default_factory=dict)  # what distinguishes this cell


@dataclass(frozen=True)
class Scope:
    """What the command line asks of a study's cells. grid and centralized: the grid study
    only; clients: the federated cells' clients."""

    scale: str
    clients: int = 10
    grid: tuple[str, ...] = ()
    centralized: bool = False


Table = tuple[str, pd.DataFrame]  # (title, table)
# A figure from the finished rows (means over seeds) and every run's per-round rows, saved
# in the folder: its path, or None when the rows hold nothing to draw.
Figure = Callable[[pd.DataFrame, pd.DataFrame, Path], "Path | None"]


@dataclass(frozen=True)
class Study:
    """One study: its cells, its tables shaped like the paper's and its own figures (the
    report adds the figures every study gets), and the test-time noise levels its final
    evaluation sweeps besides 0 and the run's own."""

    name: str
    cells: Callable[[Scope], list[Cell]]
    # (finished rows, their accuracy columns) -> (title, table) pairs
    tables: Callable[[pd.DataFrame, list[str]], list[Table]]
    figures: tuple[Figure, ...] = ()
    noise_levels: tuple[float, ...] = ()
    # The study's own comparisons of two cells, checked like the paper's claims (with
    # intervals and verdicts): (text, measures, expected, other) as simulation.claims.Claim.
    claims: tuple[tuple, ...] = ()


def scale_base(scale: str, centralized: bool) -> dict[str, Any]:
    """Run-config overrides of a scale. CPU scale matches ../shared/CALIBRATION.md."""
    if scale == "paper":
        base = load_preset(PRESETS / "paper.toml")
        if centralized:  # 200 epochs over the whole training set
            base.update({"fl.num-rounds": 200, "train.local-epochs": 1})
        return base
    if scale == "cpu":
        # cpu-small shrunk so that a whole study stays within about 45 minutes on 2 cores:
        # 1,500 training images, 8 rounds, PGD-2, evaluation on 500 images every 4 rounds.
        base = load_preset(PRESETS / "cpu-small.toml")
        base.update({"data.train-limit": 1500, "data.eval-limit": 500, "eval.every": 4,
                     "fl.num-rounds": 8, "attack.steps": 2, "attack.step": 2.5 * 8 / 255 / 2})
        if centralized:  # one client, 3,000 images, 4 epochs of batch 128
            base.update({"data.train-limit": 3000, "fl.num-rounds": 4, "eval.every": 2,
                         "train.local-epochs": 1, "train.batch-size": 128})
        return base
    if scale == "toy":  # seconds per cell: for tests and smoke runs
        return {"model.width": 8, "fl.num-rounds": 1, "train.local-epochs": 1,
                "train.batch-size": 32, "data.train-limit": 200, "data.eval-limit": 40,
                "eval.attacks": "fgsm,pgd2", "eval.noise-std": 0.05, "attack.steps": 1,
                "fl.min-nodes": 1, "eval.eot-samples": 2,
                # gradient-masking diagnostics in about 5 s, not a minute or two
                "eval.diagnostic-images": 16, "eval.diagnostic-queries": 100}
    raise UsageError(f"unknown scale {scale!r}; valid: {', '.join(SCALES)}")


def slug(value: Any) -> str:
    text = {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
    return re.sub(r"[^A-Za-z0-9.]+", "_", str(text))


def make_cell(varied: dict[str, Any], base: dict[str, Any], centralized: bool, clients: int,
              name: str | None = None) -> Cell:
    overrides = {**base, **varied}
    if centralized:
        overrides.update(CENTRALIZED)
    else:
        overrides["fl.min-nodes"] = min(overrides.get("fl.min-nodes", clients), clients)
    name = name or "-".join(f"{k.split('.')[-1]}={slug(v)}" for k, v in varied.items())
    return Cell(name, overrides, centralized, 1 if centralized else clients, dict(varied))
