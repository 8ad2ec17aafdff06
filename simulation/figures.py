"""Drawing a report's figures: the helpers the studies' figures share, and the figures of
natural against robust accuracy per activation and of accuracy per round."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .tables import BOUNDS, accuracy_columns


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, folder: Path, name: str) -> Path:
    path = folder / name
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def robust_columns(done: pd.DataFrame) -> list[str]:
    """The robust accuracies the figures draw: the paper's protocol, PGD-20 and EOT-PGD,
    else the first robust column there is."""
    return [c for c in ("fgsm_noise_acc", "pgd20_acc", "eot_pgd20_noise_acc")
            if c in done.columns] or [c for c in accuracy_columns(done)
                                      if c.endswith("_acc") and not c.startswith("natural")][:1]


def _error(part: pd.DataFrame, column: str):
    """The 100x half-widths below and above each estimate, or None without bounds."""
    low, high = column + BOUNDS[0], column + BOUNDS[1]
    if not {low, high} <= set(part.columns) or part[[low, high]].isna().all(axis=None):
        return None
    return [100 * (part[column] - part[low]).fillna(0), 100 * (part[high] - part[column]).fillna(0)]


def _measures(done: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(column, marker, legend) of the robust accuracies drawn against natural accuracy: the
    paper's protocol, and the strongest evaluation (the union of the attacks, `worst_acc`,
    else PGD-20)."""
    robust = robust_columns(done)
    strongest = next((c for c in ("worst_acc", "pgd20_acc") if c in done.columns), None)
    measures = [(robust[0], "o", "the paper's protocol (FGSM + noise)"
                 if robust[0] == "fgsm_noise_acc" else robust[0])]
    if strongest and strongest != robust[0]:
        measures.append((strongest, "s", "every attack at once (worst case)"
                         if strongest == "worst_acc" else strongest))
    return measures


def natural_vs_robust(done: pd.DataFrame, folder: Path, name: str, label: str, panel: str,
                       title: str) -> Path:
    """One panel per value of `panel`; in each, a point per row (its colour names its
    `label`) for each robust measure, with its 95% interval where the report has one."""
    measures = _measures(done)
    plt = pyplot()
    panels = sorted(done[panel].dropna().unique())
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5),
                             squeeze=False, sharey=True)
    colours = {v: f"C{i % 10}" for i, v in enumerate(sorted(done[label].dropna().unique()))}
    for ax, value in zip(axes[0], panels):
        part = done[(done[panel] == value) & (done["adversarial"] == True)]  # noqa: E712
        for column, marker, legend in measures:
            for key, row in part.groupby(label):
                ax.errorbar(100 * row["natural_acc"], 100 * row[column],
                            xerr=_error(row, "natural_acc"), yerr=_error(row, column),
                            fmt=marker, color=colours[key], capsize=3, alpha=0.9)
            ax.plot([], [], marker, color="grey", label=legend)
        for key in sorted(part[label].dropna().unique()):  # colours name the rows
            ax.plot([], [], "-", color=colours[key], linewidth=6, label=key)
        ax.set(title=title.format(value), xlabel="natural accuracy (%)",
               ylabel="robust accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if any(_error(done, c) is not None for c, _, _ in measures):
        fig.suptitle("mean over seeds, bars: 95% interval", fontsize=9)
    return save(fig, folder, name)


def natural_vs_robust_by_activation(done: pd.DataFrame, per_round: pd.DataFrame,
                                    folder: Path, always: bool = False) -> Path | None:
    """Natural against robust accuracy per activation, one panel per learning-rate schedule:
    drawn for the activation study (always) and for any grid over activations (a reduced
    one)."""
    if not (robust_columns(done) and "activation" in done.columns
            and (always or done["activation"].nunique() > 1)):
        return None
    return natural_vs_robust(done, folder, "natural_vs_robust_by_activation.png",
                              "activation", "schedule", "{} learning rate")


def natural_vs_robust_by_objective(done: pd.DataFrame, per_round: pd.DataFrame,
                                   folder: Path) -> Path | None:
    """Natural against robust accuracy per objective and share of G, one panel per
    partition (the objectives study)."""
    if not (robust_columns(done) and {"objective", "share", "partition"} <= set(done.columns)):
        return None
    labelled = done.assign(objective_share=[f"{o}, share {s:g}" for o, s in
                                            zip(done["objective"], done["share"])])
    return natural_vs_robust(labelled, folder, "natural_vs_robust_by_objective.png",
                              "objective_share", "partition", "partition: {}")


def accuracy_per_round(done: pd.DataFrame, per_round: pd.DataFrame,
                       folder: Path) -> Path | None:
    """The in-run accuracies per round, one line per cell (its mean over seeds)."""
    if per_round.empty:
        return None
    plt = pyplot()
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
    return save(fig, folder, "accuracy_per_round.png")
