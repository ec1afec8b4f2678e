"""The one home for wall-clock measurement. Timings go to their own result files, never into tests:
they change from machine to machine and with load, so a run reports them as ratios taken in one
interleaved run (drift in machine load then hits every contender alike)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping


def interleaved_seconds(fns: Mapping[object, Callable[[], object]], rounds: int = 3, warmup: int = 1,
                        reduce: str = "min") -> dict:
    """Seconds per call of each callable, timed in `rounds` rounds with the callables interleaved
    within each round. `reduce="min"` (the least load-disturbed estimate on a shared CPU) or "median"."""
    if reduce not in ("min", "median"):
        raise ValueError(f"reduce must be 'min' or 'median', got {reduce!r}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    pick = min if reduce == "min" else statistics.median
    return {k: pick(v) for k, v in times.items()}


def seconds(fn: Callable[[], object], rounds: int = 3, warmup: int = 1, reduce: str = "min") -> float:
    """Seconds per call of one callable (see `interleaved_seconds`)."""
    return interleaved_seconds({0: fn}, rounds, warmup, reduce)[0]
