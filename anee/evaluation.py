"""Budget adherence and equal-saving comparisons for the ANEE controllers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .executor import AdaptiveExecutor


@torch.no_grad()
def budget_adherence(executor: AdaptiveExecutor, controllers: dict, ids: torch.Tensor, budgets: list[float], window: int = 256) -> pd.DataFrame:
    """Realized layer fraction and net saving per controller and budget over ids [1, N] (non-overlapping windows)."""
    rows = []
    chunks = [ids[:, i : i + window] for i in range(0, ids.shape[1] - 1, window)]
    for name, controller in controllers.items():
        for b in budgets:
            layer = full = over = 0.0
            for c in chunks:
                rep = executor.forward(c, controller=controller, budget=b).trace.cost(executor.cost)
                layer += float(rep.layer_macs.sum())
                full += float(rep.full_layer_macs.sum())
                over += float(rep.overhead_macs.sum())
            frac = layer / full
            rows.append({"controller": name, "budget": b, "layer_fraction": frac, "layer_saved_net": 1 - (layer + over) / full,
                         "overhead_fraction": over / full, "abs_error": abs(frac - b)})
    return pd.DataFrame(rows)


def lower_hull(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices (in increasing x) of the lower convex hull of the points (x, y): the best a method can
    do by time-sharing two of its operating points (y = log-perplexity mixes linearly)."""
    order = np.lexsort((y, x))
    hull: list[int] = []
    for i in order:
        if hull and x[hull[-1]] == x[i]:
            continue  # same saving: the lower point (sorted first) is kept
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = (x[hull[-2]], y[hull[-2]]), (x[hull[-1]], y[hull[-1]])
            if (x2 - x1) * (y[i] - y1) - (y2 - y1) * (x[i] - x1) <= 0:  # hull[-1] on or above the chord
                hull.pop()
            else:
                break
        hull.append(i)
    return np.array(hull)


def ppl_at_saving(df: pd.DataFrame, levels: list[float], saved_col: str = "layer_saved_net", hull: bool = False) -> pd.DataFrame:
    """Perplexity of each method at the given net savings, interpolating log-ppl linearly between
    evaluated settings (NaN outside the evaluated range). With `hull=True` only the points on each
    method's lower convex hull are used: every method may time-share two of its operating points, so
    no method wins at a level merely because another's curve has a bump there."""
    rows = []
    for method, g in df.groupby("method"):
        x, y = g[saved_col].to_numpy(float), np.log(g.ppl.to_numpy(float))
        keep = lower_hull(x, y) if hull else np.argsort(x, kind="stable")
        x, y = x[keep], y[keep]
        for s in levels:
            ok = x.min() - 1e-9 <= s <= x.max() + 1e-9
            rows.append({"method": method, "net_saved": s, "ppl": float(np.exp(np.interp(s, x, y))) if ok else float("nan")})
    return pd.DataFrame(rows)
