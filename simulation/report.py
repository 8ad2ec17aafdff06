"""A sweep's report: one tidy table, markdown tables shaped like the paper's, and figures.

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
from common.config import key_type
from common.intervals import Interval, difference, format_interval, over_seeds

from .final_eval import HONEST_ATTACKS, HONEST_NOISE_ATTACKS, evaluate_run, load_run_config
from .claims import evaluate_claims
from .diagnostics import FLAG_NOTE, accuracy_vs_eps_figure, diagnose_run, report_columns
from .studies import NOISE_LEVELS, Cell, claim_table

# The paper's headline number is FGSM through test-time noise; every other L-inf attack of
# the final evaluation (PGD, PGD with restarts, C&W, EOT-PGD) competes for "strongest".
PROTOCOL = "fgsm_noise_acc"


class CellRun(NamedTuple):
    """One run of a sweep: a cell at one seed (None: the seed its config.json names)."""

    cell: Cell
    run: Path
    status: str
    seed: int | None = None


def accuracy_columns(table: pd.DataFrame) -> list[str]:
    """The final evaluation's columns, natural first, in the order they were evaluated."""
    cols = [c for c in table.columns if (c.endswith("_acc") or c.endswith("_median_l2"))
            and not c.startswith("train_") and "@" not in c]
    return sorted(cols, key=lambda c: (not c.startswith("natural"), "_noise" in c))


def strong_attack_columns(table: pd.DataFrame) -> list[str]:
    # DeepFool measures an L2 distance, a different threat model: it does not compete. The
    # worst case is the union of the attacks, not one of them.
    return [c for c in accuracy_columns(table) if c.endswith("_acc")
            and not c.startswith(("natural", "deepfool", "fgsm", "worst", "best"))]


def _final_round(run: Path) -> dict[str, Any]:
    rounds = results.read_csv(run / "rounds.csv")
    if rounds.empty:
        return {}
    evaluated = rounds.dropna(subset=["natural_acc"])
    last = evaluated.iloc[-1].to_dict() if not evaluated.empty else {}
    return {"train_" + k: v for k, v in last.items() if k.endswith("_acc")} | {
        "train_eval_examples": last.get("eval_examples", math.nan),
        "rounds": int(rounds["round"].max()),
        "wall_seconds": float(rounds["round_seconds"].sum()),
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


def _examples(final: pd.DataFrame) -> float:
    """The test images the final evaluation used: counted (eval_examples), else its limit
    when that is a count (rows cached before the count was recorded); nan if unknown."""
    if "eval_examples" in final and final["eval_examples"].notna().any():
        return float(final["eval_examples"].dropna().iloc[0])
    limits = final["eval_limit"].dropna() if "eval_limit" in final else pd.Series(dtype=float)
    return float(limits.iloc[0]) if len(limits) and limits.iloc[0] > 0 else math.nan


def collect(outcomes: list[CellRun | tuple], noise_levels: list[float],
            attacks: str = HONEST_ATTACKS, noise_attacks: str = HONEST_NOISE_ATTACKS,
            eval_limit: int | None = None,
            diagnostics: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per run (cell and seed), and every run's per-round rows."""
    rows, per_round = [], []
    for cell, run, status, seed in (CellRun(*o) for o in outcomes):
        if seed is None and (run / "config.json").is_file():
            seed = load_run_config(run).seed
        row: dict[str, Any] = {"cell": cell.name, "seed": seed, "run": run.name,
                               "status": status, **{k: v for k, v in cell.varied.items()}}
        row["seed"] = seed  # the run's, also where a grid varies the key `seed`
        if status == "finished":
            cfg = load_run_config(run)
            row.update({"activation": cfg.model.activation, "schedule": cfg.train.schedule,
                        "partition": cfg.fl.partition, "share": cfg.fl.shared_share,
                        "objective": cfg.train.objective,
                        "adversarial": cfg.train.adversarial,
                        "train_noise": cfg.train.noise_std, "width": cfg.model.width,
                        "clients": cell.num_supernodes})
            row.update(_final_round(run))
            levels = sorted({0.0, cfg.eval.noise_std, *noise_levels})
            final = evaluate_run(run, levels, attacks, eval_limit,
                                 noise_attacks=noise_attacks)
            best, final = final[final["model"] == "best"], final[final["model"] == "final"]
            row.update(_best_columns(best, cfg.eval.noise_std))
            noisy = final[final["noise_std"] > 0]
            row["eval_examples"] = _examples(final)
            row["noise_protocol"] = ",".join(sorted(set(noisy["noise_protocol"]))) or "none"
            if diagnostics:  # gradient-masking checks of the final model: diagnostics.csv
                row.update(report_columns(diagnose_run(run, eval_limit=eval_limit)))
            for _, r in final.iterrows():
                sigma = r["noise_std"]
                for k, v in r.items():
                    if k.endswith("_acc") or k.endswith("_median_l2"):
                        if isinstance(v, float) and math.isnan(v):
                            continue
                        if sigma == cfg.eval.noise_std or (sigma == 0 and "_noise" not in k):
                            row[k] = v
                        if sigma in noise_levels and sigma > 0 and "_noise" in k:
                            row[f"{k}@{sigma:g}"] = v  # the noise study's sweep over sigma
            rounds = results.read_csv(run / "rounds.csv")
            if "catastrophic_overfitting" in rounds:  # fgsm-rs' check (common.objectives)
                row["overfit_rounds"] = int(rounds["catastrophic_overfitting"].sum())
            per_round.append(rounds.assign(cell=cell.name, seed=seed))
        rows.append(row)
    table = pd.DataFrame(rows)
    strong = strong_attack_columns(table)
    if PROTOCOL in table.columns and strong:
        table["strongest"] = table[strong].min(axis=1)
        table["strongest_attack"] = table[strong].idxmin(axis=1)
        table["protocol_overstatement"] = table[PROTOCOL] - table["strongest"]
    return table, (pd.concat(per_round, ignore_index=True) if per_round else pd.DataFrame())


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
    the mean over its seeds with a Student-t interval, or with one seed the value with the
    Wilson interval over its evaluation images; protocol_overstatement the interval of the
    difference (paired by seed, or Newcombe's); `seeds` the number of finished seeds."""
    done = table[table["status"] == "finished"] if "status" in table else table
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


def estimates(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary with each Interval replaced by its estimate (the mean over seeds)."""
    return summary.map(lambda v: v.estimate if isinstance(v, Interval) else v)


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


def _present(table: pd.DataFrame, columns: list[str]) -> list[str]:
    return [c for c in columns if c in table.columns]


def study_tables(study: str, table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, table) pairs shaped like the paper's tables for this study."""
    done = table[table["status"] == "finished"] if "status" in table else table
    if done.empty:
        return []
    acc = accuracy_columns(done) + _present(done, ["protocol_overstatement", "masking_flags"])
    if study == "activation":
        cols = _present(done, ["cell", "activation", "schedule", *acc])
        out = [("Activation x learning rate (centralized)",
                done[cols].sort_values(["schedule", "activation"]))]
        return out
    if study == "noniid":
        cols = _present(done, ["cell", "partition", "share", *acc])
        return [("Data sharing x partition (federated)",
                 done[cols].sort_values(["partition", "share"]))]
    if study == "objectives":
        cols = _present(done, ["cell", "objective", "partition", "share", *acc, "strongest",
                               "overfit_rounds"])
        return [("Objective x partition x sharing (federated)",
                 done[cols].sort_values(["partition", "share", "objective"])),
                ("The paper's claim: mixed with 40% sharing vs CalFAT without sharing",
                 claim_table(estimates(done),  # means over seeds; intervals: the claims
                             _present(done, [*accuracy_columns(done), "strongest"])))]
    if study == "noise":
        noise_cols = sorted(c for c in done.columns if "_noise_acc@" in c)
        cols = _present(done, ["cell", "train_noise", "adversarial", "natural_acc", *noise_cols,
                               "masking_flags"])
        return [("Test-time noise sigma x training noise (centralized)", done[cols])]
    varied = [c for c in done.columns if key_type(c) is not None]  # the grid's axes
    return [("All cells", done[_present(done, ["cell", *varied, *acc])])]


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


def claims_section(table: pd.DataFrame) -> list[str]:
    """The paper's claims that this sweep's cells can test, each with its verdict."""
    done = table[table["status"] == "finished"] if "status" in table else table
    claims = evaluate_claims(done) if {"cell", "seed"} <= set(done.columns) else \
        pd.DataFrame()
    lines = ["## The paper's claims", ""]
    if claims.empty:
        return lines + ["No pair of this sweep's cells tests one of the paper's claims "
                        "(simulation/claims.py lists them).", ""]
    return lines + [
        "Each line compares two cells under one measure (`strongest`: the strongest attack "
        "of the final evaluation); `difference` = the claimed higher cell minus the other, in "
        "points, with its 95% interval (paired over the seeds both cells ran; with one seed, "
        "Newcombe's interval from the two Wilson intervals). **reproduced**: the interval "
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


def figures(study: str, table: pd.DataFrame, per_round: pd.DataFrame, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    done = table[table["status"] == "finished"] if "status" in table else table
    if done.empty:
        return made

    def save(fig, name):
        path = folder / name
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        made.append(path)

    robust = [c for c in ("fgsm_noise_acc", "pgd20_acc", "eot_pgd20_noise_acc")
              if c in done.columns] or [c for c in accuracy_columns(done)
                                        if c.endswith("_acc") and not c.startswith("natural")][:1]
    # The activation study, or any grid over activations (a reduced activation study).
    if robust and "activation" in done.columns and (study == "activation"
                                                    or done["activation"].nunique() > 1):
        schedules = sorted(done["schedule"].dropna().unique())
        fig, axes = plt.subplots(1, len(schedules), figsize=(6 * len(schedules), 4.5),
                                 squeeze=False, sharey=True)
        for ax, schedule in zip(axes[0], schedules):
            part = done[(done["schedule"] == schedule) & (done["adversarial"] == True)]  # noqa: E712
            ax.scatter(100 * part["natural_acc"], 100 * part[robust[0]], label=robust[0])
            if "pgd20_acc" in part:
                ax.scatter(100 * part["natural_acc"], 100 * part["pgd20_acc"], marker="x",
                           label="pgd20_acc")
            for _, r in part.iterrows():
                ax.annotate(r["activation"], (100 * r["natural_acc"], 100 * r[robust[0]]),
                            fontsize=8, xytext=(3, 3), textcoords="offset points")
            ax.set(title=f"{schedule} learning rate", xlabel="natural accuracy (%)",
                   ylabel="robust accuracy (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        save(fig, "natural_vs_robust_by_activation.png")
    if robust and study == "noniid" and "share" in done.columns:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
        at = done[done["adversarial"] == True]  # noqa: E712
        for partition, part in at.groupby("partition"):
            part = part.sort_values("share")
            axes[0].plot(100 * part["share"], 100 * part["natural_acc"], "o-", label=partition)
            axes[1].plot(100 * part["share"], 100 * part[robust[-1] if len(robust) > 1
                                                         else robust[0]], "o-", label=partition)
        axes[0].set(title="natural accuracy", xlabel="share alpha of G per client (%)",
                    ylabel="accuracy (%)")
        axes[1].set(title=f"robust accuracy ({robust[-1] if len(robust) > 1 else robust[0]})",
                    xlabel="share alpha of G per client (%)")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend()
        save(fig, "accuracy_vs_share.png")
    if study == "noise":
        cols = sorted((c for c in done.columns if c.startswith("fgsm_noise_acc@")),
                      key=lambda c: float(c.split("@")[1]))
        eot = sorted((c for c in done.columns if c.startswith("eot_pgd20_noise_acc@")),
                     key=lambda c: float(c.split("@")[1]))
        if cols:
            fig, ax = plt.subplots(figsize=(6, 4.2))
            for _, r in done.iterrows():
                xs = [float(c.split("@")[1]) for c in cols]
                ax.plot(xs, [100 * r[c] for c in cols], "o-", label=f"{r['cell']} FGSM")
                if eot:
                    ax.plot([float(c.split("@")[1]) for c in eot], [100 * r[c] for c in eot],
                            "x--", label=f"{r['cell']} EOT-PGD")
            ax.set(xlabel="test-time noise sigma", ylabel="robust accuracy (%)",
                   title="robust accuracy vs test-time noise")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            save(fig, "robust_vs_test_noise.png")
    if not per_round.empty:
        metrics = [m for m in ("natural_acc", "pgd10_acc", "pgd5_acc", "fgsm_noise_acc")
                   if m in per_round.columns][:2]
        fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.2),
                                 squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            for cell, part in per_round.dropna(subset=[metric]).groupby("cell"):
                mean = part.groupby("round")[metric].mean()  # over the cell's seeds
                ax.plot(mean.index, 100 * mean, label=cell, lw=1)
            ax.set(title=metric.replace("_acc", " accuracy"), xlabel="round",
                   ylabel="accuracy (%)")
            ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=6, ncol=2)
        save(fig, "accuracy_per_round.png")
    eps_figure = accuracy_vs_eps_figure(done, folder)
    if eps_figure:
        made.append(eps_figure)
    return made


def _by_cell_and_seed(table: pd.DataFrame) -> pd.DataFrame:
    """Rows in the cells' order, each cell's seeds together in ascending order."""
    if table.empty:
        return table
    order = table["cell"].map({c: i for i, c in enumerate(dict.fromkeys(table["cell"]))})
    return table.assign(_order=order).sort_values(["_order", "seed"], kind="stable") \
        .drop(columns="_order").reset_index(drop=True)


def write_report(study: str, outcomes: list[CellRun | tuple], folder: Path,
                 noise_levels: list[float] | None = None, attacks: str = HONEST_ATTACKS,
                 noise_attacks: str = HONEST_NOISE_ATTACKS,
                 eval_limit: int | None = None, diagnostics: bool = True) -> Path:
    levels = list(noise_levels if noise_levels is not None else
                  (NOISE_LEVELS if study == "noise" else ()))
    table, per_round = collect(outcomes, levels, attacks, noise_attacks, eval_limit,
                               diagnostics)
    table = _by_cell_and_seed(table)
    summary = summarize(table)
    out = folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    results.write_csv(out / "results.csv", table)
    results.write_parquet(out / "results.parquet", table)
    if not per_round.empty:
        results.write_csv(out / "rounds.csv", per_round)
    pictures = figures(study, estimates(summary), per_round, out)
    limit = "each run's data.eval-limit" if eval_limit is None else \
        (f"{eval_limit}" if eval_limit else "all")
    lines = [f"# {study} study: {folder.name}", "",
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
             f"attacks: `{attacks}`; through the noise: `{noise_attacks}`.", "",
             "Intervals (95%): a cell run with several seeds (`--seeds N`) shows the mean over "
             "its seeds ± the half-width of the Student-t interval (N - 1 degrees of "
             "freedom): the spread of training runs. A cell with one seed shows its value "
             "and [the Wilson score interval] of that proportion over its test images: the "
             "spread of the test sample only. `protocol_overstatement`: the interval of the "
             "difference, paired by seed (one seed: Newcombe's, from the two Wilson "
             "intervals). results.csv holds every seed's row.", "",
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
    lines += claims_section(table)
    lines += ["## Where the paper's protocol overstates robustness", "",
              overstatement_text(summary), ""]
    failed = table[table["status"] != "finished"] if "status" in table else table.iloc[:0]
    if not failed.empty:
        lines += ["## Runs that did not finish", "",
                  markdown_table(failed[_present(failed, ["cell", "seed", "status"])]), ""]
    lines += [f"![{p.stem}]({p.name})" for p in pictures]
    results.write_text(out / "tables.md", "\n".join(lines) + "\n")
    return out
