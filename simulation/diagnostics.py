"""Gradient-masking diagnostics (common/diagnostics.py) of a finished run's final model.

<run>/diagnostics.csv holds one row per model and check: model (`final`, or `best` on
request), check, passed, value and threshold (passed = value <= threshold), explanation (one
line), measured (the accuracies it rests on, JSON), then the settings it was computed with
(model_round, images, eps, step, noise_std, noise_protocol, eot_samples, noise_draws,
square_queries, eps_grid in 255ths, unbounded_eps, unbounded_steps, few_steps, many_steps) and
seconds (the model's whole diagnosis). A model's rows are reused until one of those settings
changes, then replaced. The report takes a flag column from them (`masking_flags`: "ok" or
the failed checks) and the accuracy-vs-eps curve of every cell.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from common import protocol, results
from common.diagnostics import DiagnosticSettings, diagnose, eps_curve, masking_flags
from common.evaluation import EvalSettings
from common.models import model_from_config
from common.run_folder import RunStore

from .final_eval import final_test_images

DIAGNOSTIC_TAG = 20_000  # keeps the diagnostics' attack seed apart from the evaluations'
CHECK_COLUMNS = ["model", "check", "passed", "value", "threshold", "explanation", "measured"]
EPS_COLUMN = "eps_sweep_acc@"  # the report's columns of the accuracy-vs-eps curve
FIGURE = "accuracy-vs-eps.png"
FLAG_NOTE = (
    "`masking_flags`: the gradient-masking diagnostics of each final model "
    "(`<run>/diagnostics.csv`; Carlini et al. 2019, Athalye et al. 2018): `ok`, or the checks "
    "it failed: `unbounded` (PGD at eps 0.5 leaves more than 5%), `eps_monotone` (PGD "
    "accuracy rises with eps), `steps_monotone` (PGD-100 weaker than PGD-10), `black_box` "
    "(Square, without gradients, stronger than white-box PGD), `eot_gap` (through fresh "
    "noise, EOT-PGD stronger than single-draw PGD). A flag means the gradient attacks may "
    "overstate robustness. `accuracy-vs-eps.png`: PGD-10 accuracy against eps per cell.")


def _settings_key(cfg, images: int, model: str, model_round: int,
                  checks: DiagnosticSettings) -> dict[str, Any]:
    """The settings that define a model's rows: their cache key."""
    e = cfg.eval
    fresh = e.noise_std > 0 and e.noise_protocol == "fresh"
    return {"model_round": model_round, "images": images, "eps": e.eps, "step": e.step,
            "noise_std": e.noise_std, "noise_protocol": e.noise_protocol if e.noise_std > 0
            else "none", "eot_samples": e.eot_samples if fresh else 0,
            "noise_draws": e.noise_draws if fresh else 0,
            "square_queries": checks.square_queries,
            "eps_grid": ",".join(f"{255 * x:g}" for x in checks.eps_grid),
            "unbounded_eps": checks.unbounded_eps, "unbounded_steps": checks.unbounded_steps,
            "few_steps": checks.few_steps, "many_steps": checks.many_steps}


def _matches(frame: pd.DataFrame, model: str, key: dict[str, Any]) -> bool:
    """Whether `frame` holds rows of `model` computed with exactly these settings."""
    if frame.empty or not set(key) | {"model"} <= set(frame.columns):
        return False
    rows = frame[frame["model"] == model]
    if rows.empty:
        return False
    for name, want in key.items():
        have = rows[name]
        if isinstance(want, float):  # a float read back from the CSV
            same = have.map(lambda v: isinstance(v, (int, float)) and math.isclose(
                v, want, rel_tol=1e-12, abs_tol=1e-15))
        else:
            same = have.astype(str) == str(want)
        if not same.all():
            return False
    return True


def _request(store: RunStore, model: str, eval_limit: int | None, images: int | None,
             checks: DiagnosticSettings | None):
    """The run's config, the images, the checks and the cache key of one model's rows."""
    cfg = store.config()
    models = store.saved_models(cfg)
    if model not in models:
        raise ValueError(f"{store.root} has no {model} model to diagnose (it has: "
                         f"{', '.join(models)})")
    limit = cfg.data.eval_limit if eval_limit is None else eval_limit
    count = images or cfg.eval.diagnostic_images
    if limit > 0:
        count = min(count, limit)  # a prefix of the final evaluation's balanced subset
    checks = checks or DiagnosticSettings(square_queries=cfg.eval.diagnostic_queries)
    return cfg, count, checks, _settings_key(cfg, count, model, models[model], checks)


def diagnose_run(run: Path, model: str = "final", eval_limit: int | None = None,
                 data_dir: str | None = None, images: int | None = None,
                 checks: DiagnosticSettings | None = None) -> pd.DataFrame:
    """The diagnostics rows of one model of a run (`final` or `best`), from
    <run>/diagnostics.csv when they were computed with the same settings, else computed
    and written there.

    The images: the first `images` (default eval.diagnostic-images) of the final
    evaluation's class-balanced test subset, at most its `eval_limit` (default the run's
    data.eval-limit; 0 = the whole test set). The checks attack with the run's eval.eps,
    eval.step and test-time noise (eval.noise-std, eval.noise-protocol), Square with
    eval.diagnostic-queries queries unless `checks` says otherwise.
    """
    store = RunStore(run)
    cfg, count, checks, key = _request(store, model, eval_limit, images, checks)
    cache = store.diagnostics_csv
    done = results.read_csv(cache)
    if not _matches(done, model, key):
        started = time.perf_counter()
        x, y = final_test_images(cfg, count, data_dir)
        net = model_from_config(cfg)
        net.load_state_dict(store.model_state(model))
        net.to(x.device)
        settings = EvalSettings.from_config(cfg.eval, attacks=())
        rows = diagnose(net, x, y, settings,
                        seed=protocol.eval_seed(cfg.seed, DIAGNOSTIC_TAG), checks=checks)
        seconds = time.perf_counter() - started
        new = pd.DataFrame([{"model": model, **r, **key, "seconds": seconds} for r in rows],
                           columns=[*CHECK_COLUMNS, *key, "seconds"])
        old = done[done["model"] != model] if not done.empty else done
        done = pd.concat([old, new], ignore_index=True) if not old.empty else new
        results.write_csv(cache, done)
        done = results.read_csv(cache)  # as a later call reads it back
    return done[done["model"] == model].reset_index(drop=True)


def diagnosed_rows(run: Path, model: str = "final", eval_limit: int | None = None,
                   images: int | None = None,
                   checks: DiagnosticSettings | None = None) -> pd.DataFrame:
    """The rows diagnose_run returns, read from <run>/diagnostics.csv without computing
    anything: rows it does not hold with these settings are an error (the sweep diagnoses
    first)."""
    store = RunStore(run)
    _, _, _, key = _request(store, model, eval_limit, images, checks)
    done = results.read_csv(store.diagnostics_csv)
    if not _matches(done, model, key):
        raise ValueError(f"{store.diagnostics_csv} holds no rows of the {model} model with "
                         "these settings: diagnose the run first (a sweep does; or `python "
                         "-m simulation evaluate`)")
    return done[done["model"] == model].reset_index(drop=True)


def report_columns(frame: pd.DataFrame) -> dict[str, Any]:
    """A run's columns in the report: `masking_flags` ("ok" or the failed checks) and the
    accuracy-vs-eps curve, one column per eps (eps_sweep_acc@<k>/255)."""
    records = frame.to_dict("records")
    eps, acc = eps_curve(records)
    return {"masking_flags": masking_flags(records),
            **{f"{EPS_COLUMN}{255 * e:g}/255": a for e, a in zip(eps, acc)}}


def accuracy_vs_eps_figure(table: pd.DataFrame, folder: Path) -> Path | None:
    """report/accuracy-vs-eps.png: PGD accuracy against eps, one line per row (cell) of
    `table`; None when no row has the curve."""
    cols = sorted((c for c in table.columns if str(c).startswith(EPS_COLUMN)),
                  key=lambda c: float(c[len(EPS_COLUMN):].split("/")[0]))
    if not cols:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [float(c[len(EPS_COLUMN):].split("/")[0]) for c in cols]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for _, r in table.dropna(subset=cols, how="all").iterrows():
        flags = r.get("masking_flags", "ok")
        label = r["cell"] + ("" if flags in ("ok", None) or pd.isna(flags)
                             else f" (flagged: {flags})")
        ax.plot(xs, [100 * float(r[c]) for c in cols], "o-", lw=1, label=label)
    ax.set(xlabel="eps (x/255)", ylabel="robust accuracy under PGD (%)",
           title="accuracy vs eps (gradient-masking check)")
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    path = folder / FIGURE
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
