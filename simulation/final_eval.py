"""Evaluate a finished run's final model with the honest attack suite, after training.

Training-time evaluation uses cheap attacks; the report needs strong ones (PGD-50 with
restarts, EOT-PGD through the noise, C&W, DeepFool; AutoAttack on request) and several
test-time noise levels. This runs them once per run and noise level and caches the rows in
<run>/final_eval.csv, each with the noise protocol and the other settings it was computed with.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import torch

from common import protocol, results
from common.config import ExperimentConfig
from common.data import load_cifar10
from common.evaluation import NOISE_PROTOCOLS, EvalSettings, evaluate, parse_attacks
from common.models import build_model
from common.partition import eval_indices

# Against the plain model: the strong white-box attacks. Through the test-time noise: the
# paper's protocol (FGSM), the same PGD, and the adaptive EOT-PGD that averages the noise.
HONEST_ATTACKS = "fgsm,pgd20,pgd50x5,cw20,deepfool"
HONEST_NOISE_ATTACKS = "fgsm,pgd20,eot-pgd20"
FINAL_ROUND_TAG = 10_000  # keeps the post-hoc evaluation's seed apart from the rounds'


def load_run_config(run: Path) -> ExperimentConfig:
    path = run / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run} has no config.json; is it a RobustFL run folder?")
    return ExperimentConfig.from_flat(json.loads(path.read_text())["config"])


def evaluate_run(run: Path, noise_levels: list[float], attacks: str = HONEST_ATTACKS,
                 eval_limit: int | None = None, data_dir: str | None = None,
                 noise_attacks: str = HONEST_NOISE_ATTACKS,
                 noise_protocol: str | None = None) -> pd.DataFrame:
    """Rows (one per noise level) of accuracies of <run>/final.pt; cached per level.

    Noise level 0 is attacked with `attacks`, every other level with `noise_attacks`
    through the noise-injected model, under `noise_protocol` (default: the run's
    eval.noise-protocol). Each row names the settings it was computed with; a cached row
    is reused only when all of them match.
    """
    cfg = load_run_config(run)
    cache = run / "final_eval.csv"
    done = results.read_csv(cache)
    limit = cfg.data.eval_limit if eval_limit is None else eval_limit
    protocol_name = noise_protocol or cfg.eval.noise_protocol
    if protocol_name not in NOISE_PROTOCOLS:
        raise ValueError(f"noise protocol {protocol_name!r}: write one of "
                         f"{', '.join(NOISE_PROTOCOLS)}")

    def spec(sigma: float) -> dict:
        """The settings that define a row: its cache key."""
        return {"noise_std": sigma, "attacks": attacks if sigma == 0 else noise_attacks,
                "eval_limit": limit,
                "noise_protocol": "none" if sigma == 0 else protocol_name,
                "noise_draws": cfg.eval.noise_draws, "square_queries": cfg.eval.square_queries}

    def cached(sigma: float):
        if done.empty or not set(spec(sigma)) <= set(done.columns):
            return pd.Series(False, index=done.index)  # rows from before a key existed
        return pd.concat([done[k] == v for k, v in spec(sigma).items()], axis=1).all(axis=1)

    wanted = [s for s in noise_levels if not cached(s).any()]
    if wanted:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        data = load_cifar10(data_dir or cfg.data.dir, download=cfg.data.download)
        idx = torch.from_numpy(eval_indices(data.test_y.numpy(), limit, cfg.seed))
        images, labels = data.test_x[idx].to(device), data.test_y[idx].to(device)
        model = build_model(cfg.model.activation, cfg.model.width, cfg.model.variant)
        model.load_state_dict(torch.load(run / "final.pt", map_location="cpu",
                                         weights_only=True))
        model.to(device)
        rows = []
        for sigma in wanted:
            started = time.perf_counter()
            settings = EvalSettings.from_config(
                cfg.eval, attacks=parse_attacks(spec(sigma)["attacks"]), noise_std=sigma,
                noise_protocol=protocol_name,
                plain=sigma == 0)  # the sigma = 0 row holds those
            acc = evaluate(model, images, labels, settings,
                           seed=protocol.eval_seed(cfg.seed, FINAL_ROUND_TAG))
            rows.append({**spec(sigma), **acc, "seconds": time.perf_counter() - started})
        keys = list(spec(0.0))
        if not done.empty and not set(keys) <= set(done.columns):
            # Rows from before a key existed stay, never matched: their convention was older.
            results.write_csv(cache, done.reindex(columns=[*keys, *done.columns.difference(keys)]))
        done = results.upsert_rows(cache, rows, keys=keys)
    keep = pd.concat([cached(s) for s in noise_levels], axis=1).any(axis=1)
    return done[keep].reset_index(drop=True)
