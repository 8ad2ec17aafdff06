"""The non-IID study: partition x share alpha of the shared pool G, federated."""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd

from ..figures import pyplot, robust_columns, save
from ..tables import present
from .study import NO_AT, SHARED_POOL, Cell, Scope, Study, Table, make_cell, scale_base

SHARES = (0.0, 0.2, 0.4, 0.6)


def cells(scope: Scope) -> list[Cell]:
    # Every cell, alpha = 0 and the baseline too, holds G back from the clients: so all
    # cells' clients hold the same images and only the sharing differs.
    base = scale_base(scope.scale, centralized=False)
    base.setdefault("fl.shared-pool", SHARED_POOL)
    out = [make_cell({"fl.partition": "iid", "fl.shared-share": 0.0, **NO_AT}, base, False,
                     scope.clients, name="baseline-no-at")]
    for partition, share in itertools.product(("iid", "classes", "dirichlet"), SHARES):
        out.append(make_cell({"fl.partition": partition, "fl.shared-share": share}, base,
                             False, scope.clients))
    return out


def tables(done: pd.DataFrame, acc: list[str]) -> list[Table]:
    cols = present(done, ["cell", "partition", "share", *acc])
    return [("Data sharing x partition (federated)",
             done[cols].sort_values(["partition", "share"]))]


def accuracy_vs_share(done: pd.DataFrame, per_round: pd.DataFrame, folder: Path
                      ) -> Path | None:
    """Natural and robust accuracy against the share alpha, one line per partition."""
    robust = robust_columns(done)
    if not (robust and "share" in done.columns):
        return None
    column = robust[-1] if len(robust) > 1 else robust[0]
    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4.2), sharey=True)
    at = done[done["adversarial"] == True]  # noqa: E712
    for partition, part in at.groupby("partition"):
        part = part.sort_values("share")
        axes[0].plot(100 * part["share"], 100 * part["natural_acc"], "o-", label=partition)
        axes[1].plot(100 * part["share"], 100 * part[column], "o-", label=partition)
    axes[0].set(title="natural accuracy", xlabel="share alpha of G per client (%)",
                ylabel="accuracy (%)")
    axes[1].set(title=f"robust accuracy ({column})", xlabel="share alpha of G per client (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    return save(fig, folder, "accuracy_vs_share.png")


STUDY = Study("noniid", cells, tables, figures=(accuracy_vs_share,))
