"""Evaluation helpers for notebook 05: perplexity + realized routing on test, and wall-clock timing.

Perplexity uses `anee.perplexity.evaluate` (token-weighted sliding windows); the thresholds are always
calibrated on validation windows passed in by the caller, never on the test tokens.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from ..perplexity import MethodOutput, evaluate
from .model import HierarchicalModel, HierOutput


@dataclass
class SettingResult:
    row: dict  # one row of the capacity / exit tables
    ffn_usage: torch.Tensor  # [L] realized FFN fraction per layer (processed tokens) on test
    allocated: torch.Tensor  # [L] per-layer capacities the thresholds were calibrated for
    exit_depths: torch.Tensor  # [N] layers run per test token (L = no exit)
    thresholds: torch.Tensor  # [L]


def evaluate_setting(model: HierarchicalModel, test_ids: torch.Tensor, calib: torch.Tensor, capacity: float = 1.0,
                     exits: bool = False, exit_threshold: float = 0.5, window: int = 256, stride: int = 256,
                     label: str = "") -> SettingResult:
    """Calibrate on `calib` [N, T] (validation windows), then score `test_ids` [1, M] with the sparse path."""
    thresholds = model.calibrate(calib, capacity, exits, exit_threshold)
    routed = capacity < 1.0
    outs: list[HierOutput] = []

    def run(ids):
        out = model.sparse_forward(ids, thresholds if routed else None, exits, exit_threshold)
        outs.append(out)
        return MethodOutput(out.logits, model.cost_report(out, routed=routed))

    res = evaluate(run, test_ids, window, stride, name="hierarchical", setting=label)
    ffn = sum(o.ffn.sum((0, 1)).double() for o in outs)
    act = sum(o.active.sum((0, 1)).double() for o in outs)
    depths = torch.cat([o.exit_depth.flatten() for o in outs])
    L = model.num_layers
    row = {
        "setting": label, "capacity": capacity, "exits": exits, "lens": "tuned" if model.tuned_lens else "logit",
        "ppl": res.ppl, "tokens": res.tokens,
        "realized_capacity": float(ffn.sum() / act.sum()),
        "layer_saved_net": res.layer_saved_net, "total_saved_net": res.total_saved_net,
        "layer_speedup": 1 / (1 - res.layer_saved_net), "compute_speedup": 1 / (1 - res.total_saved_net),
        "exited_fraction": float((depths < L).double().mean()), "mean_depth": float(depths.double().mean()),
    }
    return SettingResult(row, ffn / act.clamp_min(1), model.layer_capacities(capacity), depths, thresholds)


def median_seconds(fn, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall-clock seconds of `fn()` (after `warmup` calls)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def best_seconds_interleaved(fns: dict, rounds: int = 3, warmup: int = 1) -> dict:
    """Minimum wall-clock seconds of each callable over `rounds` rounds, the callables interleaved
    within every round so machine-load drift hits all of them alike (the minimum is the least
    load-disturbed estimate on a shared CPU)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


@torch.no_grad()
def wallclock(model: HierarchicalModel, ids: torch.Tensor, thresholds: torch.Tensor | None, exits: bool = False,
              repeats: int = 3) -> float:
    """Median seconds of one sparse (inference-path) forward over ids [B, T]."""
    return median_seconds(lambda: model.sparse_forward(ids, thresholds, exits), repeats)
