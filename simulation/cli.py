"""Command line: python -m simulation {run,centralized,keys,sweep,report} ..."""

from __future__ import annotations

import argparse
import sys

from common.config import ConfigError, describe
from common.data import DataError
from common.partition import PartitionError
from server.store import RunStoreError

from .engine import EngineError
from .overrides import UsageError, build_config
from .runner import DEFAULT_TIMEOUT, Resources, run_experiment

USER_ERRORS = (ConfigError, DataError, PartitionError, RunStoreError, UsageError, EngineError)

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
    p.add_argument("--cpus-per-client", type=int, default=1,
                   help="CPU cores Ray reserves per client (default 1)")
    p.add_argument("--gpus-per-client", type=float, default=None,
                   help="GPU fraction per client (default: 0.25 when CUDA is present, else 0)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help="give up after this many seconds (default: a week)")
    p.add_argument("-v", "--verbose", action="store_true", help="show all Flower output")


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
    return parser


def _resources(args, centralized: bool) -> Resources:
    import torch

    n = args.num_supernodes or (1 if centralized else 10)
    if n < 1:
        raise UsageError(f"--num-supernodes must be >= 1, got {n}")
    if centralized and n != 1:
        raise UsageError("the centralized baseline runs exactly one supernode; drop "
                         "--num-supernodes or leave out --centralized")
    gpus = args.gpus_per_client
    if gpus is None:
        gpus = 0.25 if torch.cuda.is_available() else 0.0
    return Resources(n, args.cpus_per_client, gpus)


def cmd_run(args, centralized: bool) -> int:
    cfg, overrides = build_config(args.preset, args.assignments, centralized)
    resources = _resources(args, centralized)
    if cfg.fl.min_nodes > resources.num_supernodes:
        raise UsageError(f"fl.min-nodes={cfg.fl.min_nodes} is more than the "
                         f"{resources.num_supernodes} simulated supernodes; lower it or add "
                         "--num-supernodes")
    label = "centralized" if centralized else f"{resources.num_supernodes} clients"
    outcome = run_experiment(cfg, overrides, resources, args.verbose, args.timeout, label)
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "keys":
            return cmd_keys()
        if args.command in ("run", "centralized"):
            return cmd_run(args, centralized=args.command == "centralized" or args.centralized)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with --set resume=true", file=sys.stderr)
        return 130
    return 2
