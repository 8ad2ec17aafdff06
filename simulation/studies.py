"""The paper's studies as grids of run configs, at paper, CPU or toy scale.

A study is a list of cells; each cell is a set of run-config overrides on top of the scale's
base, plus whether it is centralized (one client with all the data) or federated.
"""

from __future__ import annotations

import fnmatch
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.activations import NAMES as ACTIVATIONS

from .overrides import CENTRALIZED, UsageError, load_preset, parse_assignment

PRESETS = Path(__file__).resolve().parent.parent / "presets"
SCALES = ("paper", "cpu", "toy")
STUDIES = ("activation", "noniid", "noise", "objectives", "grid")
VARYING_SCHEDULE = "cosine"  # the paper's "varying" LR is unspecified; this is our reading
NOISE_LEVELS = (0.0, 0.03, 0.05, 0.1)  # test-time sigma of the noise study
SHARES = (0.0, 0.2, 0.4, 0.6)
SHARED_POOL = 0.1  # beta of the non-IID study where the scale sets none: the paper's 10%
NO_AT = {"train.adversarial": False, "train.noise-std": 0.0}
# The objectives study: the published baselines as published (no noise copies, hard labels)
# against the paper's recipe, with and without the paper's 40% share of G.
OBJECTIVES = ("mixed", "trades", "mart", "calfat")
OBJECTIVE_SHARES = (0.0, 0.4)
PUBLISHED = {"train.noise-std": 0.0, "train.label-smoothing": 0.0}
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


def _slug(value: Any) -> str:
    text = {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
    return re.sub(r"[^A-Za-z0-9.]+", "_", str(text))


def _cell(varied: dict[str, Any], base: dict[str, Any], centralized: bool, clients: int,
          name: str | None = None) -> Cell:
    overrides = {**base, **varied}
    if centralized:
        overrides.update(CENTRALIZED)
    else:
        overrides["fl.min-nodes"] = min(overrides.get("fl.min-nodes", clients), clients)
    name = name or "-".join(f"{k.split('.')[-1]}={_slug(v)}" for k, v in varied.items())
    return Cell(name, overrides, centralized, 1 if centralized else clients, dict(varied))


def activation_study(scale: str, activations=ACTIVATIONS) -> list[Cell]:
    base = scale_base(scale, centralized=True)
    cells = [_cell({"model.activation": "relu", "train.schedule": "fixed", **NO_AT}, base,
                   True, 1, name="baseline-no-at")]
    for act, schedule in itertools.product(activations, ("fixed", VARYING_SCHEDULE)):
        cells.append(_cell({"model.activation": act, "train.schedule": schedule}, base, True, 1))
    return cells


def noniid_study(scale: str, clients: int = 10) -> list[Cell]:
    # Every cell, alpha = 0 and the baseline too, holds G back from the clients: so all
    # cells' clients hold the same images and only the sharing differs.
    base = scale_base(scale, centralized=False)
    base.setdefault("fl.shared-pool", SHARED_POOL)
    cells = [_cell({"fl.partition": "iid", "fl.shared-share": 0.0, **NO_AT}, base, False,
                   clients, name="baseline-no-at")]
    for partition, share in itertools.product(("iid", "classes", "dirichlet"), SHARES):
        cells.append(_cell({"fl.partition": partition, "fl.shared-share": share}, base, False,
                           clients))
    return cells


def objectives_study(scale: str, clients: int = 10) -> list[Cell]:
    """{mixed, trades, mart, calfat} x {IID, 2 classes per client} x share {0, 0.4} of G,
    plus fgsm-rs on IID without sharing. As in the non-IID study, every cell holds the same
    G back, so all cells' clients hold the same images; only the objective and the sharing
    differ. The other objectives run as published: no noise copies, hard labels."""
    base = scale_base(scale, centralized=False)
    base.setdefault("fl.shared-pool", SHARED_POOL)
    cells = []
    for objective, partition, share in itertools.product(OBJECTIVES, ("iid", "classes"),
                                                         OBJECTIVE_SHARES):
        varied = {"train.objective": objective, "fl.partition": partition,
                  "fl.shared-share": share, **({} if objective == "mixed" else PUBLISHED)}
        cells.append(_cell(varied, base, False, clients,
                           name=f"{objective}-{partition}-share={_slug(share)}"))
    cells.append(_cell({"train.objective": "fgsm-rs", "fl.partition": "iid",
                        "fl.shared-share": 0.0, **PUBLISHED}, base, False, clients,
                       name="fgsm-rs-iid-share=0.0"))
    return cells


def claim_table(done, accuracy: list[str]):
    """The paper's federated claim, per partition: mixed with 40% sharing against CalFAT
    without sharing, their natural and robust accuracies and the difference."""
    import pandas as pd

    rows = []
    for partition, part in done.groupby("partition", sort=True):
        pick = {name: part[(part["objective"] == objective) & (part["share"] == share)]
                for name, objective, share in (("mixed, share 0.4", "mixed", 0.4),
                                               ("calfat, share 0", "calfat", 0.0))}
        if any(frame.empty for frame in pick.values()):
            continue
        values = {name: frame.iloc[0][accuracy] for name, frame in pick.items()}
        for name, v in values.items():
            rows.append({"partition": partition, "cells": name, **v.to_dict()})
        diff = values["mixed, share 0.4"] - values["calfat, share 0"]
        rows.append({"partition": partition, "cells": "difference (points)", **diff.to_dict()})
    return pd.DataFrame(rows)


def noise_study(scale: str) -> list[Cell]:
    """Training noise on/off; test-time sigma is swept in the final evaluation."""
    base = scale_base(scale, centralized=True)
    sigma = base.get("train.noise-std", 0.05) or 0.05
    cells = [_cell(dict(NO_AT), base, True, 1, name="baseline-no-at")]
    for noise in (sigma, 0.0):
        cells.append(_cell({"train.noise-std": noise}, base, True, 1))
    return cells


def grid_study(scale: str, grid: list[str], centralized: bool, clients: int) -> list[Cell]:
    """Any grid: --grid key=v1,v2 --grid key2=a,b (the product of all)."""
    if not grid:
        raise UsageError("the grid study needs at least one --grid key=v1,v2,...")
    axes = []
    for spec in grid:
        key, values = spec.split("=", 1) if "=" in spec else (spec, "")
        options = [parse_assignment(f"{key}={v}")[1] for v in values.split(",") if v.strip()]
        if not options:
            raise UsageError(f"--grid {spec!r} lists no values; write key=v1,v2")
        axes.append([(key.strip(), v) for v in options])
    base = scale_base(scale, centralized)
    return [_cell(dict(combo), base, centralized, clients)
            for combo in itertools.product(*axes)]


def select_cells(cells: list[Cell], patterns: str) -> list[Cell]:
    """The cells whose names match one of the comma-separated shell patterns, in study
    order; a pattern that matches no cell is an error naming the cells there are."""
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    names = [c.name for c in cells]
    unmatched = [p for p in wanted if not fnmatch.filter(names, p)]
    if not wanted or unmatched:
        raise UsageError(f"--cells {patterns!r}: {', '.join(unmatched) or 'no pattern'} "
                         f"matches no cell of this study; its cells: {', '.join(names)}")
    return [c for c in cells if any(fnmatch.fnmatchcase(c.name, p) for p in wanted)]


def study_cells(study: str, scale: str, grid: list[str] | None = None,
                centralized: bool = False, clients: int = 10) -> list[Cell]:
    if study == "activation":
        return activation_study(scale)
    if study == "noniid":
        return noniid_study(scale, clients)
    if study == "noise":
        return noise_study(scale)
    if study == "objectives":
        return objectives_study(scale, clients)
    if study == "grid":
        return grid_study(scale, grid or [], centralized, clients)
    raise UsageError(f"unknown study {study!r}; valid: {', '.join(STUDIES)}")
