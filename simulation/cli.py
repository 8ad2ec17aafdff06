"""Command line: python -m simulation {run,centralized,keys,sweep,report} ..."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import pandas as pd

from common.config import ConfigError, describe
from common.data import DataError
from common.device import GPU_SHARE_RULE, valid_gpu_share
from common.evaluation import NOISE_PROTOCOLS, SPEC_SYNTAX, parse_attacks
from common.intervals import format_interval, over_seeds
from common.partition import PartitionError, check_split
from common.run_folder import RunStore, RunStoreError

from .engine import RAY_ADDRESS_ENV, EngineError, check_ray_address, cluster_address
from .diagnostics import diagnose_run
from .final_eval import HONEST_ATTACKS, HONEST_NOISE_ATTACKS, FinalEval, evaluate_run
from .overrides import UsageError, absolutize_paths, build_config, parse_assignment
from .procs import stop_reason, stop_signal, stop_signals
from .report import write_report
from .runner import DEFAULT_TIMEOUT, Resources, run_experiment
from .seeds import MAX_SEEDS, check_seeds, seed_values, seeded
from .studies import FINAL_EVAL_LIMIT, SCALES, STUDIES, Scope, select_cells
from .sweep import DEFAULT_OUT, cell_state, evaluate_runs, run_sweep

USER_ERRORS = (ConfigError, DataError, PartitionError, RunStoreError, UsageError, EngineError,
               FileNotFoundError)

SUMMARY_COLUMNS = ("round", "natural_acc", "fgsm_acc", "pgd10_acc", "pgd20_acc",
                   "natural_noise_acc", "fgsm_noise_acc", "clients_ok", "clients_failed",
                   "round_seconds")


def _add_seeds(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help=f"run {what} with N seeds: the config's seed, seed + 1, ..., each in "
                        f"a run folder of its own (1 to {MAX_SEEDS}; default 1)")


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", action="append", default=[], metavar="FILE",
                   help="TOML file of run-config overrides (presets/*.toml); repeatable")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   dest="assignments", help="override one run-config key; repeatable")
    p.add_argument("--num-supernodes", type=int, default=None,
                   help="simulated clients (default: 10, or 1 with --centralized)")
    p.add_argument("--cpus-per-client", type=int, default=None,
                   help="CPU cores Ray reserves per client (default 1; all cores for a "
                        "single client)")
    _add_seeds(p, "the experiment")
    p.add_argument("--gpus-per-client", type=float, default=None,
                   help="GPUs per client: 0 (CPU only), a fraction in (0, 1] (a shared GPU, "
                        "memory capped at that fraction) or a whole number (default: 0.25 "
                        "when CUDA is present, else 0)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help="give up after this many seconds (default: a week)")
    _add_ray_address(p)
    p.add_argument("-v", "--verbose", action="store_true", help="show all Flower output")


def _add_ray_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                   help="run the clients on this Ray cluster (its head's `ray start --port`; "
                        f"default: ${RAY_ADDRESS_ENV} if set, else a private Ray on this "
                        "machine); the harness must run on a machine of the cluster")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulation", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one federated experiment in simulation")
    _add_run_arguments(run)
    run.add_argument("--centralized", action="store_true",
                     help="centralized baseline: one client with the whole training set")
    central = sub.add_parser("centralized", help="same as run --centralized")
    _add_run_arguments(central)
    sub.add_parser("keys", help="list every run-config key with its default")

    sweep = sub.add_parser("sweep", help="run a study (a grid of runs) and write its report")
    sweep.add_argument("study", choices=list(STUDIES))
    sweep.add_argument("--scale", choices=SCALES, default="cpu",
                       help="paper (GPU), cpu (minutes per cell on 2 cores) or toy (seconds)")
    sweep.add_argument("--out", default=None, metavar="DIR",
                       help=f"sweep root (default {DEFAULT_OUT}/<study>-<scale>)")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       dest="assignments", help="override a key in every cell, e.g. data.dir")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                       help="grid study only: an axis of the grid; repeatable")
    sweep.add_argument("--centralized", action="store_true",
                       help="grid study only: centralized cells (default: federated)")
    sweep.add_argument("--num-supernodes", type=int, default=10,
                       help="clients of federated cells (default 10)")
    sweep.add_argument("--cells", default=None, metavar="PATTERN,...",
                       help="run only the cells whose names match one of these shell patterns "
                            "(e.g. 'baseline-no-at,partition=classes-*'); default: all")
    _add_seeds(sweep, "every cell")
    sweep.add_argument("--cpus-per-client", type=int, default=None,
                       help="CPU cores per client (default 1; all cores for centralized "
                            "cells)")
    sweep.add_argument("--gpus-per-client", type=float, default=None,
                       help="as for run (default: 0.25 when CUDA is present, else 0)")
    sweep.add_argument("--attacks", default=HONEST_ATTACKS,
                       help=f"final evaluation attacks on the model (default {HONEST_ATTACKS})")
    sweep.add_argument("--noise-attacks", default=HONEST_NOISE_ATTACKS,
                       help="final evaluation attacks through the test-time noise (default "
                            f"{HONEST_NOISE_ATTACKS})")
    sweep.add_argument("--final-eval-limit", type=int, default=None, metavar="N",
                       help="test images of the final evaluation (default: per scale; 0 = all)")
    _add_no_diagnostics(sweep)
    _add_ray_address(sweep)
    sweep.add_argument("-v", "--verbose", action="store_true")

    evaluate = sub.add_parser("evaluate", help="evaluate a finished run's final model")
    evaluate.add_argument("run", help="the run folder (holds config.json and final.pt)")
    evaluate.add_argument("--attacks", default=HONEST_ATTACKS,
                          help=f"attacks on the model (noise level 0); any of {SPEC_SYNTAX}")
    evaluate.add_argument("--noise-attacks", default=HONEST_NOISE_ATTACKS,
                          help="attacks through the noise (noise levels > 0)")
    evaluate.add_argument("--noise-std", default="0", metavar="S1,S2",
                          help="test-time noise levels, comma-separated (default 0)")
    evaluate.add_argument("--noise-protocol", choices=NOISE_PROTOCOLS, default=None,
                          help="fresh: a new noise draw in every forward pass; fixed: one "
                               "draw per image that attacker and classifier share (default: "
                               "the run's eval.noise-protocol)")
    evaluate.add_argument("--eval-limit", type=int, default=None,
                          help="test images (default: the run's data.eval-limit; 0 = all)")
    evaluate.add_argument("--data-dir", default=None, help="override the run's data.dir")
    _add_no_diagnostics(evaluate)
    return parser


def _add_no_diagnostics(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-diagnostics", action="store_true",
                   help="skip the gradient-masking diagnostics of the final model(s) "
                        "(diagnostics.csv; docs/performance.md says what they cost)")


def _resources(args, centralized: bool) -> Resources:
    n = args.num_supernodes or (1 if centralized else 10)
    if n < 1:
        raise UsageError(f"--num-supernodes must be >= 1, got {n}")
    if centralized and n != 1:
        raise UsageError("the centralized baseline runs exactly one supernode; drop "
                         "--num-supernodes or leave out --centralized")
    return Resources.for_clients(n, _cpus_per_client(args), _gpus_per_client(args))


def _ray_address(args) -> str | None:
    """The Ray cluster to run on (--ray-address, else $RAY_ADDRESS), checked; None: a
    private Ray on this machine."""
    address = cluster_address(args.ray_address)
    if address:
        check_ray_address(address, "--ray-address" if args.ray_address else RAY_ADDRESS_ENV)
    return address


def _gpus_per_client(args) -> float:
    import torch

    gpus = args.gpus_per_client
    if gpus is None:
        return 0.25 if torch.cuda.is_available() else 0.0
    if not valid_gpu_share(gpus):
        raise UsageError(f"--gpus-per-client must be {GPU_SHARE_RULE}; got {gpus:g}")
    if gpus > 0 and not torch.cuda.is_available() and not cluster_address(args.ray_address):
        # Ray would wait forever for GPUs to place the clients on.
        raise UsageError(f"--gpus-per-client {gpus:g} but this machine has no CUDA GPU "
                         "(and no --ray-address or RAY_ADDRESS names a Ray cluster); use "
                         "--gpus-per-client 0")
    return gpus


def _cpus_per_client(args) -> int | None:
    if args.cpus_per_client is not None and args.cpus_per_client < 1:
        raise UsageError(f"--cpus-per-client must be >= 1, got {args.cpus_per_client}")
    return args.cpus_per_client


def _seed_runs(cfg, seeds: int, resources: Resources) -> list[tuple]:
    """(seed, config, skip) of each seed of a run, all checked before the first
    starts. With resume=true and several seeds, a finished seed is skipped, one with a
    checkpoint continues and one without starts afresh."""
    if seeds > 1 and cfg.resume_from:
        raise UsageError("resume-from names one run's checkpoint; with --seeds use "
                         "--set resume=true, which continues every seed from its own folder")
    runs = []
    for seed in seed_values(cfg.seed, seeds):
        seed_cfg = seeded(cfg, seed)
        state = cell_state(seed_cfg) if seeds > 1 and cfg.resume else None
        if state == "new":  # never started: resume=true would find no checkpoint
            seed_cfg = seed_cfg.replace(resume=False)
        if state != "finished":
            check_split(seed_cfg, resources.num_supernodes)  # the split is drawn from it
            RunStore.locate(seed_cfg)  # existing results, a wrong checkpoint: refused now
        runs.append((seed, seed_cfg, state == "finished"))
    return runs


def cmd_run(args, centralized: bool) -> int:
    check_seeds(args.seeds)
    cfg = build_config(args.preset, args.assignments, centralized)
    resources = _resources(args, centralized)
    ray_address = _ray_address(args)
    if cfg.fl.min_nodes > resources.num_supernodes:
        raise UsageError(f"fl.min-nodes={cfg.fl.min_nodes} is more than the "
                         f"{resources.num_supernodes} simulated supernodes; lower it or add "
                         "--num-supernodes")
    runs = _seed_runs(cfg, args.seeds, resources)
    label = "centralized" if centralized else f"{resources.num_supernodes} clients"
    finished, statuses = {}, []  # finished: seed -> its rounds
    for seed, seed_cfg, skip in runs:
        name = label + (f", seed {seed}" if args.seeds > 1 else "")
        if skip:
            print(f"[{name}] finished earlier: skipped", flush=True)
            finished[seed] = RunStore.of(seed_cfg).rounds()
            statuses.append("finished")
            continue
        outcome = run_experiment(seed_cfg, resources, args.verbose, args.timeout, name,
                                 ray_address)
        if not outcome.rounds.empty:
            shown = [c for c in SUMMARY_COLUMNS if c in outcome.rounds]
            print(outcome.rounds[shown].to_string(index=False, float_format="%.3f"))
        if outcome.status == "finished":
            finished[seed] = outcome.rounds
        print(f"status: {outcome.status}"
              f"{' (' + outcome.reason + ')' if outcome.reason else ''}")
        print(f"results: {outcome.root}")
        statuses.append(outcome.status)
        if outcome.status != "finished":
            break  # the next seeds would most likely fail the same way
    if finished:
        print(seed_summary(finished))
    if len(statuses) < len(runs):
        print(f"not run: seeds {', '.join(str(s) for s, *_ in runs[len(statuses):])}",
              file=sys.stderr)
    return 0 if statuses == ["finished"] * len(runs) else 1


def seed_summary(rounds_by_seed: dict[int, pd.DataFrame]) -> str:
    """The last evaluated round's accuracies of each seed and their 95% interval: over the
    seeds (Student t), or with one seed over its evaluation images (Wilson)."""
    last = {s: r.dropna(subset=["natural_acc"]).iloc[-1] for s, r in rounds_by_seed.items()
            if "natural_acc" in r and r["natural_acc"].notna().any()}
    if not last:
        return "no evaluated round to summarize"
    frame = pd.DataFrame(last).T
    metrics = [c for c in SUMMARY_COLUMNS if c.endswith("_acc") and c in frame]
    examples = frame["eval_examples"].iloc[0] if "eval_examples" in frame else None
    rows = []
    for metric in metrics:
        values = frame[metric].astype(float)
        row = {"metric": metric, **{f"seed {s}": f"{100 * v:.1f}" for s, v in values.items()}}
        row["95% interval"] = format_interval(over_seeds(values.tolist(), examples))
        rows.append(row)
    kind = (f"mean ± 95% interval over {len(last)} seeds" if len(last) > 1 else
            "one seed: [95% Wilson interval over its evaluation images]")
    return (f"last evaluated round, accuracies in % ({kind}):\n"
            + pd.DataFrame(rows).to_string(index=False))


def cmd_keys() -> int:
    for key, default, help_text in describe():
        print(f"{key:<26} {default!r:<24} {help_text}")
    return 0


def cmd_sweep(args) -> int:
    extra = {}
    for text in args.assignments:
        key, value = parse_assignment(text)
        extra[key] = value
    extra = absolutize_paths(extra)
    _check_attacks(args)
    check_seeds(args.seeds)
    study = STUDIES[args.study]
    cells = study.cells(Scope(args.scale, args.num_supernodes, tuple(args.grid),
                              args.centralized))
    if args.cells is not None:
        cells = select_cells(cells, args.cells)
    folder = Path(args.out).expanduser().resolve() if args.out else \
        DEFAULT_OUT / f"{args.study}-{args.scale}"
    gpus = _gpus_per_client(args)
    ray_address = _ray_address(args)
    where = f" on the Ray cluster at {ray_address}" if ray_address else ""
    seeds = f" x {args.seeds} seeds" if args.seeds > 1 else ""
    print(f"{args.study} study at {args.scale} scale: {len(cells)} cells{seeds}{where} -> "
          f"{folder}", flush=True)
    outcomes = run_sweep(args.study, cells, folder, extra, _cpus_per_client(args), gpus,
                         args.verbose, ray_address, args.seeds)
    print("final evaluation of every finished cell ...", flush=True)
    limit = args.final_eval_limit if args.final_eval_limit is not None else \
        FINAL_EVAL_LIMIT[args.scale]
    final = FinalEval(args.attacks, args.noise_attacks, limit, study.noise_levels,
                      diagnostics=not args.no_diagnostics)
    evaluate_runs(outcomes, final)
    report = write_report(study, outcomes, folder, final)
    print(f"report: {report / 'tables.md'}")
    unfinished = [o.cell.name + (f" (seed {o.seed})" if args.seeds > 1 else "")
                  for o in outcomes if o.status != "finished"]
    if unfinished:
        print(f"not finished: {', '.join(unfinished)}; run the same command again to "
              "resume them", file=sys.stderr)
        return 1
    return 0


def _check_attacks(args) -> None:
    """--attacks and --noise-attacks, before any work (a sweep evaluates them at its end)."""
    for spec in (args.attacks, args.noise_attacks):
        try:
            parse_attacks(spec)
        except ValueError as exc:
            raise UsageError(str(exc)) from None


def cmd_evaluate(args) -> int:
    try:
        levels = [float(s) for s in args.noise_std.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--noise-std expects numbers like 0,0.05, got {args.noise_std!r}")
    _check_attacks(args)
    run = Path(args.run).expanduser().resolve()
    store = RunStore(run)
    if not store.final_path.is_file():
        raise UsageError(f"{run} has no {store.final_path.name}: the run has not finished")
    frame = evaluate_run(run, levels, args.attacks, args.eval_limit, args.data_dir,
                         args.noise_attacks, args.noise_protocol)
    print(frame.drop(columns=["attacks"]).to_string(index=False, float_format="%.3f"))
    print(f"saved: {store.final_eval_csv}")
    if not args.no_diagnostics:
        checks = diagnose_run(run, eval_limit=args.eval_limit, data_dir=args.data_dir)
        print(checks[["check", "passed", "explanation"]].to_string(index=False))
        print(f"saved: {store.diagnostics_csv}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Ctrl-C, `kill`, a closed terminal and a scheduler's time limit all stop every process
    # the harness started, record the run as stopped and exit with 128 + the signal.
    with stop_signals():
        try:
            if args.command == "keys":
                return cmd_keys()
            if args.command in ("run", "centralized"):
                return cmd_run(args, centralized=args.command == "centralized" or
                               args.centralized)
            if args.command == "sweep":
                return cmd_sweep(args)
            if args.command == "evaluate":
                return cmd_evaluate(args)
        except USER_ERRORS as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            hint = ("run the same command again: finished cells are kept, the interrupted "
                    "one continues from its checkpoint") if args.command == "sweep" else \
                ("continue with the same command plus --set resume=true (or without it if "
                 "no round had finished)")
            with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
                print(f"{stop_reason(exc)}; {hint}", file=sys.stderr)
            return 128 + stop_signal(exc)
    return 2
