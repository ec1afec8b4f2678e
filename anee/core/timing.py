"""The one home for wall-clock measurement. Timings go to their own result files, never into tests:
they change from machine to machine and with load, so a run reports them as ratios taken in one
interleaved run (drift in machine load then hits every contender alike). On a GPU the device is
synchronised before every clock read (`anee.core.devices.synchronize`): CUDA kernels run
asynchronously, and without it a clock measures how fast work is queued, not done."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch

from .devices import synchronize


def interleaved_seconds(fns: Mapping[object, Callable[[], object]], rounds: int = 3, warmup: int = 1,
                        reduce: str = "min") -> dict:
    """Seconds per call of each callable, timed in `rounds` rounds with the callables interleaved
    within each round. `reduce="min"` (the least load-disturbed estimate on a shared CPU) or "median"."""
    if reduce not in ("min", "median"):
        raise ValueError(f"reduce must be 'min' or 'median', got {reduce!r}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    synchronize()
    times: dict = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            synchronize()
            t0 = time.perf_counter()
            fn()
            synchronize()
            times[k].append(time.perf_counter() - t0)
    pick = min if reduce == "min" else statistics.median
    return {k: pick(v) for k, v in times.items()}


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to `n` for the block (None: unchanged), restored on exit,
    also after an exception. Decode timings take a fixed count; work around them need not."""
    if n is not None and n < 1:
        raise ValueError(f"threads must be a positive integer or None, got {n!r}")
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def seconds(fn: Callable[[], object], rounds: int = 3, warmup: int = 1, reduce: str = "min") -> float:
    """Seconds per call of one callable (see `interleaved_seconds`)."""
    return interleaved_seconds({0: fn}, rounds, warmup, reduce)[0]


class Stopwatch:
    """Wall seconds of a `with` block, the device synchronised at both ends (one-off timings, e.g.
    the command line's tokens/s; comparisons use `interleaved_seconds`)."""

    seconds: float = 0.0

    def __enter__(self) -> Stopwatch:
        synchronize()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize()
        self.seconds = time.perf_counter() - self._t0
