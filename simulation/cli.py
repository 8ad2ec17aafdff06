"""Command line: python -m simulation {run,centralized,keys,sweep,report} ..."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from common.config import ConfigError, describe
from common.data import DataError
from common.device import GPU_SHARE_RULE, valid_gpu_share
from common.evaluation import NOISE_PROTOCOLS, SPEC_SYNTAX, parse_attacks
from common.partition import PartitionError
from server.store import RunStoreError

from .engine import RAY_ADDRESS_ENV, EngineError, check_ray_address, cluster_address
from .final_eval import HONEST_ATTACKS, HONEST_NOISE_ATTACKS, evaluate_run
from .overrides import UsageError, absolutize_paths, build_config, parse_assignment
from .procs import stop_reason, stop_signal, stop_signals
from .report import write_report
from .runner import DEFAULT_TIMEOUT, Resources, run_experiment
from .studies import FINAL_EVAL_LIMIT, SCALES, STUDIES, study_cells
from .sweep import DEFAULT_OUT, run_sweep

USER_ERRORS = (ConfigError, DataError, PartitionError, RunStoreError, UsageError, EngineError,
               FileNotFoundError)

SUMMARY_COLUMNS = ("round", "natural_acc", "fgsm_acc", "pgd10_acc", "pgd20_acc",
                   "natural_noise_acc", "fgsm_noise_acc", "clients_ok", "clients_failed",
                   "round_seconds")


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
    sweep.add_argument("study", choices=STUDIES)
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
    return parser


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


def cmd_run(args, centralized: bool) -> int:
    cfg, overrides = build_config(args.preset, args.assignments, centralized)
    resources = _resources(args, centralized)
    ray_address = _ray_address(args)
    if cfg.fl.min_nodes > resources.num_supernodes:
        raise UsageError(f"fl.min-nodes={cfg.fl.min_nodes} is more than the "
                         f"{resources.num_supernodes} simulated supernodes; lower it or add "
                         "--num-supernodes")
    label = "centralized" if centralized else f"{resources.num_supernodes} clients"
    outcome = run_experiment(cfg, overrides, resources, args.verbose, args.timeout, label,
                             ray_address)
    if not outcome.rounds.empty:
        shown = [c for c in SUMMARY_COLUMNS if c in outcome.rounds]
        print(outcome.rounds[shown].to_string(index=False, float_format="%.3f"))
    print(f"status: {outcome.status}{' (' + outcome.reason + ')' if outcome.reason else ''}")
    print(f"results: {outcome.root}")
    return 0 if outcome.status == "finished" else 1


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
    cells = study_cells(args.study, args.scale, args.grid, args.centralized,
                        args.num_supernodes)
    folder = Path(args.out).expanduser().resolve() if args.out else \
        DEFAULT_OUT / f"{args.study}-{args.scale}"
    gpus = _gpus_per_client(args)
    ray_address = _ray_address(args)
    where = f" on the Ray cluster at {ray_address}" if ray_address else ""
    print(f"{args.study} study at {args.scale} scale: {len(cells)} cells{where} -> {folder}",
          flush=True)
    outcomes = run_sweep(args.study, cells, folder, extra, _cpus_per_client(args), gpus,
                         args.verbose, ray_address)
    print("final evaluation of every finished cell ...", flush=True)
    limit = args.final_eval_limit if args.final_eval_limit is not None else \
        FINAL_EVAL_LIMIT[args.scale]
    report = write_report(args.study, outcomes, folder, attacks=args.attacks,
                          noise_attacks=args.noise_attacks, eval_limit=limit)
    print(f"report: {report / 'tables.md'}")
    unfinished = [cell.name for cell, _, status in outcomes if status != "finished"]
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
    if not (run / "final.pt").is_file():
        raise UsageError(f"{run} has no final.pt: the run has not finished")
    frame = evaluate_run(run, levels, args.attacks, args.eval_limit, args.data_dir,
                         args.noise_attacks, args.noise_protocol)
    print(frame.drop(columns=["attacks"]).to_string(index=False, float_format="%.3f"))
    print(f"saved: {run / 'final_eval.csv'}")
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
