"""How much could *any* per-token allocation of skipped layers gain over static removal?

A hindsight upper bound: run the model with the `k` least influential layers skipped for every
token, for each k in a range, and record each token's KL(full || skipped_k). An oracle then gives
every token its own k, minimising total KL subject to a mean net saving (K/V-only path of skipped
layers and a per-token controller overhead charged), found by bisection on a Lagrange multiplier.

Two simplifications make it optimistic, which is what a bound should be: the oracle sees the
outcome before choosing, and it ignores that a token's choice changes the K/V other tokens attend to.
The allocation uses the KL to the full model, never the label, so it cannot win by picking lucky
predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...core.actions import PROCESS, SKIP, pattern_decisions
from ...core.bisection import bisect, grow_upper
from ...core.divergence import KLReference, log_probs, nll_log_probs
from ..executor import AdaptiveExecutor
from ..prefix_memo import WindowPasses


@dataclass
class SkipProfiles:
    """Per-token KL and NLL [K, N] for each number of statically skipped layers in `skips` (and, when
    asked for, each token's full-model input to one layer [N, D])."""

    skips: np.ndarray  # [K]
    kl: np.ndarray  # [K, N]
    nll: np.ndarray  # [K, N]
    hidden: np.ndarray | None = None  # [N, D] the full model's input to layer `hidden_at`


@torch.no_grad()
def skip_profiles(executor: AdaptiveExecutor, windows: list[torch.Tensor], order: list[int], skips: list[int],
                  hidden_at: int | None = None) -> SkipProfiles:
    """Skip the first k layers of `order` for every token of each window [1, T]; score positions 0..T-2.
    Each pass resumes from the earlier pass (the full one or a shorter skip set) that agrees with it on
    the most leading layers (`WindowPasses`: bit for bit the whole pass)."""
    L = executor.adapter.num_layers
    kl_rows, nll_rows, hidden = [[] for _ in skips], [[] for _ in skips], []
    for w in windows:
        passes = WindowPasses(executor, w)
        reference = KLReference(passes.forward(pattern_decisions([PROCESS] * L, w.shape[1]))[0, :-1])
        if hidden_at is not None:
            hidden.append(passes.layer_inputs(0)[hidden_at][0, :-1].float())
        for i, k in enumerate(skips):
            skipped = set(order[:k])
            pattern = [SKIP if j in skipped else PROCESS for j in range(L)]
            logp = log_probs(passes.forward(pattern_decisions(pattern, w.shape[1]))[0, :-1])
            kl_rows[i].append(reference.kl(logp))
            nll_rows[i].append(nll_log_probs(logp, w[0, 1:]))
    return SkipProfiles(np.array(skips), _stacked(kl_rows), _stacked(nll_rows),
                        torch.cat(hidden).cpu().numpy() if hidden_at is not None else None)


def _stacked(rows: list[list[torch.Tensor]]) -> np.ndarray:
    """[K, N] float64 from K lists of per-window tensors."""
    return np.stack([torch.cat(r).double().cpu().numpy() for r in rows])


def static_ppl(p: SkipProfiles, k: float) -> float:
    """Perplexity of static removal of `k` layers (log-linear between evaluated integers)."""
    return float(np.exp(np.interp(k, p.skips, p.nll.mean(1))))


def lagrangian_price(kl: np.ndarray, units: np.ndarray, target: float, iters: int = 60) -> float:
    """The smallest price (KL per unit) at which picking argmin of kl - price * units per column of
    `kl` [K, N] gives mean `units` ([K] or [K, N]) >= `target`, found by bisection."""
    units = np.broadcast_to(units if units.ndim == 2 else units[:, None], kl.shape)
    cols = np.arange(kl.shape[1])

    def below(price: float) -> bool:  # the options picked at this price use fewer units than the target
        return units[(kl - price * units).argmin(0), cols].mean() < target

    return bisect(below, 0.0, grow_upper(below, 1.0), iters)[1]


def lagrangian_pick(kl: np.ndarray, units: np.ndarray, target: float, iters: int = 60) -> np.ndarray:
    """Option per column [N] of `kl` [K, N] with least total KL subject to mean `units` (of the picked
    options; [K] or [K, N]) >= `target`: argmin of kl - price * units at `lagrangian_price`."""
    units = np.broadcast_to(units if units.ndim == 2 else units[:, None], kl.shape)
    return (kl - lagrangian_price(kl, units, target, iters) * units).argmin(0)


def oracle_allocation(p: SkipProfiles, num_layers: int, net_saved: float, skip_fraction: float, overhead: float = 0.0,
                      iters: int = 60) -> np.ndarray:
    """Index into `p.skips` per token [N]: least total KL with mean net saving >= `net_saved`
    (per token: k (1 - skip_fraction) / L - overhead, a skipped layer costing `skip_fraction` of a
    processed one: its K/V-only path and bypass). Raises if even the largest k cannot reach it."""
    saving = p.skips * (1 - skip_fraction) / num_layers - overhead
    if saving.max() < net_saved:
        raise ValueError(f"skipping {p.skips.max()} layers saves {saving.max():.3f} net < target {net_saved}")
    # the saving is affine in k, so the target is a mean number of skipped layers
    return lagrangian_pick(p.kl, p.skips, (net_saved + overhead) * num_layers / (1 - skip_fraction), iters)


def oracle_ppl(p: SkipProfiles, pick: np.ndarray) -> float:
    return float(np.exp(p.nll[pick, np.arange(p.nll.shape[1])].mean()))
