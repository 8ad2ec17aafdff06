"""The round loop: train, guard, aggregate, evaluate centrally, record, checkpoint.

It replaces Strategy.start, which cannot resume at a later round, waits for nodes without a
bound and keeps results only in memory.
"""

from __future__ import annotations

import math
import time
from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord
from flwr.common.logger import log
from flwr.serverapp import Grid

from common import progress_lines, protocol
from common.config import ExperimentConfig
from common.objectives import OverfitWatch
from common.run_folder import RunStore

from .central import CentralEvaluator
from .finetune import ServerFineTune
from .messaging import RoundReporter, exchange
from .nodes import NotEnoughNodes
from .strategy import SharedPool

LOSS_KEYS = ("train_loss", "clean_loss", "adv_loss", "noise_loss", "train_acc")


class RunStopped(RuntimeError):
    """The run ended early on purpose (status.json says "stopped", with this message as the
    reason, and every result is kept). Raised out of the ServerApp so that Flower marks the
    run failed instead of completed."""


def _weighted(rows: list[dict], key: str) -> float:
    ok = [r for r in rows if r["status"] == "ok"]
    total = sum(r["num_examples"] for r in ok)
    if not total:
        return math.nan
    return sum(r[key] * r["num_examples"] for r in ok) / total


def _progress_line(cfg: ExperimentConfig, rnd: int, row: dict, elapsed: float,
                   rounds_done: int) -> str:
    accs = " | ".join(f"{k[:-4]} {100 * v:.1f}%" for k, v in row.items()
                      if k.endswith("_acc") and k != "train_acc" and not math.isnan(v))
    remaining = cfg.fl.num_rounds - rnd
    eta = elapsed / max(rounds_done, 1) * remaining
    return progress_lines.round_end(
        rnd, cfg.fl.num_rounds,
        f"{accs or 'no evaluation this round'} | "
        f"{row['clients_ok']} ok, {row['clients_failed']} failed, "
        f"{row['clients_rejected']} rejected | {row['round_seconds']:.0f} s, "
        f"eta {eta / 60:.1f} min")


def run_rounds(grid: Grid, cfg: ExperimentConfig, store: RunStore, strategy: SharedPool,
               evaluator: CentralEvaluator, start_round: int, arrays: ArrayRecord,
               finetune: ServerFineTune | None = None) -> ArrayRecord:
    """Run rounds start_round..num_rounds (none when start_round > num_rounds: a resumed run
    that only needs finishing) and return the final global arrays. When nodes are missing
    for longer than fl.node-wait: status "stopped", then RunStopped. `finetune`
    (fl.sharing=server) trains each new aggregate on G before anything else sees it: the
    round's evaluation, its checkpoint and the next round's clients get the fine-tuned model."""
    if start_round > cfg.fl.num_rounds:
        recover_last_row(cfg, store, strategy, evaluator, arrays)
    started = time.perf_counter()
    watch = OverfitWatch.for_run(cfg, evaluator.images, evaluator.labels)  # fgsm-rs only
    if watch is not None:
        watch.resume(store.rounds(), start_round)
    for rnd in range(start_round, cfg.fl.num_rounds + 1):
        t0 = time.perf_counter()
        try:
            messages = strategy.configure_train(rnd, arrays, ConfigRecord({}), grid)
        except NotEnoughNodes as exc:
            log(WARNING, "Stopping the run before round %d: %s", rnd, exc)
            store.set_status("stopped", rnd - 1, str(exc))
            raise RunStopped(str(exc)) from None
        store.set_status("running", rnd - 1, phase=f"round {rnd}: training")
        replies, _ = exchange(grid, messages, timeout=cfg.fl.round_timeout,
                              reporter=RoundReporter(rnd, cfg.fl.num_rounds,
                                                     cfg.train.local_epochs))
        new_arrays, _, client_rows = strategy.aggregate_train(rnd, replies)
        server_seconds = 0.0
        if new_arrays is not None:
            arrays = new_arrays
            if finetune is not None:
                store.set_status("running", rnd - 1, phase=f"round {rnd}: fine-tuning on G")
                started_finetune = time.perf_counter()
                arrays = finetune(arrays, rnd)
                server_seconds = time.perf_counter() - started_finetune
        t_train = time.perf_counter() - t0

        federated = {}
        eval_messages = list(strategy.configure_evaluate(rnd, arrays, ConfigRecord({}), grid))
        if eval_messages:
            eval_replies, _ = exchange(grid, eval_messages, timeout=cfg.fl.round_timeout)
            aggregated = strategy.aggregate_evaluate(rnd, eval_replies)
            federated = {f"client_{k}": v for k, v in (aggregated or {}).items()
                         if k.endswith("_acc")}

        lr_start, lr_end = protocol.round_lr_range(cfg, rnd)
        row = {
            "round": rnd,
            **{f"{c}": math.nan for c in evaluator.columns},
            **{k: _weighted(client_rows, k) for k in LOSS_KEYS},
            **federated,
            "clients_sampled": len(messages),
            "clients_ok": sum(r["status"] == "ok" for r in client_rows),
            "clients_failed": sum(r["status"] in ("failed", "timeout") for r in client_rows),
            "clients_rejected": sum(r["status"] == "rejected" for r in client_rows),
            "shares_sent": sum(r["share_sent"] for r in client_rows),
            "lr_start": lr_start, "lr_end": lr_end,
            "train_seconds": t_train,
            **strategy.traffic,
            **({"server_train_seconds": server_seconds} if finetune is not None else {}),
        }
        state = strategy.to_state(arrays)
        if watch is not None:  # every round, evaluated or not: it collapses within an epoch
            row.update(watch(evaluator.model, state, protocol.eval_seed(cfg.seed, rnd)))
            if row["catastrophic_overfitting"]:
                log(WARNING, "Round %d: %s", rnd, watch.warning())
        if rnd % cfg.eval.every == 0 or rnd == cfg.fl.num_rounds:
            store.set_status("running", rnd - 1, phase=f"round {rnd}: evaluating")
            log(INFO, progress_lines.round_evaluating(
                rnd, cfg.fl.num_rounds, f"central evaluation ({cfg.eval.attacks})"))
            row.update(evaluator(state, rnd))
        row["round_seconds"] = time.perf_counter() - t0
        store.finish_round(cfg, row, client_rows, state)
        store.set_status("running", rnd)
        log(INFO, _progress_line(cfg, rnd, row, time.perf_counter() - started,
                                 rnd - start_round + 1))
    return arrays


def recover_last_row(cfg: ExperimentConfig, store: RunStore, strategy: SharedPool,
                     evaluator: CentralEvaluator, arrays: ArrayRecord) -> None:
    """The last round's row, if a kill lost it (runs of versions that wrote the checkpoint
    before the rows): its central evaluation again, from the checkpoint. Its training
    columns stay empty; they were only ever in the lost round's memory."""
    rnd = cfg.fl.num_rounds
    if store.has_round(rnd):
        return
    log(INFO, "Round %d has a checkpoint but no row: evaluating it again", rnd)
    lr_start, lr_end = protocol.round_lr_range(cfg, rnd)
    row = {"round": rnd, **evaluator(strategy.to_state(arrays), rnd),
           "lr_start": lr_start, "lr_end": lr_end}
    store.record_round(row, [])
