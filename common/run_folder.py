"""A run folder: the one place that names its files and reads and writes them; resume and
refuse.

<out.dir>/<run-name>/
  config.json    the full run config, its identity hash and the software versions
  rounds.csv     one row per round: accuracies under every attack, losses, timings, counts,
                 bytes sent each way (TRAFFIC_COLUMNS)
  clients.csv    one row per client per round: status (ok/failed/rejected/timeout), reason,
                 examples, losses, whether the shared-pool share was sent
  checkpoint.pt  the global model after the last finished round (+ round, config identity),
                 written after that round's rows: a checkpoint implies its rows
  best.pt        the model of the round with the best validation robust accuracy (see
                 best_round), with that round: a dict like checkpoint.pt's; none when the
                 run holds no validation split (data.val-size=0)
  final.pt       the final global model, written when the run finishes
  status.json    running / finished / stopped / failed, last round, reason, best.pt's round
  final_eval.csv the final evaluation's rows, a cache (simulation/final_eval.py)
  diagnostics.csv  the gradient-masking diagnostics' rows, a cache (simulation/diagnostics.py)
  simulation.log the Flower output of the simulation harness (simulation/runner.py)
Every file is replaced atomically, so a crash leaves the previous complete version.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from common import results
from common.config import ExperimentConfig

CHECKPOINT_FORMAT = 1
DEFAULT_OUT_DIR = Path.home() / "robustfl-runs"

CONFIG_JSON = "config.json"
ROUNDS_CSV = "rounds.csv"
CLIENTS_CSV = "clients.csv"
CHECKPOINT_PT = "checkpoint.pt"
BEST_PT = "best.pt"
FINAL_PT = "final.pt"
STATUS_JSON = "status.json"
FINAL_EVAL_CSV = "final_eval.csv"
DIAGNOSTICS_CSV = "diagnostics.csv"
SIMULATION_LOG = "simulation.log"

# rounds.csv's traffic of a round, in bytes (server.strategy counts them): the model sent to
# the clients and their updates, and the data that travelled besides (fl.sharing: raw images
# of G down; the pool of averages down and each client's averages up; nothing otherwise).
BYTES_DOWN_MODEL = "bytes_down_model"
BYTES_DOWN_DATA = "bytes_down_data"
BYTES_UP_MODEL = "bytes_up_model"
BYTES_UP_DATA = "bytes_up_data"
TRAFFIC_COLUMNS = (BYTES_DOWN_MODEL, BYTES_DOWN_DATA, BYTES_UP_MODEL, BYTES_UP_DATA)


class RunStoreError(ValueError):
    """The output folder or the checkpoint to resume from cannot be used."""


@dataclass(frozen=True)
class ResumePoint:
    next_round: int  # num_rounds + 1: every round is done, only the final files are missing
    state_dict: dict[str, torch.Tensor]


@dataclass(frozen=True)
class Best:
    round: int
    column: str
    value: float


def selection_column(rounds: pd.DataFrame) -> str:
    """The validation robust accuracy best.pt is chosen on: worst_acc, the plain model's
    accuracy under the union of eval.attacks' L-inf attacks (an image counts only if it is
    right clean and under every one; deterministic, unlike the noise columns); natural_acc
    when the list holds no L-inf attack."""
    return "worst_acc" if "worst_acc" in rounds.columns else "natural_acc"


def best_round(rounds: pd.DataFrame, up_to: int) -> Best | None:
    """Among the rounds <= up_to evaluated on the validation split, the one with the highest
    validation robust accuracy, the earliest on a tie (robust overfitting: the last round is
    often not the most robust one). None when no round was evaluated on it. Rows evaluated
    on the test set never compete: nothing is selected on the test set."""
    if rounds.empty or "eval_set" not in rounds.columns:
        return None
    column = selection_column(rounds)
    if column not in rounds.columns:
        return None
    rows = rounds[(rounds["eval_set"] == "val") & (rounds["round"] <= up_to)]
    rows = rows.dropna(subset=[column]).sort_values("round", kind="stable")
    if rows.empty:
        return None
    top = rows.loc[rows[column].idxmax()]  # the first maximum: the earliest round
    return Best(int(top["round"]), column, float(top[column]))


def folder_for(cfg: ExperimentConfig) -> Path:
    """Where the run of cfg writes when it does not resume from elsewhere (resume-from)."""
    out_dir = Path(cfg.out.dir).expanduser() if cfg.out.dir else DEFAULT_OUT_DIR
    return out_dir / cfg.run_name()


def _versions() -> dict[str, str]:
    import flwr

    return {"python": platform.python_version(), "torch": torch.__version__,
            "flwr": flwr.__version__}


_UNREAD = object()


class RunStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._best_saved: Any = _UNREAD  # the round best.pt holds, read once

    rounds_csv = property(lambda self: self.root / ROUNDS_CSV)
    clients_csv = property(lambda self: self.root / CLIENTS_CSV)
    checkpoint_path = property(lambda self: self.root / CHECKPOINT_PT)
    final_path = property(lambda self: self.root / FINAL_PT)
    best_path = property(lambda self: self.root / BEST_PT)
    status_path = property(lambda self: self.root / STATUS_JSON)
    config_path = property(lambda self: self.root / CONFIG_JSON)
    final_eval_csv = property(lambda self: self.root / FINAL_EVAL_CSV)
    diagnostics_csv = property(lambda self: self.root / DIAGNOSTICS_CSV)
    log_path = property(lambda self: self.root / SIMULATION_LOG)

    @classmethod
    def of(cls, cfg: ExperimentConfig) -> RunStore:
        """The folder the run of cfg writes to (folder_for), opened for reading."""
        return cls(folder_for(cfg))

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def locate(cls, cfg: ExperimentConfig) -> tuple[RunStore, ResumePoint | None]:
        """The run folder and, when resuming, where to continue; writes nothing.

        Refuses to overwrite earlier results, to resume from a checkpoint of another
        experiment, and to use a folder it cannot write to.
        """
        if cfg.resume_from:
            source = Path(cfg.resume_from).expanduser()
            root = source if source.is_dir() else source.parent
            checkpoint = source / CHECKPOINT_PT if source.is_dir() else source
            store = cls(root)
            resume = store._resume(cfg, checkpoint)  # checked first: bad input creates nothing
            store._check_writable()
            return store, resume
        store = cls.of(cfg)
        if cfg.resume:
            if not store.checkpoint_path.exists():
                raise RunStoreError(
                    f"resume=true but {store.checkpoint_path} does not exist; start the run "
                    "without resume, or point resume-from at an existing checkpoint"
                )
            resume = store._resume(cfg, store.checkpoint_path)
            store._check_writable()
            return store, resume
        if store.rounds_csv.exists() or store.checkpoint_path.exists():
            raise RunStoreError(
                f"results already exist in {store.root}; pass resume=true to continue that "
                "run, or set out.run-name (or out.dir) to start a new one. Nothing was changed."
            )
        store._check_writable()
        return store, None

    @classmethod
    def open(cls, cfg: ExperimentConfig) -> tuple[RunStore, ResumePoint | None]:
        """`locate`, then record the config of a new run in config.json."""
        store, resume = cls.locate(cfg)
        if resume is None:
            store.write_config(cfg)
        else:
            store._repair_best(resume)
        return store, resume

    def write_config(self, cfg: ExperimentConfig) -> None:
        results.write_json(self.config_path, {
            "config": cfg.to_flat(), "identity_hash": cfg.identity_hash(),
            "versions": _versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })

    def _check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise RunStoreError(
                f"cannot write results to {self.root} ({exc.strerror or exc}); set out.dir "
                "to a folder you can write to"
            ) from None

    def _resume(self, cfg: ExperimentConfig, checkpoint: Path) -> ResumePoint:
        if not checkpoint.is_file():
            raise RunStoreError(f"no checkpoint at {checkpoint}; resume-from must name a "
                                "checkpoint.pt or a run folder that has one")
        try:
            ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise RunStoreError(f"checkpoint {checkpoint} cannot be read ({exc}); it is "
                                "corrupt or not a RobustFL checkpoint") from None
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise RunStoreError(f"{checkpoint} is not a RobustFL checkpoint (format "
                                f"{CHECKPOINT_FORMAT})")
        theirs, ours = ckpt["identity"], cfg.identity()
        differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        unknown = [k for k in differ if k not in theirs]
        if unknown:  # whatever else differs, this version cannot resume it
            raise RunStoreError(
                f"checkpoint {checkpoint} was written by an earlier RobustFL version, before "
                f"the keys {', '.join(unknown[:8])} existed; this version cannot resume it, "
                "since it cannot tell what those runs did in their place. Its results stay "
                "readable (`python -m simulation evaluate` on the run folder); start a new "
                "run to train further.")
        if differ:
            details = ", ".join(f"{k}: checkpoint {theirs.get(k)!r} vs now {ours.get(k)!r}"
                                for k in differ[:8])
            raise RunStoreError(
                f"checkpoint {checkpoint} belongs to a different experiment ({details}). "
                "Resume with the run config it was written with, or start a new run."
            )
        done = int(ckpt["round"])
        if done >= cfg.fl.num_rounds and self.finished():
            raise RunStoreError(
                f"the run in {self.root} already finished all {cfg.fl.num_rounds} rounds "
                f"(status finished, {self.final_path.name} written); nothing to resume. Start "
                "a new run with another out.run-name, or evaluate this one with `python -m "
                "simulation evaluate`"
            )
        # A run killed after its last checkpoint but before final.pt resumes with no round
        # left to train: it only writes what finishing writes.
        return ResumePoint(next_round=min(done, cfg.fl.num_rounds) + 1,
                           state_dict=ckpt["model"])

    # --- writing ---------------------------------------------------------------------------

    def finish_round(self, cfg: ExperimentConfig, row: dict[str, Any],
                     client_rows: list[dict[str, Any]],
                     state_dict: dict[str, torch.Tensor]) -> None:
        """A round's rows, then its checkpoint, then best.pt if the round is the best: a kill
        between the first two repeats the round on resume (which replaces its rows); the
        other order would lose the rows for good. A kill before best.pt is repaired on
        resume from the checkpoint (_repair_best)."""
        self.record_round(row, client_rows)
        self.save_checkpoint(cfg, int(row["round"]), state_dict)
        self.keep_best(int(row["round"]), state_dict)

    def record_round(self, row: dict[str, Any], client_rows: list[dict[str, Any]]) -> None:
        """Add a round's rows, replacing every earlier row of that round: a repeated round
        (after a resume) must not keep rows of its first attempt, whose node ids differ."""
        results.upsert_rows(self.rounds_csv, [row], keys=["round"])
        if client_rows:
            ordered = sorted(client_rows, key=lambda r: r.get("partition_id", -1))
            results.upsert_rows(self.clients_csv, ordered, keys=["round"])

    def save_checkpoint(self, cfg: ExperimentConfig, server_round: int,
                        state_dict: dict[str, torch.Tensor]) -> None:
        results.save_torch(self.checkpoint_path, {
            "format": CHECKPOINT_FORMAT, "round": server_round, "model": state_dict,
            "identity": cfg.identity(), "identity_hash": cfg.identity_hash(),
        })

    def save_final(self, state_dict: dict[str, torch.Tensor]) -> None:
        rounds = self.rounds()
        if not rounds.empty:  # a last row recovered after a kill (rounds.recover_last_row)
            self.keep_best(int(rounds["round"].max()), state_dict)
        results.save_torch(self.final_path, state_dict)

    def keep_best(self, server_round: int, state_dict: dict[str, torch.Tensor]) -> None:
        """Write best.pt from `state_dict`, the model of `server_round`, when the rows up to
        that round make it the best round and best.pt does not hold it yet. The best so far
        is always recomputed from rounds.csv, so a resumed run needs no other state."""
        from flwr.common.logger import log

        best = best_round(self.rounds(), up_to=server_round)
        if best is None or best.round != server_round or self.best_saved() == best.round:
            return
        results.save_torch(self.best_path, {
            "format": CHECKPOINT_FORMAT, "round": best.round, "model": state_dict,
            "metric": best.column, "value": best.value,
        })
        self._best_saved = best.round
        log(INFO, "best.pt: round %d, %s %.4f on the validation split", best.round,
            best.column, best.value)

    def best_saved(self) -> int | None:
        """The round best.pt holds; None when there is none (or it cannot be read)."""
        if self._best_saved is _UNREAD:
            self._best_saved = None
            if self.best_path.is_file():
                try:
                    best = torch.load(self.best_path, map_location="cpu", weights_only=True)
                    self._best_saved = int(best["round"])
                except Exception:  # unreadable: as if absent, rewritten when it can be
                    pass
        return self._best_saved

    def _repair_best(self, resume: ResumePoint) -> None:
        """On resume: a kill between a round's checkpoint and its best.pt leaves best.pt
        behind; the checkpoint holds that round's model, so it is written now."""
        from flwr.common.logger import log

        done = resume.next_round - 1
        self.keep_best(done, resume.state_dict)
        best = best_round(self.rounds(), up_to=done)
        if best is not None and self.best_saved() != best.round:
            log(WARNING, "best.pt should hold round %d (the best %s on the validation split "
                "so far) but holds %s and that model is gone; best.pt will be written again "
                "only when a later round beats round %d", best.round, best.column,
                self.best_saved(), best.round)

    def set_status(self, status: str, last_round: int, reason: str = "",
                   phase: str = "") -> None:
        """status.json: running / finished / stopped / failed, the last finished round and,
        while running, what the run is doing now (for people and scripts that watch)."""
        results.write_json(self.status_path, {
            "status": status, "last_round": last_round, "reason": reason, "phase": phase,
            "best_round": self.best_saved(), "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })

    def status(self) -> dict[str, Any]:
        if not self.status_path.exists():
            return {}
        return json.loads(self.status_path.read_text())

    def finished(self) -> bool:
        """Truly finished: status finished and the final model written. A run killed
        between its last checkpoint and these two is not; resuming it completes it."""
        return self.status().get("status") == "finished" and self.final_path.is_file()

    def has_round(self, server_round: int) -> bool:
        rounds = self.rounds()
        return not rounds.empty and server_round in set(rounds["round"])

    # --- reading a run's results -------------------------------------------------------------

    def rounds(self) -> pd.DataFrame:
        """rounds.csv; empty when no round has finished."""
        return results.read_csv(self.rounds_csv)

    def clients(self) -> pd.DataFrame:
        """clients.csv; empty when no round has finished."""
        return results.read_csv(self.clients_csv)

    def config(self) -> ExperimentConfig:
        """The run config the run was started with (config.json)."""
        if not self.config_path.is_file():
            raise FileNotFoundError(f"{self.root} has no {CONFIG_JSON}; is it a RobustFL run "
                                    "folder?")
        return ExperimentConfig.from_flat(json.loads(self.config_path.read_text())["config"])

    def saved_models(self, cfg: ExperimentConfig) -> dict[str, int]:
        """The models of a finished run, with the round each comes from: `final` always,
        `best` when the run wrote best.pt (data.val-size > 0)."""
        models = {"final": cfg.fl.num_rounds}
        if self.best_path.is_file():
            models["best"] = int(self._load_best()["round"])
        return models

    def model_state(self, model: str) -> dict[str, torch.Tensor]:
        """The state dict of `final` (final.pt) or `best` (best.pt)."""
        if model == "best":
            return self._load_best()["model"]
        return torch.load(self.final_path, map_location="cpu", weights_only=True)

    def _load_best(self) -> dict:
        try:
            return torch.load(self.best_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"{self.best_path} cannot be read ({exc}); it is corrupt or not a "
                             f"RobustFL {BEST_PT}: delete it to evaluate only {FINAL_PT}"
                             ) from None
