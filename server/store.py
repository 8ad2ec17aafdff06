"""The run directory: config, per-round results, checkpoints, status; resume and refuse.

<out.dir>/<run-name>/
  config.json    the full run config, its identity hash and the software versions
  rounds.csv     one row per round: accuracies under every attack, losses, timings, counts
  clients.csv    one row per client per round: status (ok/failed/rejected/timeout), reason,
                 examples, losses, whether the shared-pool share was sent
  checkpoint.pt  the global model after the last finished round (+ round, config identity),
                 written after that round's rows: a checkpoint implies its rows
  final.pt       the final global model, written when the run finishes
  status.json    running / finished / stopped / failed, last round, reason
Every file is replaced atomically, so a crash leaves the previous complete version.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common import results
from common.config import ConfigError, ExperimentConfig

CHECKPOINT_FORMAT = 1
DEFAULT_OUT_DIR = Path.home() / "robustfl-runs"


class RunStoreError(ValueError):
    """The output folder or the checkpoint to resume from cannot be used."""


@dataclass(frozen=True)
class ResumePoint:
    next_round: int  # num_rounds + 1: every round is done, only the final files are missing
    state_dict: dict[str, torch.Tensor]


def _versions() -> dict[str, str]:
    import flwr

    return {"python": platform.python_version(), "torch": torch.__version__,
            "flwr": flwr.__version__}


class RunStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    rounds_csv = property(lambda self: self.root / "rounds.csv")
    clients_csv = property(lambda self: self.root / "clients.csv")
    checkpoint_path = property(lambda self: self.root / "checkpoint.pt")
    final_path = property(lambda self: self.root / "final.pt")
    status_path = property(lambda self: self.root / "status.json")
    config_path = property(lambda self: self.root / "config.json")

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
            checkpoint = source / "checkpoint.pt" if source.is_dir() else source
            store = cls(root)
            resume = store._resume(cfg, checkpoint)  # checked first: bad input creates nothing
            store._check_writable()
            return store, resume
        out_dir = Path(cfg.out.dir).expanduser() if cfg.out.dir else DEFAULT_OUT_DIR
        store = cls(out_dir / cfg.run_name())
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
        """A round's rows, then its checkpoint: a kill between the two repeats the round on
        resume (which replaces its rows); the other order would lose the rows for good."""
        self.record_round(row, client_rows)
        self.save_checkpoint(cfg, int(row["round"]), state_dict)

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
        results.save_torch(self.final_path, state_dict)

    def set_status(self, status: str, last_round: int, reason: str = "",
                   phase: str = "") -> None:
        """status.json: running / finished / stopped / failed, the last finished round and,
        while running, what the run is doing now (for people and scripts that watch)."""
        results.write_json(self.status_path, {
            "status": status, "last_round": last_round, "reason": reason, "phase": phase,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
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
        rounds = results.read_csv(self.rounds_csv)
        return not rounds.empty and server_round in set(rounds["round"])


def check_config(flat: dict[str, Any]) -> ExperimentConfig:
    """Parse the run config, re-raising with a pointer to where keys are documented."""
    try:
        return ExperimentConfig.from_flat(flat)
    except ConfigError as exc:
        raise ConfigError(f"{exc}\n(keys and defaults: pyproject.toml [tool.flwr.app.config]"
                          " or `python -m simulation keys`)") from None
