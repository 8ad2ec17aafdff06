"""Run a study's cells one after another through the simulation harness, resumably.

<out>/<study>-<scale>/
  sweep.json              the study, scale, cell list and seeds (a rerun must ask for the
                          same cells; it may ask for more or fewer seeds)
  cells/<cell>/           one run folder per cell and seed (rounds.csv, final.pt, ...): the
  cells/<cell>-seed<s>/   cell's own seed in cells/<cell>, each further seed s of --seeds N
                          beside it (seeds.py)
  report/                 the tidy table, markdown tables and figures (see report.py)
The runs go seed by seed (every cell of the first seed, then of the second, ...), so an
interrupted sweep already has whole tables. A finished run is skipped; an interrupted one
continues from its last checkpoint. Then every finished run gets its final evaluation
(final_eval.py, diagnostics.py; cached in the run folder), which the report reads.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from common import results
from common.config import ExperimentConfig, defaults
from common.partition import check_split
from common.run_folder import RunStore

from .diagnostics import diagnose_run
from .final_eval import FinalEval, evaluate_run
from .overrides import UsageError, absolutize_paths
from .report import CellRun
from .runner import Resources, run_experiment
from .seeds import seed_values, seeded
from .studies import Cell

DEFAULT_OUT = Path.home() / "robustfl-runs" / "sweeps"


def cell_config(cell: Cell, folder: Path, extra: dict[str, Any]) -> ExperimentConfig:
    overrides = absolutize_paths({**cell.overrides, **extra,
                                  "out.dir": str(folder / "cells"), "out.run-name": cell.name})
    cfg = ExperimentConfig.from_flat({**defaults(), **overrides})
    check_split(cfg, cell.num_supernodes)  # before the first cell runs, not at its turn
    return cfg


def seed_configs(cell: Cell, folder: Path, extra: dict[str, Any], seeds: int
                 ) -> list[tuple[int, ExperimentConfig]]:
    """(seed, config) of each of the cell's runs, every split checked."""
    cfg = cell_config(cell, folder, extra)
    runs = []
    for seed in seed_values(cfg.seed, seeds):
        seed_cfg = seeded(cfg, seed)
        check_split(seed_cfg, cell.num_supernodes)  # the split is drawn from the seed
        runs.append((seed, seed_cfg))
    return runs


def cell_state(cfg: ExperimentConfig) -> str:
    """finished | resumable | new, from the cell's run folder. A cell killed after its last
    checkpoint but before final.pt is resumable: resuming writes what finishing writes."""
    store = RunStore.of(cfg)
    if store.finished():
        return "finished"
    return "resumable" if store.checkpoint_path.exists() else "new"


def check_same_sweep(folder: Path, description: dict[str, Any]) -> None:
    """The folder's sweep.json, if any, must list the same cells, or fewer: a sweep may be
    extended with more cells of its study (its report then covers them all), never narrowed
    or changed. A sweep.json from before --seeds existed has no seeds: it ran each cell's own
    seed, the first of any --seeds N, so it goes on with more seeds as it is."""
    path = folder / "sweep.json"
    if path.exists():
        before = json.loads(path.read_text())
        missing = [c for c in before.get("cells", []) if c not in description["cells"]]
        if missing:
            raise UsageError(
                f"{folder} holds a sweep with other cells ({len(before.get('cells', []))} "
                f"cells, e.g. {missing[:2]} not in this one); use another --out, or the same "
                "study, scale and settings (more --cells may be added, none left out)"
            )
    results.write_json(path, description)


def run_sweep(name: str, cells: list[Cell], folder: Path, extra: dict[str, Any],
              cpus_per_client: int | None = None, gpus_per_client: float = 0.0,
              verbose: bool = False, ray_address: str | None = None, seeds: int = 1
              ) -> list[CellRun]:
    """Run every cell and seed not finished yet, one after another, seed by seed (on the
    Ray cluster at ray_address, if given, each run with the same resources per client);
    return (cell, run folder, status, seed) per cell and seed."""
    runs = [seed_configs(cell, folder, extra, seeds) for cell in cells]  # all checked first
    plan = [(cell, per_cell[i]) for i in range(seeds) for cell, per_cell in zip(cells, runs)]
    check_same_sweep(folder, {"sweep": name, "cells": [c.name for c in cells],
                              "extra": extra, "seeds": seeds})
    outcomes = []
    started = time.monotonic()
    for i, (cell, (seed, cfg)) in enumerate(plan, start=1):
        run_dir = RunStore.of(cfg).root
        state = cell_state(cfg)
        label = f"[run {i}/{len(plan)} {cell.name}" + (f" seed {seed}]" if seeds > 1 else "]")
        if state == "finished":
            print(f"{label} finished earlier: skipped", flush=True)
            outcomes.append(CellRun(cell, run_dir, "finished", seed))
            continue
        if state == "resumable":
            print(f"{label} resuming from its checkpoint", flush=True)
            cfg = cfg.replace(resume=True)
        resources = Resources.for_clients(cell.num_supernodes, cpus_per_client,
                                          gpus_per_client)
        outcome = run_experiment(cfg, resources, verbose=verbose, label=label,
                                 ray_address=ray_address)
        outcomes.append(CellRun(cell, run_dir, outcome.status, seed))
        elapsed = time.monotonic() - started
        print(f"{label} {outcome.status}{': ' + outcome.reason if outcome.reason else ''} "
              f"| sweep {elapsed / 60:.1f} min so far", flush=True)
    return outcomes


def evaluate_runs(outcomes: list[CellRun | tuple], final: FinalEval) -> None:
    """The final evaluation (and, if asked for, the diagnostics of the final model) of every
    finished run, cached in its folder for the report; what is cached already is kept."""
    for _, run, status, _ in (CellRun(*o) for o in outcomes):
        if status != "finished":
            continue
        cfg = RunStore(run).config()
        evaluate_run(run, final.levels(cfg), final.attacks, final.eval_limit,
                     noise_attacks=final.noise_attacks)
        if final.diagnostics:
            diagnose_run(run, eval_limit=final.eval_limit)
