"""The sharing study (beyond the paper, its open question 3): how much of raw sharing's gain in
natural and robust accuracy does each privacy-preserving mode of fl.sharing recover, at what
traffic?

{none, raw, means, server} x {2 classes per client, Dirichlet(0.5)}, federated, plus an IID
reference without sharing. As in the non-IID study every cell holds the same pool G back from
its clients, so all cells' clients hold the same images and only what helps them differs: raw
sends each client the paper's 40% of G, means the pool of the clients' averages (common.means),
server fine-tunes on G after each aggregation, none does nothing.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from common.intervals import Interval

from ..figures import natural_vs_robust
from ..tables import PER_ROUND, present
from .study import SHARED_POOL, Cell, Scope, Study, Table, make_cell, scale_base

MODES = ("none", "raw", "means", "server")
HELPERS = ("raw", "means", "server")  # the modes compared with none
PARTITIONS = ("classes", "dirichlet")
RAW_SHARE = 0.4  # the paper's alpha
MB = 1e6


def cells(scope: Scope) -> list[Cell]:
    base = scale_base(scope.scale, centralized=False)
    base.setdefault("fl.shared-pool", SHARED_POOL)
    out = []
    for partition in PARTITIONS:
        for mode in MODES:
            varied = {"fl.partition": partition, "fl.sharing": mode,
                      "fl.shared-share": RAW_SHARE if mode == "raw" else 0.0}
            out.append(make_cell(varied, base, False, scope.clients,
                                 name=f"{mode}-{partition}"))
    out.append(make_cell({"fl.partition": "iid", "fl.sharing": "raw", "fl.shared-share": 0.0},
                         base, False, scope.clients, name="reference-iid"))
    return out


def robust_column(done: pd.DataFrame) -> str | None:
    """The robust accuracy of the tables: worst_acc (robust under every L-inf attack of the
    final evaluation at once), else the strongest single attack."""
    return next((c for c in ("worst_acc", "strongest") if c in done.columns), None)


def traffic(row: pd.Series) -> dict[str, float]:
    """MB per round a client set sends up and the server sends down, model and data, from
    simulation.report's per-round means."""
    def mb(column: str) -> float:
        value = row.get(f"{column}{PER_ROUND}", math.nan)
        value = value.estimate if isinstance(value, Interval) else value
        return float(value) / MB if value is not None and not pd.isna(value) else math.nan

    up_model, down_model, up_data, down_data = (mb(c) for c in (
        "bytes_up_model", "bytes_down_model", "bytes_up_data", "bytes_down_data"))
    return {"MB up/round": up_model + up_data, "MB down/round": down_model + down_data,
            "data MB up/round": up_data, "data MB down/round": down_data}


def _estimate(value) -> float:
    return value.estimate if isinstance(value, Interval) else float(value)


def recovery_table(done: pd.DataFrame, robust: str) -> pd.DataFrame:
    """Per partition and helping mode: its gain over none in natural and robust accuracy
    (points, means over seeds) and the fraction of raw's gain it recovers (mode - none) /
    (raw - none), with its traffic. The intervals of the gains are in the claims section."""
    rows = []
    for partition in PARTITIONS:
        part = done[done["partition"] == partition]
        by_mode = {m: part[part["sharing"] == m].iloc[0] for m in MODES
                   if (part["sharing"] == m).sum() == 1}
        if "none" not in by_mode:
            continue
        base = by_mode["none"]
        for mode in (m for m in HELPERS if m in by_mode):
            row = {"partition": partition, "sharing": mode}
            for column, label in (("natural_acc", "natural"), (robust, "robust")):
                gain = _estimate(by_mode[mode][column]) - _estimate(base[column])
                row[f"{label} gain (points)"] = 100 * gain
                if "raw" in by_mode:
                    raw_gain = _estimate(by_mode["raw"][column]) - _estimate(base[column])
                    row[f"{label}: of raw's gain"] = gain / raw_gain if raw_gain else math.nan
            rows.append({**row, **traffic(by_mode[mode])})
    return pd.DataFrame(rows)


def tables(done: pd.DataFrame, acc: list[str]) -> list[Table]:
    robust = robust_column(done)
    cols = present(done, ["cell", "partition", "sharing", "share", "natural_acc",
                          *([robust] if robust else []), *acc])
    cols = list(dict.fromkeys(cols))
    per_cell = done[cols].copy()
    per_cell = pd.concat([per_cell, pd.DataFrame([traffic(r) for _, r in done.iterrows()],
                                                 index=done.index)], axis=1)
    out = [("Sharing mode x partition (federated)",
            per_cell.sort_values(["partition", "sharing"]))]
    if robust and {"sharing", "partition"} <= set(done.columns):
        out.append((f"How much of raw sharing's gain over none each mode recovers ({robust}; "
                    "gains in points; their 95% intervals in the claims)",
                    recovery_table(done, robust)))
    return out


def mode_label(row: pd.Series) -> str:
    """A sharing mode with the data it moved over a run, both directions (without the
    model's traffic, the same in every mode)."""
    t = traffic(row)
    rounds = _estimate(row["rounds"]) if "rounds" in row else math.nan
    data = (t["data MB up/round"] + t["data MB down/round"]) * rounds
    if math.isnan(data):
        return row["sharing"]
    return f"{row['sharing']}: " + (f"{data:.2f} MB of data" if data else "no data")


def natural_vs_robust_by_sharing(done: pd.DataFrame, per_round: pd.DataFrame, folder: Path
                                 ) -> Path | None:
    """Natural against robust accuracy per sharing mode, each mean with its 95% interval, one
    panel per partition; the legend gives the data each mode moved over a run (the model's
    traffic is the same in every mode)."""
    if not (robust_column(done) and {"sharing", "partition"} <= set(done.columns)):
        return None
    labelled = done.assign(sharing_traffic=[mode_label(r) for _, r in done.iterrows()])
    return natural_vs_robust(labelled, folder, "natural_vs_robust_by_sharing.png",
                             "sharing_traffic", "partition", "partition: {}")


# Each helping mode against none on the same partition, natural and robust: the intervals of
# the gains whose ratios recovery_table gives.
COMPARISONS = tuple(
    (f"Beyond the paper: fl.sharing={mode} raises accuracy over none ({partition})",
     ("natural_acc", "worst_acc", "strongest"),
     {"sharing": mode, "partition": partition}, {"sharing": "none", "partition": partition})
    for partition in PARTITIONS for mode in HELPERS)

STUDY = Study("sharing", cells, tables, figures=(natural_vs_robust_by_sharing,),
              claims=COMPARISONS)
