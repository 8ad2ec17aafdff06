"""Any grid: --grid key=v1,v2 --grid key2=a,b (the product of all), centralized or federated."""

from __future__ import annotations

import itertools
from functools import partial

import pandas as pd

from common.config import key_type

from ..figures import natural_vs_robust_by_activation
from ..overrides import UsageError, parse_assignment
from ..tables import present
from .study import Cell, Scope, Study, Table, make_cell, scale_base


def cells(scope: Scope) -> list[Cell]:
    if not scope.grid:
        raise UsageError("the grid study needs at least one --grid key=v1,v2,...")
    axes = []
    for spec in scope.grid:
        key, values = spec.split("=", 1) if "=" in spec else (spec, "")
        options = [parse_assignment(f"{key}={v}")[1] for v in values.split(",") if v.strip()]
        if not options:
            raise UsageError(f"--grid {spec!r} lists no values; write key=v1,v2")
        axes.append([(key.strip(), v) for v in options])
    base = scale_base(scope.scale, scope.centralized)
    return [make_cell(dict(combo), base, scope.centralized, scope.clients)
            for combo in itertools.product(*axes)]


def tables(done: pd.DataFrame, acc: list[str]) -> list[Table]:
    varied = [c for c in done.columns if key_type(c) is not None]  # the grid's axes
    return [("All cells", done[present(done, ["cell", *varied, *acc])])]


# A grid over activations is a reduced activation study: it gets that study's figure.
STUDY = Study("grid", cells, tables,
              figures=(partial(natural_vs_robust_by_activation, always=False),))
