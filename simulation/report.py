"""A sweep's report: one tidy table, markdown tables shaped like the paper's, and figures.

report/results.csv, results.parquet   one row per cell: what varied, the config, final
                                      accuracies (training-time and honest final evaluation)
report/rounds.csv                     every cell's per-round rows, with the cell name
report/tables.md                      markdown tables and the plain statement of where the
                                      paper's protocol overstates robustness
report/*.png                          figures
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from common import results
from common.config import key_type

from .final_eval import HONEST_ATTACKS, HONEST_NOISE_ATTACKS, evaluate_run, load_run_config
from .studies import NOISE_LEVELS, Cell

# The paper's headline number is FGSM through test-time noise; every other L-inf attack of
# the final evaluation (PGD, PGD with restarts, C&W, EOT-PGD) competes for "strongest".
PROTOCOL = "fgsm_noise_acc"


def accuracy_columns(table: pd.DataFrame) -> list[str]:
    """The final evaluation's columns, natural first, in the order they were evaluated."""
    cols = [c for c in table.columns if (c.endswith("_acc") or c.endswith("_median_l2"))
            and not c.startswith("train_") and "@" not in c]
    return sorted(cols, key=lambda c: (not c.startswith("natural"), "_noise" in c))


def strong_attack_columns(table: pd.DataFrame) -> list[str]:
    # DeepFool measures an L2 distance, a different threat model: it does not compete. The
    # worst case is the union of the attacks, not one of them.
    return [c for c in accuracy_columns(table) if c.endswith("_acc")
            and not c.startswith(("natural", "deepfool", "fgsm", "worst"))]


def _final_round(run: Path) -> dict[str, Any]:
    rounds = results.read_csv(run / "rounds.csv")
    if rounds.empty:
        return {}
    evaluated = rounds.dropna(subset=["natural_acc"])
    last = evaluated.iloc[-1].to_dict() if not evaluated.empty else {}
    return {"train_" + k: v for k, v in last.items() if k.endswith("_acc")} | {
        "rounds": int(rounds["round"].max()),
        "wall_seconds": float(rounds["round_seconds"].sum()),
    }


def collect(outcomes: list[tuple[Cell, Path, str]], noise_levels: list[float],
            attacks: str = HONEST_ATTACKS, noise_attacks: str = HONEST_NOISE_ATTACKS,
            eval_limit: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, per_round = [], []
    for cell, run, status in outcomes:
        row: dict[str, Any] = {"cell": cell.name, "status": status,
                               **{k: v for k, v in cell.varied.items()}}
        if status == "finished":
            cfg = load_run_config(run)
            row.update({"activation": cfg.model.activation, "schedule": cfg.train.schedule,
                        "partition": cfg.fl.partition, "share": cfg.fl.shared_share,
                        "adversarial": cfg.train.adversarial,
                        "train_noise": cfg.train.noise_std, "width": cfg.model.width,
                        "clients": cell.num_supernodes})
            row.update(_final_round(run))
            levels = sorted({0.0, cfg.eval.noise_std, *noise_levels})
            final = evaluate_run(run, levels, attacks, eval_limit,
                                 noise_attacks=noise_attacks)
            noisy = final[final["noise_std"] > 0]
            row["noise_protocol"] = ",".join(sorted(set(noisy["noise_protocol"]))) or "none"
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
            per_round.append(rounds.assign(cell=cell.name))
        rows.append(row)
    table = pd.DataFrame(rows)
    strong = strong_attack_columns(table)
    if PROTOCOL in table.columns and strong:
        table["strongest"] = table[strong].min(axis=1)
        table["strongest_attack"] = table[strong].idxmin(axis=1)
        table["protocol_overstatement"] = table[PROTOCOL] - table["strongest"]
    return table, (pd.concat(per_round, ignore_index=True) if per_round else pd.DataFrame())


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
    acc = accuracy_columns(done) + _present(done, ["protocol_overstatement"])
    if study == "activation":
        cols = _present(done, ["cell", "activation", "schedule", *acc])
        out = [("Activation x learning rate (centralized)",
                done[cols].sort_values(["schedule", "activation"]))]
        return out
    if study == "noniid":
        cols = _present(done, ["cell", "partition", "share", *acc])
        return [("Data sharing x partition (federated)",
                 done[cols].sort_values(["partition", "share"]))]
    if study == "noise":
        noise_cols = sorted(c for c in done.columns if "_noise_acc@" in c)
        cols = _present(done, ["cell", "train_noise", "adversarial", "natural_acc", *noise_cols])
        return [("Test-time noise sigma x training noise (centralized)", done[cols])]
    varied = [c for c in done.columns if key_type(c) is not None]  # the grid's axes
    return [("All cells", done[_present(done, ["cell", *varied, *acc])])]


def overstatement_text(table: pd.DataFrame) -> str:
    if "protocol_overstatement" not in table.columns:
        return ("The honest columns were not all evaluated, so the protocol's overstatement "
                "is not computed here.")
    done = table.dropna(subset=["protocol_overstatement"])
    if done.empty:
        return "No finished cell has both the protocol's and the strong attacks' numbers."
    worst = done.loc[done["protocol_overstatement"].idxmax()]
    mean = 100 * done["protocol_overstatement"].mean()
    return (
        f"The paper's protocol (FGSM through test-time noise) overstates robust accuracy by "
        f"{mean:.1f} points on average over {len(done)} cells, and by "
        f"{100 * worst['protocol_overstatement']:.1f} points at worst ({worst['cell']}: "
        f"{100 * worst[PROTOCOL]:.1f}% under the protocol, "
        f"{100 * worst['strongest']:.1f}% under {worst['strongest_attack']}, the "
        f"strongest of {', '.join(strong_attack_columns(done))}). Report the strongest "
        "column, not FGSM."
    )


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
                ax.plot(part["round"], 100 * part[metric], label=cell, lw=1)
            ax.set(title=metric.replace("_acc", " accuracy"), xlabel="round",
                   ylabel="accuracy (%)")
            ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=6, ncol=2)
        save(fig, "accuracy_per_round.png")
    return made


def write_report(study: str, outcomes: list[tuple[Cell, Path, str]], folder: Path,
                 noise_levels: list[float] | None = None, attacks: str = HONEST_ATTACKS,
                 noise_attacks: str = HONEST_NOISE_ATTACKS,
                 eval_limit: int | None = None) -> Path:
    levels = list(noise_levels if noise_levels is not None else
                  (NOISE_LEVELS if study == "noise" else ()))
    table, per_round = collect(outcomes, levels, attacks, noise_attacks, eval_limit)
    out = folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    results.write_csv(out / "results.csv", table)
    results.write_parquet(out / "results.parquet", table)
    if not per_round.empty:
        results.write_csv(out / "rounds.csv", per_round)
    pictures = figures(study, table, per_round, out)
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
             noise_protocol_line(table), ""]
    for title, frame in study_tables(study, table):
        lines += [f"## {title}", "", markdown_table(frame), ""]
    lines += ["## Where the paper's protocol overstates robustness", "",
              overstatement_text(table), ""]
    failed = table[table["status"] != "finished"] if "status" in table else table.iloc[:0]
    if not failed.empty:
        lines += ["## Cells that did not finish", "",
                  markdown_table(failed[["cell", "status"]]), ""]
    lines += [f"![{p.stem}]({p.name})" for p in pictures]
    results.write_text(out / "tables.md", "\n".join(lines) + "\n")
    return out
