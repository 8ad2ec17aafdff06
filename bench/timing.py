"""Interleaved timing: alternate the contenders so that machine noise hits all of them."""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator

import torch


def sync(device: torch.device) -> None:
    """Wait for queued kernels (CUDA is asynchronous; CPU ops finish before returning)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Run with n intra-op threads (None: one per available core), then restore."""
    before = torch.get_num_threads()
    n = n or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def interleaved(contenders: dict[str, Callable[[], object]], reps: int, warmup: int = 1,
                device: torch.device = torch.device("cpu")) -> dict[str, list[float]]:
    """Seconds per call of each contender: `warmup` untimed rounds, then `reps` rounds in
    which every contender runs once, the order alternating between rounds (ABAB.. then
    BABA..) so that neither side always runs right after the other."""
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            sync(device)
            start = time.perf_counter()
            contenders[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> float:
    """Relative interquartile range: how noisy a series was (0.1 = +-5% around the median)."""
    if len(values) < 4:
        return float("nan")
    q = statistics.quantiles(values, n=4)
    return (q[2] - q[0]) / statistics.median(values)


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median of the per-round ratios: each round's two timings shared the machine's state
    at that moment, so the per-round ratio is the least noisy estimate."""
    return statistics.median(n / d for n, d in zip(numerator, denominator))
