"""Drawing a report's figures: the helpers the studies' figures share, and the figures of
natural against robust accuracy per activation and of accuracy per round."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .tables import accuracy_columns


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


def natural_vs_robust_by_activation(done: pd.DataFrame, per_round: pd.DataFrame,
                                    folder: Path, always: bool = False) -> Path | None:
    """Natural against robust accuracy, one panel per learning-rate schedule: drawn for the
    activation study (always) and for any grid over activations (a reduced one)."""
    robust = robust_columns(done)
    if not (robust and "activation" in done.columns
            and (always or done["activation"].nunique() > 1)):
        return None
    plt = pyplot()
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
    return save(fig, folder, "natural_vs_robust_by_activation.png")


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
