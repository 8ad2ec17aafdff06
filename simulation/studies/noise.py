"""The noise study: training noise on/off, centralized; the final evaluation sweeps the
test-time noise sigma."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..figures import pyplot, save
from ..tables import present
from .study import NO_AT, Cell, Scope, Study, Table, make_cell, scale_base

NOISE_LEVELS = (0.0, 0.03, 0.05, 0.1)  # test-time sigma of the noise study


def cells(scope: Scope) -> list[Cell]:
    """Training noise on/off; test-time sigma is swept in the final evaluation."""
    base = scale_base(scope.scale, centralized=True)
    sigma = base.get("train.noise-std", 0.05) or 0.05
    out = [make_cell(dict(NO_AT), base, True, 1, name="baseline-no-at")]
    for noise in (sigma, 0.0):
        out.append(make_cell({"train.noise-std": noise}, base, True, 1))
    return out


def tables(done: pd.DataFrame, acc: list[str]) -> list[Table]:
    noise_cols = sorted(c for c in done.columns if "_noise_acc@" in c)
    cols = present(done, ["cell", "train_noise", "adversarial", "natural_acc", *noise_cols,
                          "masking_flags"])
    return [("Test-time noise sigma x training noise (centralized)", done[cols])]


def robust_vs_test_noise(done: pd.DataFrame, per_round: pd.DataFrame, folder: Path
                         ) -> Path | None:
    """Robust accuracy (FGSM, EOT-PGD) against the test-time sigma, one line per cell."""
    cols = sorted((c for c in done.columns if c.startswith("fgsm_noise_acc@")),
                  key=lambda c: float(c.split("@")[1]))
    eot = sorted((c for c in done.columns if c.startswith("eot_pgd20_noise_acc@")),
                 key=lambda c: float(c.split("@")[1]))
    if not cols:
        return None
    fig, ax = pyplot().subplots(figsize=(6, 4.2))
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
    return save(fig, folder, "robust_vs_test_noise.png")


STUDY = Study("noise", cells, tables, figures=(robust_vs_test_noise,),
              noise_levels=NOISE_LEVELS)
