"""A sweep's report: one tidy table, markdown tables shaped like the paper's, and figures.

Generic: the study (simulation/studies) names its own tables and figures; the runs' final
evaluation and diagnostics are read from their caches (<run>/final_eval.csv,
<run>/diagnostics.csv), which the sweep fills before it reports (sweep.evaluate_runs).

report/results.csv, results.parquet   one row per cell and seed: what varied, the seed,
                                      the config, final accuracies (training-time and
                                      honest final evaluation) and eval_examples (the test
                                      images they were measured on)
report/rounds.csv                     every run's per-round rows, with cell name and seed
report/tables.md                      markdown tables (each accuracy with its 95% interval:
                                      over seeds, or with one seed over the test images),
                                      the paper's claims with verdicts from those intervals
                                      and where the paper's protocol overstates robustness
report/*.png                          figures (means over seeds)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from common import results
from common.intervals import Interval, difference, format_interval, over_seeds
from common.run_folder import ROUNDS_CSV, TRAFFIC_COLUMNS, RunStore

from .claims import CLAIMS, Claim, evaluate_claims, study_claims
from .diagnostics import FLAG_NOTE, accuracy_vs_eps_figure, diagnosed_rows, report_columns
from .figures import accuracy_per_round
from .final_eval import FinalEval, evaluated_rows
from .studies import Cell, Study
from .tables import (PER_ROUND, accuracy_columns, estimates, estimates_with_bounds, finished,
                     present, strong_attack_columns)

# The paper's headline number is FGSM through test-time noise; every other L-inf attack of
# the final evaluation (PGD, PGD with restarts, C&W, EOT-PGD) competes for "strongest".
PROTOCOL = "fgsm_noise_acc"


class CellRun(NamedTuple):
    """One run of a sweep: a cell at one seed (None: the seed its config.json names)."""

    cell: Cell
    run: Path
    status: str
    seed: int | None = None


def _final_round(rounds: pd.DataFrame) -> dict[str, Any]:
    if rounds.empty:
        return {}
    evaluated = rounds.dropna(subset=["natural_acc"])
    last = evaluated.iloc[-1].to_dict() if not evaluated.empty else {}
    return {"train_" + k: v for k, v in last.items() if k.endswith("_acc")} | {
        "train_eval_examples": last.get("eval_examples", math.nan),
        "rounds": int(rounds["round"].max()),
        "wall_seconds": float(rounds["round_seconds"].sum()),
        # the traffic of an average round, each direction (runs before it was counted: none)
        **{f"{c}{PER_ROUND}": float(rounds[c].mean()) for c in TRAFFIC_COLUMNS
           if c in rounds},
    }


def _best_columns(best: pd.DataFrame, sigma: float) -> dict[str, Any]:
    """best.pt (selected on the validation split) beside the final model: its round, test
    natural accuracy and strongest-attack accuracy (the minimum over the columns that
    compete for `strongest`). None when the run selected no best.pt."""
    if best.empty:
        return {}
    acc = {k: v for _, r in best[best["noise_std"].isin({0.0, sigma})].iterrows()
           for k, v in r.items() if k.endswith("_acc") and not pd.isna(v)
           and ("_noise" in k) == (r["noise_std"] > 0)}
    strong = strong_attack_columns(pd.DataFrame([acc]))
    return {"best_round": int(best["model_round"].iloc[0]),
            "best_natural_acc": acc.get("natural_acc", math.nan),
            "best_strongest": min((acc[c] for c in strong), default=math.nan)}


def _examples(rows: pd.DataFrame) -> float:
    """The test images the final evaluation used: counted (eval_examples), else its limit
    when that is a count (rows cached before the count was recorded); nan if unknown."""
    if "eval_examples" in rows and rows["eval_examples"].notna().any():
        return float(rows["eval_examples"].dropna().iloc[0])
    limits = rows["eval_limit"].dropna() if "eval_limit" in rows else pd.Series(dtype=float)
    return float(limits.iloc[0]) if len(limits) and limits.iloc[0] > 0 else math.nan


def collect(outcomes: list[CellRun | tuple], final: FinalEval
            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per run (cell and seed), and every run's per-round rows; a finished run's
    final evaluation (and diagnostics, if asked for) as `final` cached them."""
    noise_levels = final.noise_levels
    rows, per_round = [], []
    for cell, run, status, seed in (CellRun(*o) for o in outcomes):
        store = RunStore(run)
        if seed is None and store.config_path.is_file():
            seed = store.config().seed
        row: dict[str, Any] = {"cell": cell.name, "seed": seed, "run": run.name,
                               "status": status, **{k: v for k, v in cell.varied.items()}}
        row["seed"] = seed  # the run's, also where a grid varies the key `seed`
        if status == "finished":
            cfg = store.config()
            rounds = store.rounds()
            row.update({"activation": cfg.model.activation, "schedule": cfg.train.schedule,
                        "partition": cfg.fl.partition, "share": cfg.fl.shared_share,
                        "sharing": cfg.fl.sharing,
                        "objective": cfg.train.objective,
                        "adversarial": cfg.train.adversarial,
                        "train_noise": cfg.train.noise_std, "width": cfg.model.width,
                        "clients": cell.num_supernodes})
            row.update(_final_round(rounds))
            evaluated = evaluated_rows(run, final.levels(cfg), final.attacks,
                                       final.eval_limit, final.noise_attacks)
            best = evaluated[evaluated["model"] == "best"]
            last = evaluated[evaluated["model"] == "final"]
            row.update(_best_columns(best, cfg.eval.noise_std))
            noisy = last[last["noise_std"] > 0]
            row["eval_examples"] = _examples(last)
            row["noise_protocol"] = ",".join(sorted(set(noisy["noise_protocol"]))) or "none"
            if final.diagnostics:  # gradient-masking checks of the final model
                row.update(report_columns(diagnosed_rows(run, eval_limit=final.eval_limit)))
            for _, r in last.iterrows():
                sigma = r["noise_std"]
                for k, v in r.items():
                    if k.endswith("_acc") or k.endswith("_median_l2"):
                        if isinstance(v, float) and math.isnan(v):
                            continue
                        if sigma == cfg.eval.noise_std or (sigma == 0 and "_noise" not in k):
                            row[k] = v
                        if sigma in noise_levels and sigma > 0 and "_noise" in k:
                            row[f"{k}@{sigma:g}"] = v  # the noise study's sweep over sigma
            if "catastrophic_overfitting" in rounds:  # fgsm-rs' check (common.objectives)
                row["overfit_rounds"] = int(rounds["catastrophic_overfitting"].sum())
            per_round.append(rounds.assign(cell=cell.name, seed=seed))
        rows.append(row)
    table = add_strongest(pd.DataFrame(rows))
    return table, (pd.concat(per_round, ignore_index=True) if per_round else pd.DataFrame())


def add_strongest(table: pd.DataFrame) -> pd.DataFrame:
    """The strongest attack of each row (the lowest robust accuracy), its name, and how much
    the paper's protocol overstates it; rows without any attack result (an unfinished run)
    get none."""
    strong = strong_attack_columns(table)
    if PROTOCOL in table.columns and strong:
        measured = table[strong].notna().any(axis=1)
        table["strongest"] = table[strong].min(axis=1)
        table["strongest_attack"] = pd.Series(None, index=table.index, dtype=object)
        table.loc[measured, "strongest_attack"] = table.loc[measured, strong].idxmin(axis=1)
        table["protocol_overstatement"] = table[PROTOCOL] - table["strongest"]
    return table


def metric_columns(table: pd.DataFrame) -> list[str]:
    """Every measured column that gets an interval: accuracies (proportions of the evaluation
    images) and DeepFool's median L2 (not a proportion: an interval over seeds only)."""
    return [c for c in table.columns
            if str(c).endswith(("_acc", "_median_l2")) or "_acc@" in str(c)
            or c in ("strongest", "best_strongest")]


def _common(values: pd.Series) -> Any:
    """A cell's value of a column that is not measured: the value its seeds share, else
    their mean (numbers) or their distinct values joined by "/" (e.g. strongest_attack)."""
    values = values.dropna()
    if values.empty:
        return math.nan
    distinct = list(dict.fromkeys(values))
    if len(distinct) == 1:
        return distinct[0]
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return float(values.mean())
    return "/".join(str(v) for v in distinct)


def _first(values: pd.Series) -> float | None:
    values = values.dropna() if values is not None else pd.Series(dtype=float)
    return float(values.iloc[0]) if len(values) else None


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """One row per finished cell: each measured column an Interval (common/intervals.py),
    the mean over its seeds with a Student-t interval widened by the test images' Wilson
    interval, or with one seed the value with the Wilson interval over its evaluation images;
    protocol_overstatement the interval of the difference (see common.intervals.difference);
    `seeds` the number of finished seeds."""
    done = finished(table)
    if done.empty:
        return pd.DataFrame()
    metrics = metric_columns(done)
    rows = []
    for cell, runs in done.groupby("cell", sort=False):
        row: dict[str, Any] = {}
        for col in done.columns:
            if col in ("seed", "run", "protocol_overstatement"):
                continue
            if col not in metrics:
                row[col] = _common(runs[col])
                continue
            values = runs[col].dropna()
            proportion = not str(col).endswith("_median_l2")
            n = _first(runs.get("train_eval_examples" if col.startswith("train_")
                                else "eval_examples")) if proportion else None
            row[col] = over_seeds(values, n) if len(values) else math.nan
        if {PROTOCOL, "strongest", "seed"} <= set(runs.columns):
            n = _first(runs.get("eval_examples"))
            row["protocol_overstatement"] = difference(
                dict(zip(runs["seed"], runs[PROTOCOL])),
                dict(zip(runs["seed"], runs["strongest"])), n, n) or math.nan
        row["seeds"] = len(runs)
        rows.append(row)
    return pd.DataFrame(rows)


def noise_protocol_line(table: pd.DataFrame) -> str:
    """The test-time noise protocol(s) of the report's noise columns, in words."""
    names = sorted({p for v in table.get("noise_protocol", pd.Series(dtype=str)).dropna()
                    for p in str(v).split(",") if p != "none"})
    if not names:
        return "Noise protocol: no noise columns."
    words = {"fresh": "`fresh` (a new noise draw in every forward pass; the attacker's "
                      "gradients and the classifier see independent draws, and the noisy "
                      "model classifies by the majority vote over eval.noise-draws draws)",
             "fixed": "`fixed` (one noise draw per image that the attacker and the classifier "
                      "both see)"}
    return "Noise protocol: " + "; ".join(words.get(n, f"`{n}`") for n in names) + "."


def markdown_table(frame: pd.DataFrame, percent: tuple[str, ...] = ()) -> str:
    """A GitHub markdown table (pandas' to_markdown needs the tabulate package)."""
    def fmt(col, v):
        if isinstance(v, Interval):
            return format_interval(v, 1, 2) if str(col).endswith("_median_l2") else \
                format_interval(v)
        if isinstance(v, float) and math.isnan(v):
            return "–"
        if col in percent or str(col).endswith("_acc") or "_acc@" in str(col) \
                or col in ("strongest", "protocol_overstatement"):
            return f"{100 * v:.1f}"
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v)

    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(fmt(c, v) for c, v in zip(frame.columns, row)) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def study_tables(study: Study, table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, table) pairs shaped like the paper's tables for this study."""
    done = finished(table)
    if done.empty:
        return []
    acc = accuracy_columns(done) + present(done, ["protocol_overstatement", "masking_flags"])
    return study.tables(done, acc)


def overstatement_text(summary: pd.DataFrame) -> str:
    """The protocol's overstatement over the cells, with each cell's interval's verdict."""
    if "protocol_overstatement" not in summary.columns:
        return ("The honest columns were not all evaluated, so the protocol's overstatement "
                "is not computed here.")
    done = summary[summary["protocol_overstatement"].map(lambda v: isinstance(v, Interval))]
    if done.empty:
        return "No finished cell has both the protocol's and the strong attacks' numbers."
    over = done["protocol_overstatement"]
    points = over.map(lambda iv: iv.estimate).astype(float)
    worst = done.loc[points.idxmax()]
    verdicts = over.map(Interval.verdict).value_counts()
    split = (f"In {verdicts.get('reproduced', 0)} of {len(done)} cells the 95% interval of "
             "the overstatement lies above 0 (it is real at this sample size), in "
             f"{verdicts.get('inconclusive', 0)} it holds 0 (inconclusive)")
    if verdicts.get("contradicted", 0):
        split += (f", in {verdicts['contradicted']} below 0 (the protocol is stricter than "
                  "the strongest attack there)")
    return (
        f"The paper's protocol (FGSM through test-time noise) overstates robust accuracy by "
        f"{100 * points.mean():.1f} points on average over {len(done)} "
        f"cell{'s' if len(done) > 1 else ''}, and by "
        f"{format_interval(worst['protocol_overstatement'])} points at worst "
        f"({worst['cell']}: {format_interval(worst[PROTOCOL])}% under the protocol, "
        f"{format_interval(worst['strongest'])}% under {worst['strongest_attack']}, the "
        f"strongest of {', '.join(strong_attack_columns(done))}). {split}. Report the "
        "strongest column, not FGSM."
    )


def claims_section(table: pd.DataFrame, extra: tuple[Claim, ...] = ()) -> list[str]:
    """The paper's claims that this sweep's cells can test, and the study's own comparisons
    (`extra`), each with its verdict."""
    done = finished(table)
    claims = evaluate_claims(done, CLAIMS + extra) if {"cell", "seed"} <= set(done.columns) \
        else pd.DataFrame()
    lines = ["## The paper's claims", ""]
    if claims.empty:
        return lines + ["No pair of this sweep's cells tests one of the paper's claims "
                        "(simulation/claims.py lists them).", ""]
    return lines + [
        "Each line compares two cells under one measure (`strongest`: the strongest attack "
        "of the final evaluation); `difference` = the claimed higher cell minus the other, in "
        "points, with its 95% interval (paired over the seeds both cells ran, widened by "
        "Newcombe's interval of the two means over the test images; with one seed, "
        "Newcombe's interval alone). **reproduced**: the interval "
        "lies above 0; **contradicted**: below 0; **inconclusive**: it holds 0.", "",
        markdown_table(claims), ""]


def interval_note(summary: pd.DataFrame) -> str:
    """What the ± of a table's accuracies means, for its title."""
    seeds = set(summary["seeds"]) if "seeds" in summary else {1}
    if seeds == {1}:
        n = summary["eval_examples"].dropna() if "eval_examples" in summary else []
        images = f"{int(n.iloc[0])} " if len(n) and n.nunique() == 1 else ""
        return f"one seed; [95% Wilson interval over the {images}test images]"
    if len(seeds) == 1:
        return f"mean ± 95% interval over {seeds.pop()} seeds"
    return "mean ± 95% interval over each cell's seeds (column seeds)"


def figures(study: Study, table: pd.DataFrame, per_round: pd.DataFrame,
            folder: Path) -> list[Path]:
    """The study's own figures, then those of every study: accuracy per round and the
    accuracy-vs-eps curves of the diagnostics."""
    done = finished(table)
    if done.empty:
        return []
    drawn = [figure(done, per_round, folder)
             for figure in (*study.figures, accuracy_per_round)]
    drawn.append(accuracy_vs_eps_figure(done, folder))
    return [path for path in drawn if path]


def _by_cell_and_seed(table: pd.DataFrame) -> pd.DataFrame:
    """Rows in the cells' order, each cell's seeds together in ascending order."""
    if table.empty:
        return table
    order = table["cell"].map({c: i for i, c in enumerate(dict.fromkeys(table["cell"]))})
    return table.assign(_order=order).sort_values(["_order", "seed"], kind="stable") \
        .drop(columns="_order").reset_index(drop=True)


def write_report(study: Study, outcomes: list[CellRun | tuple], folder: Path,
                 final: FinalEval) -> Path:
    """report/ of the sweep in `folder`, from its runs' files and the caches of their final
    evaluation `final` (the sweep evaluates first: sweep.evaluate_runs)."""
    table, per_round = collect(outcomes, final)
    table = _by_cell_and_seed(table)
    summary = summarize(table)
    out = folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    results.write_csv(out / "results.csv", table)
    results.write_parquet(out / "results.parquet", table)
    if not per_round.empty:
        results.write_csv(out / ROUNDS_CSV, per_round)  # the runs' rows, with cell and seed
    pictures = figures(study, estimates_with_bounds(summary), per_round, out)
    limit = "each run's data.eval-limit" if final.eval_limit is None else \
        (f"{final.eval_limit}" if final.eval_limit else "all")
    lines = [f"# {study.name} study: {folder.name}", "",
             "Accuracies in %, final models, on a fixed class-balanced test subset (size: "
             f"{limit}). An example counts as robust only if it is classified correctly both "
             "clean and under the attack (RobustBench's convention). `fgsm_noise_acc` is the "
             "paper's protocol (FGSM through test-time noise); `pgd50x5` = PGD-50 with 5 "
             "restarts, `eot_pgd20_noise` = PGD-20 with the gradient averaged over noise "
             "draws, `cw20` = PGD-20 on the C&W margin, `aa` = AutoAttack (standard; its rand "
             "version through fresh noise); `worst_acc` = robust under every L-inf attack of "
             "the row at once (per-example worst case); `deepfool_acc` = an upper bound on "
             "the accuracy under an L2 bound (DeepFool's perturbations are not minimal), "
             "`deepfool_median_l2` = the median L2 norm DeepFool needed over the correctly "
             "classified images (inf when it flipped fewer than half of them); "
             "`protocol_overstatement` = protocol minus the strongest attack. Plain-model "
             f"attacks: `{final.attacks}`; through the noise: `{final.noise_attacks}`.", "",
             "Intervals (95%): a cell run with several seeds (`--seeds N`) shows the mean over "
             "its seeds ± a half-width that adds in quadrature the Student-t half-width "
             "(N - 1 degrees of freedom: the spread of training runs) and the Wilson "
             "half-width over the test images (the same images for every seed, so more seeds "
             "do not shrink it). A cell with one seed shows its value and [the Wilson score "
             "interval] of that proportion over its test images: the spread of the test "
             "sample only. `protocol_overstatement`: the interval of the difference, paired "
             "by seed and widened by Newcombe's interval of the two means (one seed: "
             "Newcombe's alone). results.csv holds every seed's row.", "",
             noise_protocol_line(table), "",
             *([FLAG_NOTE, ""] if "masking_flags" in table else [])]
    many = "seeds" in summary and summary["seeds"].max() > 1
    for title, frame in study_tables(study, summary):
        if many and "cell" in frame and "seeds" not in frame:
            frame = frame.copy()
            frame.insert(1, "seeds", frame["cell"].map(dict(zip(summary["cell"],
                                                                summary["seeds"]))))
        shown = frame.map(lambda v: isinstance(v, Interval)).any().any()
        note = interval_note(summary) if shown else ("means over seeds" if many else "")
        lines += [f"## {title}" + (f" ({note})" if note else ""), "", markdown_table(frame),
                  ""]
    lines += claims_section(table, study_claims(study.claims))
    lines += ["## Where the paper's protocol overstates robustness", "",
              overstatement_text(summary), ""]
    failed = table[table["status"] != "finished"] if "status" in table else table.iloc[:0]
    if not failed.empty:
        lines += ["## Runs that did not finish", "",
                  markdown_table(failed[present(failed, ["cell", "seed", "status"])]), ""]
    lines += [f"![{p.stem}]({p.name})" for p in pictures]
    results.write_text(out / "tables.md", "\n".join(lines) + "\n")
    return out
