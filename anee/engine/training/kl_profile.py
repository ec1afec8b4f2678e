"""Fit the KL-profile controller (`anee.engine.controllers.kl_profile`) on valid text, in closed form.

1. Profiles: on each window, every token's KL(full || first k layers of the order skipped) for
   k = 0..K and its full-model input to the anchor layer (`skip_profiles`).
2. A ridge map from `profile_features` at the anchor to the K + 1 KLs, fitted on the first
   `fit_windows` windows, for each ridge strength.
3. The budget table, on the other windows (the map has not seen them): for each budget and each
   number m of layers DROPPED for every token, the price at which the tokens' predicted choices
   save the budget's layers plus the controller's own MACs on average (bisection); the m whose
   choices give the lowest perplexity on those windows (profile perplexity: each token scored by
   its own k's pass, the K/V a token's choice gives the others ignored) wins. The ridge strength
   is the one with the lowest mean log-perplexity over the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ...core.bypass import bypass_label
from ...core.scalars import integer
from ..controllers.kl_profile import KLProfileController, depth_options, profile_features
from ..executor import AdaptiveExecutor
from .oracle import lagrangian_price, skip_profiles

DEFAULT_BUDGETS = tuple(round(0.6 + 0.01 * i, 2) for i in range(40))  # 0.60 .. 0.99


@dataclass
class KLProfileFit:
    """The fitted controller and what chose it: the table rows per budget (m, price, predicted saving,
    profile perplexity on the selection windows), the ridge strength per candidate's mean
    log-perplexity, and the correlation of predicted with true KL per k on the selection windows."""

    controller: KLProfileController
    ridge: float
    table: list[dict] = field(default_factory=list)
    ridge_scores: dict[float, float] = field(default_factory=dict)
    correlation: list[float] = field(default_factory=list)


def ridge_map(x: torch.Tensor, y: torch.Tensor, strength: float) -> torch.Tensor:
    """Least squares [F, K] of `y` [N, K] on `x` [N, F] with a ridge of `strength` times the mean
    diagonal of x'x on every column but the last (the bias)."""
    gram = x.T @ x
    penalty = strength * gram.diagonal().mean() * torch.eye(len(gram), dtype=x.dtype)
    penalty[-1, -1] = 0
    return torch.linalg.solve(gram + penalty, x.T @ y)


def fit_kl_profile(executor: AdaptiveExecutor, windows: list[torch.Tensor], order: list[int], max_depth: int = 13,
                   fit_windows: int | None = None, ridges: tuple[float, ...] = (0.01, 0.1, 1.0),
                   max_dropped: int | None = None, budgets: tuple[float, ...] = DEFAULT_BUDGETS) -> KLProfileFit:
    """The controller for the first `max_depth` layers of `order` (the profiler's removal order), fitted
    on `windows` [1, T] of valid text: the map on the first `fit_windows` (default three quarters), m
    (at most `max_dropped`, default about half the depth: the rest stays per token), the price and
    the ridge strength on the rest. Budgets the order cannot
    reach are left out of the table."""
    L = executor.adapter.num_layers
    max_depth = integer("max_depth", max_depth, 1, min(len(order), L) - 1,
                        what=" (fewer than the order's layers and the model's)")
    if len({w.shape for w in windows}) != 1 or len(windows) < 2 or windows[0].shape[0] != 1:
        raise ValueError("fit_kl_profile needs at least two windows [1, T] of one length")
    n_fit = integer("fit_windows", fit_windows if fit_windows is not None else (3 * len(windows)) // 4, 1,
                    len(windows) - 1, what=" (windows given, less one for the selection)")
    max_dropped = integer("max_dropped", min(max_depth // 2 + 1, max_depth - 1) if max_dropped is None else max_dropped,
                          0, max_depth - 1, what=" (max_depth - 1)")
    order = [int(i) for i in order[:max_depth]]
    anchor = min(order)
    T = windows[0].shape[1]
    profiles = skip_profiles(executor, windows, order, list(range(max_depth + 1)), hidden_at=anchor)
    positions = torch.arange(T - 1).repeat(len(windows))
    x = profile_features(torch.from_numpy(profiles.hidden), positions, T)
    y = torch.from_numpy(profiles.kl.T.copy())  # [N, K + 1]
    fit = (torch.arange(len(x)) // (T - 1)) < n_fit
    cost = executor.cost
    contexts = positions[~fit].double() + 1
    skip_fraction, drop_fraction = cost.skip_fraction(contexts), cost.drop_fraction(contexts)
    call_layers = x.shape[1] * (max_depth + 1) / float(cost.layer(contexts).mean())  # one call's MACs in layers
    nll = profiles.nll[:, (~fit).numpy()]
    tokens = np.arange(nll.shape[1])

    def table_for(predicted: np.ndarray) -> list[dict]:
        rows = []
        for b in budgets:
            best = None
            for m in range(max_dropped + 1):
                opts = depth_options(m, max_depth, skip_fraction, drop_fraction)
                need = (1 - b) * L + (max_depth - m) * call_layers  # the controller is asked at K - m layers
                if opts.saved.max() < need:
                    continue
                price = lagrangian_price(predicted[:, m:].T, opts.saved, need)
                pick = (predicted[:, m:] - price * opts.saved).argmin(1)
                ppl = float(np.exp(nll[opts.depths[pick], tokens].mean()))
                if best is None or ppl < best["valid_ppl"]:
                    best = {"budget": b, "dropped": m, "price": price, "mean_depth": float(opts.depths[pick].mean()),
                            "net_saved": float(opts.saved[pick].mean() / L - (max_depth - m) * call_layers / L),
                            "valid_ppl": ppl}
            if best is not None:
                rows.append(best)
        return rows

    candidates = {}
    for strength in ridges:
        weight = ridge_map(x[fit], y[fit], strength)
        rows = table_for((x[~fit] @ weight).numpy())
        if not rows:
            raise ValueError(f"no budget in {budgets[0]}..{budgets[-1]} is reachable by skipping {max_depth} layers")
        candidates[strength] = (weight, rows, float(np.mean([np.log(r["valid_ppl"]) for r in rows])))
    ridge = min(candidates, key=lambda s: candidates[s][2])  # every strength reaches the same budgets
    weight, rows, _ = candidates[ridge]
    predicted = (x[~fit] @ weight).numpy()
    correlation = [float(np.corrcoef(predicted[:, k], profiles.kl[k, (~fit).numpy()])[0, 1])
                   for k in range(1, max_depth + 1)]
    controller = KLProfileController(order, L, weight, torch.tensor([r["budget"] for r in rows], dtype=torch.float64),
                                     torch.tensor([r["dropped"] for r in rows]),
                                     torch.tensor([r["price"] for r in rows], dtype=torch.float64), T,
                                     bypass_label(executor.bypass), skip_fraction, drop_fraction)
    return KLProfileFit(controller, ridge, rows, {s: c[2] for s, c in candidates.items()}, correlation)
