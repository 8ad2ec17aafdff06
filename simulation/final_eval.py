"""Evaluate a finished run's models with the honest attack suite on the test set.

Training-time evaluation uses cheap attacks; the report needs strong ones (PGD-50 with
restarts, EOT-PGD through the noise, C&W, DeepFool; AutoAttack on request) and several
test-time noise levels. This runs them once per run, model and noise level and caches the
rows in <run>/final_eval.csv, each with the noise protocol and the other settings it was
computed with. The models: `final` (final.pt, the last round) and, when the run selected one
on its validation split, `best` (best.pt); the test set only measures them, it selects nothing.
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
from common.device import server_device
from common.eval_sets import test_subset
from common.models import model_from_config

# Against the plain model: the strong white-box attacks. Through the test-time noise: the
# paper's protocol (FGSM), the same PGD, and the adaptive EOT-PGD that averages the noise.
HONEST_ATTACKS = "fgsm,pgd20,pgd50x5,cw20,deepfool"
HONEST_NOISE_ATTACKS = "fgsm,pgd20,eot-pgd20"
FINAL_ROUND_TAG = 10_000  # keeps the post-hoc evaluation's seed apart from the rounds'
MODELS = ("final", "best")


def load_run_config(run: Path) -> ExperimentConfig:
    path = run / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run} has no config.json; is it a RobustFL run folder?")
    return ExperimentConfig.from_flat(json.loads(path.read_text())["config"])


def run_models(run: Path, cfg: ExperimentConfig) -> dict[str, int]:
    """The models of a finished run to evaluate, with the round each comes from: `final`
    always, `best` when the run wrote best.pt (data.val-size > 0)."""
    models = {"final": cfg.fl.num_rounds}
    best = run / "best.pt"
    if best.is_file():
        models["best"] = int(_load_best(best)["round"])
    return models


def _load_best(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} cannot be read ({exc}); it is corrupt or not a RobustFL "
                         "best.pt: delete it to evaluate only final.pt") from None


def _state_dict(run: Path, model: str) -> dict[str, torch.Tensor]:
    if model == "best":
        return _load_best(run / "best.pt")["model"]
    return torch.load(run / "final.pt", map_location="cpu", weights_only=True)


def _tag_old_rows(done: pd.DataFrame, cfg: ExperimentConfig) -> pd.DataFrame:
    """Rows cached before the `model` column existed all measured final.pt: say so."""
    if done.empty:
        return done
    done = done.copy()
    untagged = done["model"].isna() if "model" in done else pd.Series(True, index=done.index)
    done.loc[untagged, "model"] = "final"
    done.loc[untagged, "model_round"] = cfg.fl.num_rounds
    return done


def evaluate_run(run: Path, noise_levels: list[float], attacks: str = HONEST_ATTACKS,
                 eval_limit: int | None = None, data_dir: str | None = None,
                 noise_attacks: str = HONEST_NOISE_ATTACKS,
                 noise_protocol: str | None = None) -> pd.DataFrame:
    """Rows (one per model and noise level) of accuracies of <run>/final.pt and, when the
    run selected one, <run>/best.pt; cached per model and level.

    Noise level 0 is attacked with `attacks`, every other level with `noise_attacks`
    through the noise-injected model, under `noise_protocol` (default: the run's
    eval.noise-protocol). Each row names the settings it was computed with, the model
    (`final` or `best`) and the round it comes from (`model_round`); a cached row is
    reused only when all of them match. When best.pt is the last round's model, its rows
    are the final rows, copied rather than evaluated twice.
    """
    cfg = load_run_config(run)
    cache = run / "final_eval.csv"
    done = _tag_old_rows(results.read_csv(cache), cfg)
    limit = cfg.data.eval_limit if eval_limit is None else eval_limit
    protocol_name = noise_protocol or cfg.eval.noise_protocol
    if protocol_name not in NOISE_PROTOCOLS:
        raise ValueError(f"noise protocol {protocol_name!r}: write one of "
                         f"{', '.join(NOISE_PROTOCOLS)}")
    models = run_models(run, cfg)

    def spec(sigma: float, model: str = "final") -> dict:
        """The settings that define a row: its cache key."""
        return {"noise_std": sigma, "attacks": attacks if sigma == 0 else noise_attacks,
                "eval_limit": limit,
                "noise_protocol": "none" if sigma == 0 else protocol_name,
                "noise_draws": cfg.eval.noise_draws, "square_queries": cfg.eval.square_queries,
                "model": model, "model_round": models[model]}

    def cached(sigma: float, model: str):
        if done.empty or not set(spec(sigma, model)) <= set(done.columns):
            return pd.Series(False, index=done.index)  # rows from before a key existed
        return pd.concat([done[k] == v for k, v in spec(sigma, model).items()],
                         axis=1).all(axis=1)

    keys = list(spec(0.0))
    test_set = None
    for model in models:
        wanted = [s for s in noise_levels if not cached(s, model).any()]
        if not wanted:
            continue
        if model == "best" and models["best"] == models["final"]:
            # The same round's model: its rows are the final rows (evaluated just above).
            rows = [{**done[cached(s, "final")].iloc[0].to_dict(), **spec(s, "best")}
                    for s in wanted]
        else:
            if test_set is None:
                test_set = _test_subset(cfg, limit, data_dir)
            rows = _evaluate_model(cfg, _state_dict(run, model), test_set, wanted,
                                   lambda s, m=model: spec(s, m), protocol_name)
        if not done.empty:  # the old rows, tagged, before any new row joins them
            if not set(keys) <= set(done.columns):
                # Rows from before a key existed stay, never matched: their convention was
                # older.
                done = done.reindex(columns=[*keys, *done.columns.difference(keys)])
            results.write_csv(cache, done)
        done = results.upsert_rows(cache, rows, keys=keys)
    keep = pd.concat([cached(s, m) for s in noise_levels for m in models],
                     axis=1).any(axis=1)
    return done[keep].reset_index(drop=True)


def _test_subset(cfg: ExperimentConfig, limit: int, data_dir: str | None):
    data = load_cifar10(data_dir or cfg.data.dir, download=cfg.data.download)
    subset = test_subset(cfg, data, server_device(), limit)
    return subset.images, subset.labels


def _evaluate_model(cfg: ExperimentConfig, state_dict: dict[str, torch.Tensor], test_set,
                    levels: list[float], spec, protocol_name: str) -> list[dict]:
    images, labels = test_set
    model = model_from_config(cfg)
    model.load_state_dict(state_dict)
    model.to(images.device)
    rows = []
    for sigma in levels:
        started = time.perf_counter()
        settings = EvalSettings.from_config(
            cfg.eval, attacks=parse_attacks(spec(sigma)["attacks"]), noise_std=sigma,
            noise_protocol=protocol_name,
            plain=sigma == 0)  # the sigma = 0 row holds those
        # One seed for every model: final and best face the same attack draws.
        acc = evaluate(model, images, labels, settings,
                       seed=protocol.eval_seed(cfg.seed, FINAL_ROUND_TAG))
        rows.append({**spec(sigma), **acc,
                     "eval_examples": int(labels.shape[0]),  # n of the report's intervals
                     "seconds": time.perf_counter() - started})
    return rows
