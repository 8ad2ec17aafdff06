"""Federated overhead: rounds through the real harness (flower-superlink --simulation, flwr
run, Ray actors) against the same training done back to back in this process.

Per configuration: the local reference (rounds 1..R, round 1 = warm-up), the harness run and,
for the base configuration, the local reference again (rounds 2..R). The ratio is the
federated `train_seconds` of rounds 2..R (rounds.csv: sampling, messages, client training,
aggregation; round 1 holds Ray's actor start-up) over the faster local timing of the same
rounds. A second, load-proof figure comes from inside the run: round time over the best
schedule of the clients' own train() times (clients.csv) on the concurrent actors. The
harness run of the base configuration also feeds the memory and bytes report.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common.config import ExperimentConfig
from common.run_folder import RunStore
from simulation.overrides import build_config
from simulation.runner import Resources, run_experiment

from . import memory
from .fixtures import Options, PRESETS, load_data
from .local_fedavg import initial_state, run_local
from .procwatch import PeakWatcher
from .result import Result

TARGET = 1.10
TRAIN_LIMIT = 1000  # images in the federation: ~6 s of training per round on 2 cores
RUN_TIMEOUT = 900.0


@dataclass(frozen=True)
class Case:
    clients: int
    width: int = 8
    cpus: int = 1
    rounds: int = 3  # round 1 is start-up; the others are timed

    @property
    def label(self) -> str:
        return f"K{self.clients}-w{self.width}-cpu{self.cpus}"


BASE = Case(5)
# The comparisons time one round each, to keep `python -m bench` within 10 minutes.
CASES = (BASE, Case(2, rounds=2), Case(10, rounds=2), Case(5, width=16, rounds=2),
         Case(5, cpus=2, rounds=2))


def case_config(case: Case, out_dir: Path, data_dir: Path) -> ExperimentConfig:
    """presets/cpu-small.toml shrunk to a few seconds per round: IID (so every K trains on
    the same images), one local epoch, evaluation only after the last round."""
    return build_config([str(PRESETS / "cpu-small.toml")], [
        f"data.dir={data_dir}", f"out.dir={out_dir}", f"out.run-name={case.label}",
        f"data.train-limit={TRAIN_LIMIT}", "data.eval-limit=50", "eval.attacks=fgsm",
        "eval.noise-std=0", f"eval.every={case.rounds}", f"fl.num-rounds={case.rounds}",
        f"fl.min-nodes={case.clients}", "fl.partition=iid", "train.local-epochs=1",
        f"model.width={case.width}",
    ])


@dataclass
class CaseOutcome:
    case: Case
    fed_seconds: float  # rounds 2..R
    ideal_seconds: float  # sum over rounds 2..R of the best schedule of client train() times
    local_seconds: list[float]  # before, after
    first_round: float
    wall: float
    loss_diff: float  # |federated - local| round-1 train loss: the same work was done?
    status: str
    watch: PeakWatcher
    rounds_csv: object
    cfg: ExperimentConfig

    @property
    def local(self) -> float:
        # Other work can only slow a run down: the faster of the two is the better estimate.
        return min(self.local_seconds)

    @property
    def ratio(self) -> float:
        return self.fed_seconds / self.local

    @property
    def busy(self) -> float:
        """fed round time / the best schedule of the clients' own train() times on the
        actors: what Flower, Ray and the client app around train() add, measured inside
        the same run (so immune to load)."""
        return self.fed_seconds / self.ideal_seconds


def makespan(seconds: list[float], workers: int) -> float:
    """Longest-first greedy schedule of jobs on `workers`: the round time if nothing but
    the clients' training took time."""
    loads = [0.0] * workers
    for job in sorted(seconds, reverse=True):
        loads[loads.index(min(loads))] += job
    return max(loads)


def run_case(case: Case, opts: Options, work: Path, again: bool) -> CaseOutcome:
    """One configuration; `again` repeats the local reference after the harness run."""
    cfg = case_config(case, work, opts.data_dir)
    data = load_data(opts)
    timed = range(2, case.rounds + 1)
    before = run_local(cfg, data, case.clients, initial_state(cfg))
    began = time.perf_counter()
    with PeakWatcher() as watch:
        outcome = run_experiment(cfg, Resources(case.clients, case.cpus),
                                 timeout=RUN_TIMEOUT, label=f"bench {case.label}")
    wall = time.perf_counter() - began
    after = run_local(cfg, data, case.clients, before.states[1], first_round=2) if again \
        else None
    rounds = outcome.rounds
    if outcome.status != "finished" or len(rounds) != case.rounds:
        raise RuntimeError(f"federated run {case.label} ended {outcome.status}: "
                           f"{outcome.reason} (see {outcome.root})")
    fed = rounds.set_index("round")["train_seconds"]
    # Same partitions, seeds and initial model: round 1's loss must agree up to float
    # rounding (actors run 1 thread, this process 2; later rounds drift further apart).
    diff = abs(float(rounds.set_index("round")["train_loss"][1]) - before.losses[1])
    clients = RunStore(outcome.root).clients()
    actors = max(1, len(os.sched_getaffinity(0)) // case.cpus)  # Ray: CPUs / cpus-per-client
    ideal = sum(makespan(list(clients[clients["round"] == r]["train_seconds"]), actors)
                for r in timed)
    return CaseOutcome(
        case, float(sum(fed[r] for r in timed)), ideal,
        [sum(run.round_seconds[r] for r in timed) for run in (before, after) if run],
        float(fed[1]), wall, diff, outcome.status, watch, rounds, cfg)


def run(opts: Options) -> list[Result]:
    cases = (BASE,) if opts.quick else CASES
    started = time.perf_counter()
    outcomes: list[CaseOutcome] = []
    with tempfile.TemporaryDirectory(prefix="robustfl-bench-") as tmp:
        for case in cases:
            outcomes.append(run_case(case, opts, Path(tmp), again=case == BASE))
        base = outcomes[0]
        mem = memory.report(base, opts)
    rows = [{
        "clients K": o.case.clients, "width": o.case.width, "cpus/client": o.case.cpus,
        "timed rounds": o.case.rounds - 1,
        "fed s": o.fed_seconds, "local s (before, after)":
            ", ".join(f"{v:.1f}" for v in o.local_seconds),
        "ratio fed/local": o.ratio,
        "overhead s/round": (o.fed_seconds - o.local) / (o.case.rounds - 1),
        "fed / ideal schedule of client train()": o.busy,
        "round 1 s (Ray start)": o.first_round, "harness wall s": o.wall,
        "round-1 loss fed - local": o.loss_diff,
    } for o in outcomes]
    notes = [f"Workload per round: presets/cpu-small.toml with data.train-limit="
             f"{TRAIN_LIMIT}, IID, 1 local epoch, batch 32, PGD-3 (clients train "
             "partition + 40% share of G)."]
    cpu = {o.case.cpus: o for o in outcomes if o.case.clients == 5 and o.case.width == 8}
    if len(cpu) == 2:
        # Each run is normalised by its own adjacent local timing of the same work, so the
        # comparison survives load changes between the two runs.
        rel = cpu[2].ratio / cpu[1].ratio
        better = 1 if rel > 1 else 2
        notes.append(
            f"cpus-per-client 1 (2 actors x 1 thread): fed/local {cpu[1].ratio:.3f}; "
            f"cpus-per-client 2 (1 actor x 2 threads): {cpu[2].ratio:.3f} -> "
            f"cpus-per-client {better} is faster here by {max(rel, 1 / rel):.2f}x.")
    fed = Result(
        name="federated", title="Federated overhead (K=5, width 8)", ratio=base.ratio,
        target=TARGET, direction="<=",
        meaning=("federated train_seconds of rounds 2..R (harness + Ray, rounds.csv) / the "
                 "same training + FedAvg back to back in this process on all cores (the "
                 "faster of a run just before and one just after the harness run)"),
        details={"cases": [{**r} for r in rows]}, table=rows, notes=notes,
        seconds=time.perf_counter() - started)
    return [fed, mem]
