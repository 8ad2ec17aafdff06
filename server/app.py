"""ServerApp: federated adversarial training with a shared data pool.

The run config is validated and the output folder prepared before anything else, so bad
input fails in the first second with a message that names it; the shared pool G and the
central evaluation subset come from the server's own copy of CIFAR-10.
"""

from __future__ import annotations

import traceback
from logging import ERROR, INFO

import torch
from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from common.data import load_cifar10
from common.models import build_model
from common.packing import Layout
from common.partition import split_for

from .central import CentralEvaluator
from .rounds import run_rounds
from .store import RunStore, check_config
from .strategy import make_strategy

app = ServerApp()


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = check_config(dict(context.run_config))
    store, resume = RunStore.open(cfg)
    log(INFO, "RobustFL run %s -> %s", cfg.run_name(), store.root)
    try:
        data = load_cifar10(cfg.data.dir, download=cfg.data.download)
        plan = split_for(cfg, data.train_y.numpy(), num_partitions=1)  # G only
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model.activation, cfg.model.width, cfg.model.variant)
        strategy = make_strategy(cfg, data.train_x.numpy(), data.train_y.numpy(), plan,
                                 Layout.of(model.state_dict()))
        log(INFO, "Aggregation: %s; shared pool G: %d images, %d per client share",
            type(strategy).__name__, plan.shared.size,
            int(round(cfg.fl.shared_share * plan.shared.size)))
        evaluator = CentralEvaluator(cfg, data, device())
        if resume:
            start_round, state = resume.next_round, resume.state_dict
            log(INFO, "Resuming at round %d from %s", start_round, store.checkpoint_path)
        else:
            start_round, state = 1, model.state_dict()
        store.set_status("running", start_round - 1)
        arrays = run_rounds(grid, cfg, store, strategy, evaluator, start_round,
                            strategy.to_arrays(state))
        if store.status().get("status") == "running":
            store.save_final(strategy.to_state(arrays))
            store.set_status("finished", cfg.fl.num_rounds)
            log(INFO, "Run finished: results in %s", store.root)
    except BaseException as exc:
        store.set_status("failed", _last_round(store), f"{type(exc).__name__}: {exc}")
        log(ERROR, "Run failed: %s\n%s", exc, traceback.format_exc())
        raise


def _last_round(store: RunStore) -> int:
    return int(store.status().get("last_round", 0))
