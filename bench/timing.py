"""Timing for the benchmarks: warm caches, repeated calls, the median."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], min_reps: int, min_seconds: float = 0.0) -> float:
    """Median wall time of ``fn()`` over at least ``min_reps`` calls and ``min_seconds`` of
    calls, after one warm-up call."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def median_ms(fn: Callable[[], object], min_reps: int, min_seconds: float = 0.0) -> float:
    return median_seconds(fn, min_reps, min_seconds) * 1e3


def median_us(fn: Callable[[], object], min_reps: int, min_seconds: float = 0.0) -> float:
    return median_seconds(fn, min_reps, min_seconds) * 1e6
