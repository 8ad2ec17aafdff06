"""The objectives study: {mixed, trades, mart, calfat} x partition x sharing, federated, and
the paper's claim that its recipe with sharing beats CalFAT without."""

from __future__ import annotations

import itertools

import pandas as pd

from ..figures import natural_vs_robust_by_objective
from ..tables import accuracy_columns, estimates, present
from .study import SHARED_POOL, Cell, Scope, Study, Table, make_cell, scale_base, slug

# The published baselines as published (no noise copies, hard labels) against the paper's
# recipe, with and without the paper's 40% share of G.
OBJECTIVES = ("mixed", "trades", "mart", "calfat")
OBJECTIVE_SHARES = (0.0, 0.4)
PUBLISHED = {"train.noise-std": 0.0, "train.label-smoothing": 0.0}


def cells(scope: Scope) -> list[Cell]:
    """{mixed, trades, mart, calfat} x {IID, 2 classes per client} x share {0, 0.4} of G,
    plus fgsm-rs on IID without sharing. As in the non-IID study, every cell holds the same
    G back, so all cells' clients hold the same images; only the objective and the sharing
    differ. The other objectives run as published: no noise copies, hard labels."""
    base = scale_base(scope.scale, centralized=False)
    base.setdefault("fl.shared-pool", SHARED_POOL)
    out = []
    for objective, partition, share in itertools.product(OBJECTIVES, ("iid", "classes"),
                                                         OBJECTIVE_SHARES):
        varied = {"train.objective": objective, "fl.partition": partition,
                  "fl.shared-share": share, **({} if objective == "mixed" else PUBLISHED)}
        out.append(make_cell(varied, base, False, scope.clients,
                             name=f"{objective}-{partition}-share={slug(share)}"))
    out.append(make_cell({"train.objective": "fgsm-rs", "fl.partition": "iid",
                          "fl.shared-share": 0.0, **PUBLISHED}, base, False, scope.clients,
                         name="fgsm-rs-iid-share=0.0"))
    return out


def claim_table(done: pd.DataFrame, accuracy: list[str]) -> pd.DataFrame:
    """The paper's federated claim, per partition: mixed with 40% sharing against CalFAT
    without sharing, their natural and robust accuracies and the difference."""
    rows = []
    for partition, part in done.groupby("partition", sort=True):
        pick = {name: part[(part["objective"] == objective) & (part["share"] == share)]
                for name, objective, share in (("mixed, share 0.4", "mixed", 0.4),
                                               ("calfat, share 0", "calfat", 0.0))}
        if any(frame.empty for frame in pick.values()):
            continue
        values = {name: frame.iloc[0][accuracy] for name, frame in pick.items()}
        for name, v in values.items():
            rows.append({"partition": partition, "cells": name, **v.to_dict()})
        diff = values["mixed, share 0.4"] - values["calfat, share 0"]
        rows.append({"partition": partition, "cells": "difference (points)", **diff.to_dict()})
    return pd.DataFrame(rows)


def tables(done: pd.DataFrame, acc: list[str]) -> list[Table]:
    cols = present(done, ["cell", "objective", "partition", "share", *acc, "strongest",
                          "overfit_rounds"])
    return [("Objective x partition x sharing (federated)",
             done[cols].sort_values(["partition", "share", "objective"])),
            ("The paper's claim: mixed with 40% sharing vs CalFAT without sharing",
             claim_table(estimates(done),  # means over seeds; intervals: the claims
                         present(done, [*accuracy_columns(done), "strongest"])))]


STUDY = Study("objectives", cells, tables, figures=(natural_vs_robust_by_objective,))
