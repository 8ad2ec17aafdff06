"""Run one experiment through Flower's simulation engine and report its outcome."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from common.config import ExperimentConfig
from common.data import load_cifar10
from common.footprint import check_fits
from common.partition import check_split, validation_indices
from common.run_folder import RunStore

from .engine import run_app, simulation_link
from .overrides import flower_overrides
from .procs import stop_reason
from .progress import RoundProgress

# Lines of the Flower stream worth showing besides the progress bar, minus known chatter.
NOTEWORTHY = re.compile(r"WARNING|ERROR|Traceback|Exception|failed|refused|Stopping")
CHATTER = re.compile(r"default simulated SuperNodes changed|fraction_evaluate is set to 0|"
                     r"Manually terminating ClientAppActor|FutureWarning|warnings.warn")
DEFAULT_TIMEOUT = 7 * 24 * 3600.0
# A stopped run raises so that Flower lists it as failed (server.rounds.RunStopped); Flower's
# report of that exception repeats what status.json and the line "Run stopped: ..." say.
RUN_STOPPED = re.compile(r"Run stopped: ")
STOP_ECHO = re.compile(r"raised an exception|^Traceback|Exit Code|RunStopped")


class Noteworthy:
    """Which Flower lines the harness shows besides the progress bar."""

    def __init__(self) -> None:
        self.stopped = False

    def __call__(self, line: str) -> bool:
        if RUN_STOPPED.search(line):
            self.stopped = True
        elif self.stopped and STOP_ECHO.search(line):
            return False
        return bool(NOTEWORTHY.search(line)) and not CHATTER.search(line)


@dataclass(frozen=True)
class Resources:
    num_supernodes: int
    cpus_per_client: int = 1
    gpus_per_client: float = 0.0

    @classmethod
    def for_clients(cls, num_supernodes: int, cpus_per_client: int | None = None,
                    gpus_per_client: float = 0.0) -> Resources:
        """cpus_per_client None: every core for a single client (the centralized case,
        which would otherwise train on one thread), else one core per client (several
        one-thread clients side by side use the cores best: docs/performance.md)."""
        if cpus_per_client is None:
            cpus_per_client = len(os.sched_getaffinity(0)) if num_supernodes == 1 else 1
        if cpus_per_client < 1:
            raise ValueError(f"cpus per client must be >= 1, got {cpus_per_client}")
        return cls(num_supernodes, cpus_per_client, gpus_per_client)

    def federation_config(self) -> dict[str, Any]:
        return {"num-supernodes": self.num_supernodes,
                "client-resources-num-cpus": self.cpus_per_client,
                "client-resources-num-gpus": self.gpus_per_client}


@dataclass(frozen=True)
class RunOutcome:
    status: str  # finished | stopped | failed
    reason: str
    root: Path
    rounds: pd.DataFrame


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


def write_overrides(overrides: dict[str, Any], folder: Path) -> Path:
    path = folder / "overrides.toml"
    lines = [f'"{k}" = {toml_value(v)}' for k, v in sorted(overrides.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def preflight(cfg: ExperimentConfig, resources: Resources) -> RunStore:
    """Everything that can be checked before Flower starts: the split, the memory, output
    folder, resume point and the data (a clear error now, not a traceback in a Ray actor)."""
    check_split(cfg, resources.num_supernodes)
    check_fits(cfg, resources.gpus_per_client)
    store, _ = RunStore.locate(cfg)
    data = load_cifar10(cfg.data.dir, download=cfg.data.download)
    validation_indices(data.train_y.numpy(), cfg.data.val_size, cfg.seed)  # not all of it
    return store


def record_stop(store: RunStore, reason: str) -> None:
    """After an interruption, once every process is stopped: the ServerApp died mid-round
    (it may have written "failed"), and the run can continue from its checkpoint."""
    status = store.status()
    if status.get("status") != "finished":
        store.set_status("stopped", int(status.get("last_round", 0)), reason)


def run_experiment(cfg: ExperimentConfig, resources: Resources, verbose: bool = False,
                   timeout: float = DEFAULT_TIMEOUT, label: str = "run",
                   ray_address: str | None = None) -> RunOutcome:
    """The run of `cfg`, whose Flower run config is derived from it (flower_overrides).
    ray_address: the Ray cluster whose nodes run the clients (engine.flower_env); the
    ServerApp, and so every result file, stays on this machine."""
    store = preflight(cfg, resources)
    progress = RoundProgress(label)
    noteworthy = Noteworthy()
    log_path = store.log_path

    try:
        with tempfile.TemporaryDirectory(prefix="robustfl-run-") as tmp, \
                log_path.open("a") as log_file, \
                simulation_link(store.root, resources.gpus_per_client, ray_address) as link:
            overrides_file = write_overrides(flower_overrides(cfg), Path(tmp))

            def on_line(line: str) -> None:
                log_file.write(line + "\n")
                log_file.flush()
                if progress.feed(line):
                    return
                if verbose or noteworthy(line):
                    progress.note(line)

            code = run_app(link, overrides_file, resources.federation_config(), on_line,
                           timeout)
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP (procs.Stopped)
        record_stop(store, stop_reason(exc))  # first: the terminal may be gone (SIGHUP)
        with contextlib.suppress(OSError):
            progress.close()
        raise
    progress.close()
    status = store.status()
    rounds = store.rounds()
    if code != 0 and status.get("status") == "finished":
        code = 0  # flwr's exit code after a finished stream is not meaningful
    return RunOutcome(status.get("status", "failed"),
                      status.get("reason", "" if code == 0 else f"flwr exited with {code}; "
                                 f"see {log_path}"),
                      store.root, rounds)
