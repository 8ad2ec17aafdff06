"""Run a study's cells one after another through the simulation harness, resumably.

<out>/<study>-<scale>/
  sweep.json          the study, scale and cell list (a rerun must ask for the same cells)
  cells/<cell>/       one run folder per cell (rounds.csv, final.pt, ...)
  report/             the tidy table, markdown tables and figures (see report.py)
A finished cell is skipped; an interrupted one continues from its last checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from common import results
from common.config import ExperimentConfig, defaults
from common.partition import check_split
from server.store import RunStore

from .overrides import UsageError, absolutize_paths
from .runner import Resources, run_experiment
from .studies import Cell

DEFAULT_OUT = Path.home() / "robustfl-runs" / "sweeps"


def cell_config(cell: Cell, folder: Path, extra: dict[str, Any]) -> tuple[ExperimentConfig,
                                                                          dict[str, Any]]:
    overrides = absolutize_paths({**cell.overrides, **extra,
                                  "out.dir": str(folder / "cells"), "out.run-name": cell.name})
    cfg = ExperimentConfig.from_flat({**defaults(), **overrides})
    check_split(cfg, cell.num_supernodes)  # before the first cell runs, not at its turn
    return cfg, overrides


def cell_state(cfg: ExperimentConfig) -> str:
    """finished | resumable | new, from the cell's run folder. A cell killed after its last
    checkpoint but before final.pt is resumable: resuming writes what finishing writes."""
    store = RunStore(Path(cfg.out.dir) / cfg.run_name())
    if store.finished():
        return "finished"
    return "resumable" if store.checkpoint_path.exists() else "new"


def check_same_sweep(folder: Path, description: dict[str, Any]) -> None:
    path = folder / "sweep.json"
    if path.exists():
        before = json.loads(path.read_text())
        if before.get("cells") != description["cells"]:
            raise UsageError(
                f"{folder} holds a sweep with other cells ({len(before.get('cells', []))} "
                f"cells, e.g. {before.get('cells', ['?'])[:2]}); use another --out or the same "
                "study, scale and settings"
            )
    results.write_json(path, description)


def run_sweep(name: str, cells: list[Cell], folder: Path, extra: dict[str, Any],
              cpus_per_client: int | None = None, gpus_per_client: float = 0.0,
              verbose: bool = False, ray_address: str | None = None
              ) -> list[tuple[Cell, Path, str]]:
    """Run every cell not finished yet, one after another (on the Ray cluster at ray_address,
    if given, each cell with the same resources per client); return (cell, run folder,
    status) per cell."""
    configs = [cell_config(cell, folder, extra) for cell in cells]  # validates all first
    check_same_sweep(folder, {"sweep": name, "cells": [c.name for c in cells],
                              "extra": extra})
    outcomes = []
    started = time.monotonic()
    for i, (cell, (cfg, overrides)) in enumerate(zip(cells, configs), start=1):
        run_dir = Path(cfg.out.dir) / cfg.run_name()
        state = cell_state(cfg)
        label = f"[cell {i}/{len(cells)} {cell.name}]"
        if state == "finished":
            print(f"{label} finished earlier: skipped", flush=True)
            outcomes.append((cell, run_dir, "finished"))
            continue
        if state == "resumable":
            print(f"{label} resuming from its checkpoint", flush=True)
            cfg, overrides = cfg.replace(resume=True), {**overrides, "resume": True}
        resources = Resources.for_clients(cell.num_supernodes, cpus_per_client,
                                          gpus_per_client)
        outcome = run_experiment(cfg, overrides, resources, verbose=verbose, label=label,
                                 ray_address=ray_address)
        outcomes.append((cell, run_dir, outcome.status))
        elapsed = time.monotonic() - started
        print(f"{label} {outcome.status}{': ' + outcome.reason if outcome.reason else ''} "
              f"| sweep {elapsed / 60:.1f} min so far", flush=True)
    return outcomes
