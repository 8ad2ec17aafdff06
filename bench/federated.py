"""Federated overhead: rounds through the real harness (flower-superlink --simulation, flwr
run, Ray actors) against the same training done back to back in this process.

Per configuration: local reference (rounds 1..R, round 1 = warm-up), the harness run, the
local reference again (rounds 2..R); the ratio is the federated `train_seconds` of rounds
2..R (rounds.csv: sampling, messages, client training, aggregation; round 1 holds Ray's
actor start-up) over the mean of the two local timings of the same rounds. The harness run
of the base configuration also feeds the memory and bytes report.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common.config import ExperimentConfig
from simulation.overrides import build_config
from simulation.runner import Resources, run_experiment

from . import memory
from .fixtures import Options, PRESETS, load_data
from .local_fedavg import initial_state, run_local
from .procwatch import PeakWatcher
from .result import Result

TARGET = 1.10
ROUNDS = 3
TRAIN_LIMIT = 1000  # images in the federation: ~6 s of training per round on 2 cores
RUN_TIMEOUT = 900.0


@dataclass(frozen=True)
class Case:
    clients: int
    width: int = 8
    cpus: int = 1

    @property
    def label(self) -> str:
        return f"K{self.clients}-w{self.width}-cpu{self.cpus}"


BASE = Case(5)
CASES = (BASE, Case(2), Case(10), Case(5, width=16), Case(5, cpus=2))


def case_config(case: Case, out_dir: Path, data_dir: Path) -> tuple[ExperimentConfig, dict]:
    """presets/cpu-small.toml shrunk to a few seconds per round: IID (so every K trains on
    the same images), one local epoch, evaluation only after the last round."""
    return build_config([str(PRESETS / "cpu-small.toml")], [
        f"data.dir={data_dir}", f"out.dir={out_dir}", f"out.run-name={case.label}",
        f"data.train-limit={TRAIN_LIMIT}", "data.eval-limit=50", "eval.attacks=fgsm",
        "eval.noise-std=0", f"eval.every={ROUNDS}", f"fl.num-rounds={ROUNDS}",
        f"fl.min-nodes={case.clients}", "fl.partition=iid", "train.local-epochs=1",
        f"model.width={case.width}",
    ])


@dataclass
class CaseOutcome:
    case: Case
    fed_seconds: float  # rounds 2..R
    local_seconds: list[float]  # before, after
    first_round: float
    wall: float
    loss_diff: float  # |federated - local| round-1 train loss: the same work was done?
    status: str
    watch: PeakWatcher
    rounds_csv: object
    cfg: ExperimentConfig

    @property
    def ratio(self) -> float:
        return self.fed_seconds / statistics.mean(self.local_seconds)


def run_case(case: Case, opts: Options, work: Path) -> CaseOutcome:
    cfg, overrides = case_config(case, work, opts.data_dir)
    data = load_data(opts)
    timed = range(2, ROUNDS + 1)
    before = run_local(cfg, data, case.clients, initial_state(cfg))
    began = time.perf_counter()
    with PeakWatcher() as watch:
        outcome = run_experiment(cfg, overrides, Resources(case.clients, case.cpus),
                                 timeout=RUN_TIMEOUT, label=f"bench {case.label}")
    wall = time.perf_counter() - began
    after = run_local(cfg, data, case.clients, before.states[1], first_round=2)
    rounds = outcome.rounds
    if outcome.status != "finished" or len(rounds) != ROUNDS:
        raise RuntimeError(f"federated run {case.label} ended {outcome.status}: "
                           f"{outcome.reason} (see {outcome.root})")
    fed = rounds.set_index("round")["train_seconds"]
    # Same partitions, seeds and initial model: round 1's loss must agree up to float
    # rounding (actors run 1 thread, this process 2; later rounds drift further apart).
    diff = abs(float(rounds.set_index("round")["train_loss"][1]) - before.losses[1])
    return CaseOutcome(
        case, float(sum(fed[r] for r in timed)),
        [sum(before.round_seconds[r] for r in timed), sum(after.round_seconds[r] for r in timed)],
        float(fed[1]), wall, diff, outcome.status, watch, rounds, cfg)


def run(opts: Options) -> list[Result]:
    cases = (BASE,) if opts.quick else CASES
    started = time.perf_counter()
    outcomes: list[CaseOutcome] = []
    with tempfile.TemporaryDirectory(prefix="robustfl-bench-") as tmp:
        for case in cases:
            outcomes.append(run_case(case, opts, Path(tmp)))
        base = outcomes[0]
        mem = memory.report(base, opts)
    rows = [{
        "clients K": o.case.clients, "width": o.case.width, "cpus/client": o.case.cpus,
        "fed s (rounds 2-3)": o.fed_seconds, "local s (before, after)":
            f"{o.local_seconds[0]:.1f}, {o.local_seconds[1]:.1f}",
        "ratio fed/local": o.ratio,
        "overhead s/round": (o.fed_seconds - statistics.mean(o.local_seconds)) / (ROUNDS - 1),
        "round 1 s (Ray start)": o.first_round, "harness wall s": o.wall,
        "round-1 loss fed - local": o.loss_diff,
    } for o in outcomes]
    notes = [f"Workload per round: presets/cpu-small.toml with data.train-limit="
             f"{TRAIN_LIMIT}, IID, 1 local epoch, batch 32, PGD-3 (clients train "
             "partition + 40% share of G)."]
    cpu = {o.case.cpus: o for o in outcomes if o.case.clients == 5 and o.case.width == 8}
    if len(cpu) == 2:
        better = min(cpu, key=lambda c: cpu[c].fed_seconds)
        notes.append(
            f"cpus-per-client 1 (2 actors x 1 thread): {cpu[1].fed_seconds:.1f} s; "
            f"cpus-per-client 2 (1 actor x 2 threads): {cpu[2].fed_seconds:.1f} s -> "
            f"cpus-per-client {better} is faster here "
            f"({max(cpu[1].fed_seconds, cpu[2].fed_seconds) / min(cpu[1].fed_seconds, cpu[2].fed_seconds):.2f}x).")
    fed = Result(
        name="federated", title="Federated overhead (K=5, width 8)", ratio=base.ratio,
        target=TARGET, direction="<=",
        meaning=("federated train_seconds of rounds 2-3 (harness + Ray, rounds.csv) / the "
                 "same training + FedAvg back to back in one process (mean of a run before "
                 "and after the harness run)"),
        details={"cases": [{**r} for r in rows]}, table=rows, notes=notes,
        seconds=time.perf_counter() - started)
    return [fed, mem]
