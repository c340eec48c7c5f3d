"""Timing for the benchmarks: warm caches, repeated calls, the median."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


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


def copy_bandwidth_gbs(nbytes: int, min_reps: int, min_seconds: float) -> float:
    """Bytes per second (in GB/s) of ``copy_`` between two buffers of about ``nbytes``: the
    bandwidth the benchmarks' floors divide by."""
    src = torch.rand(max(nbytes // 4, 1024))
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), min_reps, min_seconds)
    return src.numel() * 4 / (ms * 1e-3) / 1e9


@contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with ``num_threads`` torch threads (None: as they are), then restore them, so
    a benchmark's thread count does not leak into the next one run in the same process."""
    saved = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
