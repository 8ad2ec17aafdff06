"""Evaluate a finished run's models with the honest attack suite on the test set.

Training-time evaluation uses cheap attacks; the report needs strong ones (PGD-50 with
restarts, EOT-PGD through the noise, C&W, DeepFool; AutoAttack on request) and several
test-time noise levels. This runs them once per run, model and noise level and caches the
rows in <run>/final_eval.csv, each with the noise protocol and the other settings it was
computed with. The models: `final` (final.pt, the last round) and, when the run selected one
on its validation split, `best` (best.pt); the test set only measures them, it selects nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from common import protocol, results
from common.config import ExperimentConfig
from common.data import load_cifar10
from common.device import server_device
from common.eval_sets import test_subset
from common.evaluation import NOISE_PROTOCOLS, EvalSettings, evaluate, parse_attacks
from common.models import model_from_config
from common.run_folder import RunStore

# Against the plain model: the strong white-box attacks. Through the test-time noise: the
# paper's protocol (FGSM), the same PGD, and the adaptive EOT-PGD that averages the noise.
HONEST_ATTACKS = "fgsm,pgd20,pgd50x5,cw20,deepfool"
HONEST_NOISE_ATTACKS = "fgsm,pgd20,eot-pgd20"
FINAL_ROUND_TAG = 10_000  # keeps the post-hoc evaluation's seed apart from the rounds'


def _tag_old_rows(done: pd.DataFrame, cfg: ExperimentConfig) -> pd.DataFrame:
    """Rows cached before the `model` column existed all measured final.pt: say so."""
    if done.empty:
        return done
    done = done.copy()
    untagged = done["model"].isna() if "model" in done else pd.Series(True, index=done.index)
    done.loc[untagged, "model"] = "final"
    done.loc[untagged, "model_round"] = cfg.fl.num_rounds
    return done


@dataclass(frozen=True)
class FinalEval:
    """The final evaluation a sweep runs on every finished run and its report reads back:
    the attacks on the plain model and through the noise, the test images (None: each run's
    data.eval-limit; 0: all), the test-time noise levels besides 0 and the run's own, and
    whether the gradient-masking diagnostics of the final model run too."""

    attacks: str = HONEST_ATTACKS
    noise_attacks: str = HONEST_NOISE_ATTACKS
    eval_limit: int | None = None
    noise_levels: tuple[float, ...] = ()
    diagnostics: bool = True

    def levels(self, cfg: ExperimentConfig) -> list[float]:
        """The noise levels a run is evaluated at: 0, its own eval.noise-std, the study's."""
        return sorted({0.0, cfg.eval.noise_std, *self.noise_levels})


@dataclass(frozen=True)
class _Request:
    """The rows one evaluation of a run asks for, and which cached rows are those rows."""

    cfg: ExperimentConfig
    models: dict[str, int]  # model -> the round it comes from
    attacks: str
    noise_attacks: str
    limit: int
    noise_protocol: str

    @classmethod
    def of(cls, store: RunStore, attacks: str, eval_limit: int | None, noise_attacks: str,
           noise_protocol: str | None) -> _Request:
        cfg = store.config()
        protocol_name = noise_protocol or cfg.eval.noise_protocol
        if protocol_name not in NOISE_PROTOCOLS:
            raise ValueError(f"noise protocol {protocol_name!r}: write one of "
                             f"{', '.join(NOISE_PROTOCOLS)}")
        return cls(cfg, store.saved_models(cfg), attacks, noise_attacks,
                   cfg.data.eval_limit if eval_limit is None else eval_limit, protocol_name)

    def spec(self, sigma: float, model: str = "final") -> dict:
        """The settings that define a row: its cache key."""
        cfg = self.cfg
        return {"noise_std": sigma, "attacks": self.attacks if sigma == 0 else
                self.noise_attacks, "eval_limit": self.limit,
                "noise_protocol": "none" if sigma == 0 else self.noise_protocol,
                "noise_draws": cfg.eval.noise_draws, "square_queries": cfg.eval.square_queries,
                "model": model, "model_round": self.models[model]}

    def cached(self, done: pd.DataFrame, sigma: float, model: str) -> pd.Series:
        if done.empty or not set(self.spec(sigma, model)) <= set(done.columns):
            return pd.Series(False, index=done.index)  # rows from before a key existed
        return pd.concat([done[k] == v for k, v in self.spec(sigma, model).items()],
                         axis=1).all(axis=1)

    def missing(self, done: pd.DataFrame, levels: list[float]) -> list[tuple[str, float]]:
        return [(model, s) for model in self.models for s in levels
                if not self.cached(done, s, model).any()]

    def select(self, done: pd.DataFrame, levels: list[float]) -> pd.DataFrame:
        keep = pd.concat([self.cached(done, s, m) for s in levels for m in self.models],
                         axis=1).any(axis=1)
        return done[keep].reset_index(drop=True)


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
    store = RunStore(run)
    request = _Request.of(store, attacks, eval_limit, noise_attacks, noise_protocol)
    cfg, models = request.cfg, request.models
    cache = store.final_eval_csv
    done = _tag_old_rows(results.read_csv(cache), cfg)
    keys = list(request.spec(0.0))
    test_set = None
    for model in models:
        wanted = [s for s in noise_levels if not request.cached(done, s, model).any()]
        if not wanted:
            continue
        if model == "best" and models["best"] == models["final"]:
            # The same round's model: its rows are the final rows (evaluated just above).
            rows = [{**done[request.cached(done, s, "final")].iloc[0].to_dict(),
                     **request.spec(s, "best")} for s in wanted]
        else:
            if test_set is None:
                test_set = final_test_images(cfg, request.limit, data_dir)
            rows = _evaluate_model(cfg, store.model_state(model), test_set, wanted,
                                   lambda s, m=model: request.spec(s, m),
                                   request.noise_protocol)
        if not done.empty:  # the old rows, tagged, before any new row joins them
            if not set(keys) <= set(done.columns):
                # Rows from before a key existed stay, never matched: their convention was
                # older.
                done = done.reindex(columns=[*keys, *done.columns.difference(keys)])
            results.write_csv(cache, done)
        done = results.upsert_rows(cache, rows, keys=keys)
    return request.select(done, noise_levels)


def evaluated_rows(run: Path, noise_levels: list[float], attacks: str = HONEST_ATTACKS,
                   eval_limit: int | None = None, noise_attacks: str = HONEST_NOISE_ATTACKS,
                   noise_protocol: str | None = None) -> pd.DataFrame:
    """The rows evaluate_run returns, read from <run>/final_eval.csv without evaluating
    anything: a row it does not hold yet is an error (the sweep evaluates first)."""
    store = RunStore(run)
    request = _Request.of(store, attacks, eval_limit, noise_attacks, noise_protocol)
    done = _tag_old_rows(results.read_csv(store.final_eval_csv), request.cfg)
    missing = request.missing(done, noise_levels)
    if missing:
        raise ValueError(f"{store.final_eval_csv} holds no rows of "
                         + ", ".join(f"{m} at noise {s:g}" for m, s in missing)
                         + f" for attacks {attacks!r} / {noise_attacks!r}: evaluate the run "
                         "first (a sweep does; or `python -m simulation evaluate`)")
    return request.select(done, noise_levels)


def final_test_images(cfg: ExperimentConfig, limit: int, data_dir: str | None):
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
