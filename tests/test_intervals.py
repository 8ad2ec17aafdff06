"""The interval maths of common/intervals.py against hand-computed and published values."""

from __future__ import annotations

import math

import pytest

from common.intervals import (Interval, difference, format_interval, newcombe, over_seeds,
                              t_interval, t_quantile, wilson)


@pytest.mark.parametrize("k, n, low, high", [
    # z = 1.959964: centre (k/n + z^2/2n) / (1 + z^2/n), half-width
    # z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2), by hand
    (0, 10, 0.0, 0.277533),
    (5, 10, 0.236593, 0.763407),
    (10, 10, 0.722467, 1.0),
    (1, 1000, 0.000177, 0.005643),
])
def test_wilson_interval_matches_hand_computed_values(k, n, low, high):
    iv = wilson(k, n)
    assert (iv.low, iv.high) == pytest.approx((low, high), abs=2e-6)
    assert iv.estimate == k / n and iv.n == n and iv.kind == "wilson"


def test_wilson_refuses_impossible_counts():
    for k, n in ((11, 10), (-1, 10), (0, 0)):
        with pytest.raises(ValueError, match="successes <= n"):
            wilson(k, n)


@pytest.mark.parametrize("df, t", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764),
                                   (9, 2.2622), (29, 2.0452), (120, 1.9799)])
def test_t_quantile_matches_the_tables(df, t):
    assert t_quantile(0.95, df) == pytest.approx(t, abs=5e-5)


def test_t_interval_of_a_small_sample():
    # mean 0.31, sd 0.01, n 3: half-width 4.302653 * 0.01 / sqrt(3) = 0.0248414
    iv = t_interval([0.30, 0.32, 0.31])
    assert iv.estimate == pytest.approx(0.31)
    assert iv.half_width == pytest.approx(0.0248414, abs=1e-6)
    assert (iv.low, iv.high) == pytest.approx((0.31 - 0.0248414, 0.31 + 0.0248414), abs=1e-6)
    assert iv.kind == "t" and iv.n == 3


def test_over_seeds_uses_t_from_two_seeds_and_wilson_for_one():
    seeds = over_seeds([0.30, 0.32, 0.31], examples=1000)
    # the seeds' t half-width 0.0248414 and Wilson's 0.0286194 (310 of 1,000), in quadrature
    assert seeds.kind == "t+wilson" and seeds.estimate == pytest.approx(0.31)
    assert seeds.half_width == pytest.approx(math.hypot(0.0248414, 0.0286194), abs=1e-6)
    assert over_seeds([0.30, 0.32, 0.31]).kind == "t"  # image count unknown: seeds only
    # seeds that agree leave the test images' error, not "± 0.0"
    agree = over_seeds([0.5, 0.5, 0.5], examples=100)
    assert agree.half_width == pytest.approx(wilson(50, 100).half_width)
    one = over_seeds([0.5], examples=10)
    assert one.kind == "wilson" and (one.low, one.high) == pytest.approx((0.236593, 0.763407),
                                                                          abs=2e-6)
    assert over_seeds([0.5, math.nan], examples=10).kind == "wilson"  # a missing seed
    unknown = over_seeds([0.5])  # one seed, no image count: a value without an interval
    assert unknown.kind == "none" and math.isnan(unknown.low)


def test_newcombe_matches_the_published_example():
    # Newcombe (1998), method 10: 56/70 - 48/80 = 0.2000, interval 0.0524 to 0.3339
    iv = newcombe(wilson(56, 70), wilson(48, 80))
    assert (iv.estimate, iv.low, iv.high) == pytest.approx((0.2, 0.0524, 0.3339), abs=5e-5)


def test_difference_pairs_by_seed_and_falls_back_to_newcombe():
    a = {0: 0.40, 1: 0.42, 2: 0.44}
    b = {0: 0.30, 1: 0.33, 2: 0.36, 3: 0.99}  # seed 3 has no partner: left out
    paired = difference(a, b)
    assert paired.kind == "t" and paired.n == 3
    # per-seed differences 0.10, 0.09, 0.08: mean 0.09, sd 0.01
    assert paired.estimate == pytest.approx(0.09)
    assert paired.half_width == pytest.approx(4.302653 * 0.01 / math.sqrt(3), abs=1e-6)
    # with image counts: widened by Newcombe's interval of the two means (0.42 vs 0.33)
    widened = difference(a, b, 1000, 1000)
    images = newcombe(wilson(420, 1000), wilson(330, 1000)).half_width
    assert widened.kind == "t+newcombe" and widened.estimate == pytest.approx(0.09)
    assert widened.half_width == pytest.approx(math.hypot(paired.half_width, images))
    same = difference({0: 0.4, 1: 0.4}, {0: 0.3, 1: 0.3}, 1000, 1000)  # equal differences
    assert same.half_width == pytest.approx(
        newcombe(wilson(400, 1000), wilson(300, 1000)).half_width)
    single = difference({7: 56 / 70}, {7: 48 / 80}, 70, 80)
    assert single.kind == "newcombe" and single.low == pytest.approx(0.0524, abs=5e-5)
    assert difference({7: 0.5}, {7: 0.4}) is None  # one seed, no image counts
    assert difference({1: 0.5}, {2: 0.4, 3: 0.4}, 10, 10) is None  # nothing comparable


@pytest.mark.parametrize("low, high, verdict", [(0.01, 0.2, "reproduced"),
                                                (-0.2, -0.01, "contradicted"),
                                                (-0.01, 0.2, "inconclusive"),
                                                (0.0, 0.2, "inconclusive")])
def test_verdict_of_a_difference(low, high, verdict):
    assert Interval(0.1, low, high, 3, "t").verdict() == verdict


def test_format_interval():
    assert format_interval(t_interval([0.30, 0.32, 0.31])) == "31.0 ± 2.5"
    assert format_interval(wilson(5, 10)) == "50.0 [23.7, 76.3]"
    assert format_interval(over_seeds([0.5])) == "50.0"
    assert format_interval(Interval(0.812, 0.7, 0.9, 2, "t"), 1, 2) == "0.81 ± 0.10"
