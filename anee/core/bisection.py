"""Bisection on a monotone predicate: the one loop behind every knob tuned to meet a target (a
capacity's per-layer spread, a compute speedup, a Lagrangian price, a routing cost bias)."""

from __future__ import annotations

from collections.abc import Callable


def bisect(below: Callable[[float], bool], lo: float, hi: float, iters: int) -> tuple[float, float]:
    """Narrow [lo, hi] `iters` times around where `below(x)` turns from True (x still below the
    target) to False, for a `below` that is True up to some point and False after it. Returns the
    last (lo, hi): `hi` is the tightest bound known to be past the target, `lo` the tightest before it."""
    for _ in range(iters):
        mid = (lo + hi) / 2
        if below(mid):
            lo = mid
        else:
            hi = mid
    return lo, hi


def grow_upper(below: Callable[[float], bool], hi: float, limit: float = 1e6) -> float:
    """Double `hi` while `below(hi)` (and `hi < limit`): an upper end for `bisect` when none is known."""
    while below(hi) and hi < limit:
        hi *= 2
    return hi
