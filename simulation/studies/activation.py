"""The activation study: activation x learning-rate schedule, centralized, with and without
adversarial training."""

from __future__ import annotations

import itertools
from functools import partial

import pandas as pd

from common.activations import NAMES as ACTIVATIONS

from ..figures import natural_vs_robust_by_activation
from ..tables import present
from .study import NO_AT, Cell, Scope, Study, Table, make_cell, scale_base

VARYING_SCHEDULE = "cosine"  # the paper's "varying" LR is unspecified; this is our reading


def cells(scope: Scope, activations=ACTIVATIONS) -> list[Cell]:
    base = scale_base(scope.scale, centralized=True)
    out = [make_cell({"model.activation": "relu", "train.schedule": "fixed", **NO_AT}, base,
                     True, 1, name="baseline-no-at")]
    for act, schedule in itertools.product(activations, ("fixed", VARYING_SCHEDULE)):
        out.append(make_cell({"model.activation": act, "train.schedule": schedule}, base,
                             True, 1))
    return out


def tables(done: pd.DataFrame, acc: list[str]) -> list[Table]:
    cols = present(done, ["cell", "activation", "schedule", *acc])
    return [("Activation x learning rate (centralized)",
             done[cols].sort_values(["schedule", "activation"]))]


STUDY = Study("activation", cells, tables,
              figures=(partial(natural_vs_robust_by_activation, always=True),))
