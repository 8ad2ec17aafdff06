"""95% intervals for accuracies: over an evaluation set (Wilson) and over seeds (Student t).

An accuracy measured on n test images is a binomial proportion: its Wilson score interval says
how far another draw of n images could move it. Over several seeds (each its own training run)
the mean has two sources of error: the spread of the runs (a Student-t interval with n - 1
degrees of freedom) and the test images, which every seed shares, so averaging seeds does not
shrink it. Where the image count is known, the mean's half-width is therefore the root sum of
squares of the two (kind "t+wilson"): seeds that happen to agree do not give "± 0.0". A
difference of two cells run with the same seeds is paired by seed, widened in the same way by
Newcombe's interval of the two mean proportions ("t+newcombe"; Newcombe treats the two as
independent samples, which is conservative for two accuracies on the same images); with one
run per cell, the difference gets Newcombe's interval alone.

Pure maths (the standard library and numpy), no scipy: the t quantile is the exact inverse of
Student's t distribution for whole degrees of freedom.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """An estimate and its interval. kind: "t" (mean over seeds, symmetric), "t+wilson" and
    "t+newcombe" (the same, widened by the test images' sampling error; symmetric), "wilson"
    (one proportion over its evaluation set), "newcombe" (difference of two proportions),
    or "none" (a single value with nothing to estimate a spread from)."""

    estimate: float
    low: float
    high: float
    n: int  # seeds for "t" and "t+..."; evaluation images for "wilson"; 1 for "none"
    kind: str

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def verdict(self) -> str:
        """Of a difference `expected minus other`: reproduced when the whole interval lies
        above 0, contradicted when it lies below, inconclusive when it holds 0."""
        if self.low > 0:
            return "reproduced"
        if self.high < 0:
            return "contradicted"
        return "inconclusive"


def _z(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson(successes: int, n: int, level: float = LEVEL) -> Interval:
    """The Wilson score interval of successes / n."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"Wilson interval needs 0 <= successes <= n and n >= 1; got "
                         f"{successes} of {n}")
    z = _z(level)
    p = successes / n
    scale = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / scale
    half = z / scale * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # Exactly 0 (1) at 0 (n) successes; the formula gets there only up to rounding.
    low = 0.0 if successes == 0 else centre - half
    high = 1.0 if successes == n else centre + half
    return Interval(p, low, high, n, "wilson")


def wilson_of_rate(rate: float, n: int, level: float = LEVEL) -> Interval:
    """The Wilson interval of an accuracy already divided by its n (a count in disguise)."""
    return wilson(int(round(rate * n)), n, level)


def _t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with df degrees of freedom (Abramowitz & Stegun 26.7.3
    and 26.7.4: finite sums for whole df)."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2 == 1:
        total, term = 0.0, math.cos(theta)
        if df > 1:
            total = term
            for k in range(3, df - 1, 2):  # cos, 2/3 cos^3, 2*4/(3*5) cos^5, ...
                term *= c2 * (k - 1) / k
                total += term
        return 2 / math.pi * (theta + math.sin(theta) * total)
    total, term = 1.0, 1.0
    for k in range(2, df - 1, 2):  # 1, 1/2 cos^2, 1*3/(2*4) cos^4, ...
        term *= c2 * (k - 1) / k
        total += term
    return math.sin(theta) * total


def t_quantile(level: float, df: int) -> float:
    """The t with P(|T| <= t) = level (the two-sided critical value), by bisection."""
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be a whole number >= 1, got {df}")
    _z(level)  # checks the level
    low, high = 0.0, 1.0
    while _t_two_sided_mass(high, df) < level:
        high *= 2
    for _ in range(200):  # far below float resolution long before the end
        mid = (low + high) / 2
        if _t_two_sided_mass(mid, df) < level:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean of two or more values and its Student-t interval (n - 1 degrees of freedom)."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        raise ValueError(f"a t interval needs at least 2 values, got {x.size}")
    mean = float(x.mean())
    half = t_quantile(level, x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return Interval(mean, mean - half, mean + half, int(x.size), "t")


def over_seeds(values: Sequence[float], examples: float | None = None,
               level: float = LEVEL) -> Interval:
    """The interval of an accuracy over seeds: Student t from two seeds on, widened by the
    Wilson interval of the mean over its `examples` evaluation images where that count is
    known; with one seed the Wilson interval alone (none when the count is unknown)."""
    x = [float(v) for v in values if not _missing(v)]
    if not x:
        raise ValueError("no values to summarize")
    known = not (examples is None or _missing(examples) or examples < 1)
    if len(x) >= 2:
        seeds = t_interval(x, level)
        if not known:
            return seeds
        images = wilson_of_rate(min(max(seeds.estimate, 0.0), 1.0), int(examples), level)
        return _widened(seeds, images.half_width, "t+wilson")
    if not known:
        return Interval(x[0], math.nan, math.nan, 1, "none")
    return wilson_of_rate(x[0], int(examples), level)


def _widened(seeds: Interval, images_half: float, kind: str) -> Interval:
    """A seed interval widened by an independent error of the test images (root sum of
    squares of the two half-widths)."""
    half = math.hypot(seeds.half_width, images_half)
    return Interval(seeds.estimate, seeds.estimate - half, seeds.estimate + half, seeds.n, kind)


def newcombe(a: Interval, b: Interval) -> Interval:
    """Newcombe's hybrid score interval of a - b from the two Wilson intervals (independent
    samples: for two accuracies on the same images it is conservative, as those are
    positively correlated)."""
    d = a.estimate - b.estimate
    low = d - math.sqrt((a.estimate - a.low) ** 2 + (b.high - b.estimate) ** 2)
    high = d + math.sqrt((a.high - a.estimate) ** 2 + (b.estimate - b.low) ** 2)
    return Interval(d, low, high, min(a.n, b.n), "newcombe")


def difference(a: dict[int, float], b: dict[int, float], examples_a: float | None = None,
               examples_b: float | None = None, level: float = LEVEL) -> Interval | None:
    """a - b for two cells given as {seed: accuracy}. Paired by seed (a t interval of the
    per-seed differences) when two or more seeds are common to both, widened by Newcombe's
    interval of the two mean proportions when the image counts are known; with one run each,
    Newcombe's interval over their evaluation sets; None when neither is possible."""
    a = {s: v for s, v in a.items() if not _missing(v)}
    b = {s: v for s, v in b.items() if not _missing(v)}
    common = sorted(a.keys() & b.keys())
    known = not (_missing(examples_a) or _missing(examples_b))
    if len(common) >= 2:
        seeds = t_interval([a[s] - b[s] for s in common], level)
        if not known:
            return seeds
        mean_a, mean_b = (min(max(float(np.mean([v[s] for s in common])), 0.0), 1.0)
                          for v in (a, b))
        images = newcombe(wilson_of_rate(mean_a, int(examples_a), level),
                          wilson_of_rate(mean_b, int(examples_b), level))
        return _widened(seeds, images.half_width, "t+newcombe")
    if len(a) == 1 and len(b) == 1 and known:
        (va,), (vb,) = a.values(), b.values()
        return newcombe(wilson_of_rate(va, int(examples_a), level),
                        wilson_of_rate(vb, int(examples_b), level))
    return None


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def format_interval(iv: Interval, scale: float = 100.0, digits: int = 1) -> str:
    """A table cell: "31.0 ± 2.1" for a symmetric interval (over seeds), "31.0 [28.2, 34.1]"
    for a Wilson or Newcombe interval (asymmetric near 0 and 1), the bare value when there is
    none."""
    v = f"{scale * iv.estimate:.{digits}f}"
    if iv.kind == "none" or math.isnan(iv.low):
        return v
    if iv.kind.startswith("t"):
        return f"{v} ± {scale * iv.half_width:.{digits}f}"
    return f"{v} [{scale * iv.low:.{digits}f}, {scale * iv.high:.{digits}f}]"
