"""The paper's claims as comparisons of two cells, and their verdicts from the intervals.

A claim says that one cell (`expected`) has a higher accuracy than others (`other`); the cells
are picked from a report's table by the values of its config columns, so a claim applies to
whichever study holds such cells (the reduced activation grid as well as the activation study)
and is left out where a study holds none, or where `expected` is not exactly one cell. Each
claim is checked under each of its measures: robustness both under the paper's protocol and
under the strongest attack of the final evaluation, since the two can disagree.

The verdict of a comparison comes from the 95% interval of expected minus other (see
common/intervals.py: paired over seeds, or Newcombe's interval over the evaluation images for
one seed each): reproduced when the interval lies above 0, contradicted when below,
inconclusive when it holds 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from common.intervals import Interval, difference

from .studies import VARYING_SCHEDULE

NATURAL = ("natural_acc",)
ROBUST = ("fgsm_noise_acc", "strongest")  # the paper's protocol; the strongest attack
# The paper's claims are about its own recipe (the mixed objective): a study that also holds
# other objectives (the objectives study) must not compare across them.
AT_RELU_FIXED = {"adversarial": True, "activation": "relu", "schedule": "fixed",
                 "objective": "mixed"}
NO_HELP = ("raw", "none")  # fl.sharing of a cell without help when its share is 0
CENTRE = {**AT_RELU_FIXED, "partition": "iid", "share": 0.0,  # AT, no skew, no sharing
          "sharing": NO_HELP}


@dataclass(frozen=True)
class Claim:
    text: str
    measures: tuple[str, ...]
    expected: dict[str, Any]  # column -> value, or a tuple of allowed values
    other: dict[str, Any]


CLAIMS = (
    Claim("Adversarial training raises robustness over no AT", ROBUST, CENTRE,
          {**CENTRE, "adversarial": False}),
    Claim("With a fixed learning rate ReLU is best overall", NATURAL + ROBUST, CENTRE,
          {"adversarial": True, "schedule": "fixed", "partition": "iid", "share": 0.0}),
    *(Claim(f"With a varying learning rate {name} gains robustness over ReLU", ROBUST,
            {"adversarial": True, "activation": act, "schedule": VARYING_SCHEDULE},
            {"adversarial": True, "activation": "relu", "schedule": VARYING_SCHEDULE})
      for name, act in (("TeLU", "telu"), ("CeLU", "celu"))),
    Claim("With a varying learning rate TeLU and CeLU lose natural accuracy to ReLU", NATURAL,
          {"adversarial": True, "activation": "relu", "schedule": VARYING_SCHEDULE},
          {"adversarial": True, "activation": ("telu", "celu"),
           "schedule": VARYING_SCHEDULE}),
    Claim("Non-IID data without sharing loses robustness against IID", ROBUST, CENTRE,
          {**CENTRE, "partition": ("classes", "dirichlet")}),
    *(Claim(f"Sharing 40% of G recovers robustness ({partition})", ROBUST,
            {**AT_RELU_FIXED, "partition": partition, "share": 0.4, "sharing": "raw"},
            {**AT_RELU_FIXED, "partition": partition, "share": 0.0, "sharing": NO_HELP})
      for partition in ("classes", "dirichlet")),
    *(Claim(f"The paper's recipe with 40% sharing beats CalFAT without sharing ({partition})",
            NATURAL + ROBUST,
            {"objective": "mixed", "partition": partition, "share": 0.4},
            {"objective": "calfat", "partition": partition, "share": 0.0})
      for partition in ("iid", "classes")),
)


def study_claims(comparisons: tuple[tuple, ...]) -> tuple[Claim, ...]:
    """A study's own comparisons (Study.claims: (text, measures, expected, other) tuples,
    since the studies cannot import this module) as claims."""
    return tuple(Claim(*c) for c in comparisons)


def _matching(done: pd.DataFrame, selector: dict[str, Any]) -> list[str]:
    """The cells whose columns hold the selector's values (any of a tuple's)."""
    if not set(selector) <= set(done.columns):
        return []
    keep = pd.Series(True, index=done.index)
    for column, wanted in selector.items():
        allowed = wanted if isinstance(wanted, tuple) else (wanted,)
        keep &= done[column].isin(allowed)
    return list(dict.fromkeys(done.loc[keep, "cell"]))


def _per_seed(done: pd.DataFrame, cell: str, measure: str
              ) -> tuple[dict[int, float], float | None]:
    """{seed: value} of a cell, and the evaluation images of its (first) run."""
    rows = done[(done["cell"] == cell) & done[measure].notna()]
    values = dict(zip(rows["seed"].astype(int), rows[measure].astype(float)))
    examples = rows["eval_examples"].iloc[0] if "eval_examples" in rows and len(rows) else None
    return values, (None if examples is None or pd.isna(examples) else float(examples))


def compare(done: pd.DataFrame, a: str, b: str, measure: str) -> Interval | None:
    """The interval of cell a minus cell b under measure (None: nothing to compare)."""
    if measure not in done.columns:
        return None
    (va, na), (vb, nb) = _per_seed(done, a, measure), _per_seed(done, b, measure)
    return difference(va, vb, na, nb)


def evaluate_claims(done: pd.DataFrame, claims: tuple[Claim, ...] = CLAIMS) -> pd.DataFrame:
    """One row per claim, measure and compared cell: the difference's interval and verdict.
    `done`: the finished runs, one row per cell and seed."""
    rows = []
    for claim in claims:
        expected = _matching(done, claim.expected)
        if len(expected) != 1:
            continue  # this study does not hold the claim's cell, or not just one
        for other in _matching(done, claim.other):
            if other == expected[0]:
                continue
            for measure in claim.measures:
                interval = compare(done, expected[0], other, measure)
                if interval is None:
                    continue
                rows.append({"claim": claim.text, "measure": measure, "cell": expected[0],
                             "compared with": other, "difference": interval,
                             "verdict": interval.verdict()})
    return pd.DataFrame(rows, columns=["claim", "measure", "cell", "compared with",
                                       "difference", "verdict"])
