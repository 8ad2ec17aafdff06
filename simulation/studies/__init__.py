"""The paper's studies, one module each (its cells at paper, CPU or toy scale, its tables and
its figures: a `Study`, see study.py); a new study is one new module and one entry here."""

from __future__ import annotations

import fnmatch

from ..overrides import UsageError
from . import activation, grid, noise, noniid, objectives, sharing
from .activation import VARYING_SCHEDULE
from .noise import NOISE_LEVELS
from .noniid import SHARES
from .objectives import PUBLISHED
from .study import FINAL_EVAL_LIMIT, SCALES, SHARED_POOL, Cell, Scope, Study, scale_base

STUDIES: dict[str, Study] = {s.name: s for s in (
    activation.STUDY, noniid.STUDY, noise.STUDY, objectives.STUDY, sharing.STUDY,
    grid.STUDY)}


def get_study(name: str) -> Study:
    if name not in STUDIES:
        raise UsageError(f"unknown study {name!r}; valid: {', '.join(STUDIES)}")
    return STUDIES[name]


def study_cells(study: str, scale: str, grid: list[str] | None = None,
                centralized: bool = False, clients: int = 10) -> list[Cell]:
    return get_study(study).cells(Scope(scale, clients, tuple(grid or ()), centralized))


def select_cells(cells: list[Cell], patterns: str) -> list[Cell]:
    """The cells whose names match one of the comma-separated shell patterns, in study
    order; a pattern that matches no cell is an error naming the cells there are."""
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    names = [c.name for c in cells]
    unmatched = [p for p in wanted if not fnmatch.filter(names, p)]
    if not wanted or unmatched:
        raise UsageError(f"--cells {patterns!r}: {', '.join(unmatched) or 'no pattern'} "
                         f"matches no cell of this study; its cells: {', '.join(names)}")
    return [c for c in cells if any(fnmatch.fnmatchcase(c.name, p) for p in wanted)]


__all__ = ["FINAL_EVAL_LIMIT", "NOISE_LEVELS", "PUBLISHED", "SCALES", "SHARED_POOL", "SHARES",
           "STUDIES", "VARYING_SCHEDULE", "Cell", "Scope", "Study", "get_study",
           "scale_base", "select_cells", "study_cells"]
