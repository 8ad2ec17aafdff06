"""ServerApp: federated adversarial training with a shared data pool.

The run config is validated and the output folder prepared before anything else, so bad
input fails in the first second with a message that names it; the shared pool G and the
central evaluation subset come from the server's own copy of CIFAR-10.
"""

from __future__ import annotations

import traceback
from logging import ERROR, INFO, WARNING

import torch
from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from common.config import ConfigError, ExperimentConfig
from common.data import load_cifar10
from common.device import server_device
from common.footprint import check_fits
from common.models import model_from_config
from common.packing import Layout
from common.partition import shared_plan
from common.run_folder import RunStore

from .central import CentralEvaluator
from .finetune import server_finetune
from .rounds import RunStopped, run_rounds
from .strategy import make_strategy

app = ServerApp()


def device() -> torch.device:
    return server_device()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = check_config(dict(context.run_config))
    check_fits(cfg)  # before the run folder is touched
    store, resume = RunStore.open(cfg)
    log(INFO, "RobustFL run %s -> %s", cfg.run_name(), store.root)
    try:
        data = load_cifar10(cfg.data.dir, download=cfg.data.download)
        plan = shared_plan(cfg, data.train_y.numpy())
        torch.manual_seed(cfg.seed)
        model = model_from_config(cfg)
        strategy = make_strategy(cfg, data.train_x.numpy(), data.train_y.numpy(), plan,
                                 Layout.of(model.state_dict()))
        log(INFO, "Aggregation: %s; shared pool G: %d images, %d per client share; "
            "sharing: %s", strategy.name, plan.shared.size,
            int(round(cfg.fl.shared_share * plan.shared.size)), cfg.fl.sharing)
        evaluator = CentralEvaluator(cfg, data, device())
        finetune = server_finetune(cfg, data.train_x, data.train_y, plan, device())
        if resume:
            start_round, state = resume.next_round, resume.state_dict
            if start_round > cfg.fl.num_rounds:
                log(INFO, "All %d rounds are in %s; finishing the run", cfg.fl.num_rounds,
                    store.checkpoint_path)
            else:
                log(INFO, "Resuming at round %d from %s", start_round, store.checkpoint_path)
        else:
            start_round, state = 1, model.state_dict()
        store.set_status("running", start_round - 1)
        arrays = run_rounds(grid, cfg, store, strategy, evaluator, start_round,
                            strategy.to_arrays(state), finetune)
        store.save_final(strategy.to_state(arrays))
        store.set_status("finished", cfg.fl.num_rounds)
        log(INFO, "Run finished: results in %s", store.root)
    except RunStopped as exc:
        # status.json already says "stopped" with the reason; raising makes Flower list
        # the run as failed rather than completed.
        log(WARNING, "Run stopped: %s. Results so far are in %s; continue it with "
            "resume=true", exc, store.root)
        raise
    except BaseException as exc:
        store.set_status("failed", _last_round(store), f"{type(exc).__name__}: {exc}")
        log(ERROR, "Run failed: %s\n%s", exc, traceback.format_exc())
        raise


def check_config(flat: dict) -> ExperimentConfig:
    """Parse the run config, re-raising with a pointer to where keys are documented."""
    try:
        return ExperimentConfig.from_flat(flat)
    except ConfigError as exc:
        raise ConfigError(f"{exc}\n(keys and defaults: pyproject.toml [tool.flwr.app.config]"
                          " or `python -m simulation keys`)") from None


def _last_round(store: RunStore) -> int:
    return int(store.status().get("last_round", 0))
