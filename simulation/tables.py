"""The report table's columns, as the reports and the studies' tables pick them."""

from __future__ import annotations

import pandas as pd

from common.intervals import Interval

# Suffix of a run's mean traffic per round in the report table, one per rounds.csv traffic
# column (common.run_folder.TRAFFIC_COLUMNS), e.g. bytes_up_data_per_round.
PER_ROUND = "_per_round"


def finished(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of runs that finished."""
    return table[table["status"] == "finished"] if "status" in table else table


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


def present(table: pd.DataFrame, columns: list[str]) -> list[str]:
    return [c for c in columns if c in table.columns]


def estimates(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary with each Interval replaced by its estimate (the mean over seeds)."""
    return summary.map(lambda v: v.estimate if isinstance(v, Interval) else v)


BOUNDS = ("_low", "_high")  # suffixes of an estimate's interval bounds (estimates_with_bounds)


def estimates_with_bounds(summary: pd.DataFrame) -> pd.DataFrame:
    """estimates(), plus `<column>_low` and `<column>_high` for every column that holds
    intervals: what the figures draw as error bars."""
    out = estimates(summary)
    for column in summary.columns:
        values = summary[column]
        if values.map(lambda v: isinstance(v, Interval)).any():
            for suffix, bound in zip(BOUNDS, ("low", "high")):
                out[column + suffix] = values.map(
                    lambda v, b=bound: getattr(v, b) if isinstance(v, Interval) else float("nan"))
    return out
