"""Static layer importance: Block Influence (ShortGPT, Men et al. 2024) and the greedy removal order.

BI of a layer = 1 - cos(h_in, h_out), averaged over calibration tokens of the valid split: a layer
that barely turns the residual stream is a candidate for removal. The greedy removal order instead
measures what removing a layer costs given the layers already removed and their bypass
(`greedy_removal_order`, scored by `removal_ppl`). The profiler ranks layers by either (an order
becomes an importance through `order_importance`), and static removal (the baseline every adaptive
method must beat) removes the least important first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..core.actions import removal_decisions
from ..core.divergence import nll_sum
from .executor import AdaptiveExecutor
from .prefix_memo import PrefixMemo, shared_prefixes


@torch.no_grad()
def block_influence(executor: AdaptiveExecutor, calibration_ids: torch.Tensor, window: int = 256,
                    max_windows: int = 8) -> torch.Tensor:
    """Block Influence per layer [L]: 1 - mean cos(h_in, h_out) over calibration tokens."""
    L = executor.adapter.num_layers
    total, count = torch.zeros(L, dtype=torch.float64), 0
    n = calibration_ids.shape[1]
    for begin in range(0, min(n - window + 1, window * max_windows), window):
        hs = executor.forward(calibration_ids[:, begin : begin + window], collect_hidden=True,
                              with_logits=False).hidden_states
        for layer in range(L):
            cos = F.cosine_similarity(hs[layer].double(), hs[layer + 1].double(), dim=-1)
            total[layer] += cos.sum()
        count += window
    if count == 0:
        raise ValueError(f"calibration data shorter than one window of {window} tokens")
    return 1 - total / count


def removal_order(influence: torch.Tensor) -> list[int]:
    """Layers from least to most influential (the order ShortGPT removes them in)."""
    return torch.argsort(influence, stable=True).tolist()


def order_by_rank(rank: torch.Tensor) -> torch.Tensor:
    """Layer indices from least to most important given ranks [L] (0 = most important; ties keep
    index order): the one place a plan, a nested allocation and the profiler turn ranks into an order."""
    return torch.argsort(rank, descending=True, stable=True)


def order_importance(order: list[int]) -> torch.Tensor:
    """Importance per layer [L] from a removal order (least important first): a layer's position in
    it over L - 1, so ranking by it (lowest first) gives `order` back. Lets an order found by search
    (not by a per-layer score) rank layers wherever an importance is expected (the profiler's plan)."""
    L = len(order)
    if sorted(order) != list(range(L)):
        raise ValueError(f"order must list every layer 0..{L - 1} once, got {order}")
    importance = torch.empty(L)
    importance[torch.tensor(order)] = torch.arange(L, dtype=torch.float32) / max(L - 1, 1)
    return importance


@torch.no_grad()
def removal_ppl(executor: AdaptiveExecutor, windows: torch.Tensor, order: list[int], k: int) -> float:
    """Perplexity over `windows` [N, T] (each scored on its own, positions 1..T-1) with the first
    `k` layers of `order` removed (replaced by the executor's bypass)."""
    L, T = executor.adapter.num_layers, windows.shape[1]
    decisions = removal_decisions(order, k, L, T)
    nll, count = 0.0, 0
    for ids in windows:
        logits = executor.forward(ids.unsqueeze(0), decisions=decisions).logits[0, :-1]
        nll += nll_sum(logits, ids[1:])
        count += T - 1
    return math.exp(nll / count)


def greedy_removal_order(executor: AdaptiveExecutor, windows: torch.Tensor, steps: int, fallback: Sequence[int],
                         memo: PrefixMemo | None = None, candidates: int | None = None) -> list[int]:
    """A removal order that looks at how removals interact (greedy forward selection): for each of
    `steps` steps, the layer whose removal, with the layers already chosen and the executor's
    bypass, gives the lowest perplexity on `windows` [N, T] (valid split; ties: the lowest index);
    the other layers follow in `fallback`'s order (e.g. Block Influence's). Ranking layers one at a
    time ignores that the bypass of one removed layer feeds the next. `candidates`: try only the
    first `candidates` layers of `fallback` (None: every layer), to spare the passes of layers that
    one-at-a-time ranking puts far from removal. Cost: per step one pass plus each candidate's tail
    (`removal_scores`; `memo`: the chosen set's pass shares its leading layers, same numbers)."""
    L = executor.adapter.num_layers
    if sorted(fallback) != list(range(L)):
        raise ValueError(f"fallback must be an order of all {L} layers, got {list(fallback)}")
    if not 0 <= steps <= L:
        raise ValueError(f"steps must be in 0..{L} (the layers to choose greedily), got {steps}")
    pool = L if candidates is None else candidates
    if not steps <= pool <= L:
        raise ValueError(f"candidates must be in {steps}..{L} (at least one layer per greedy step), got {candidates}")
    tried = sorted(fallback[:pool])
    chosen: list[int] = []
    with shared_prefixes(executor, memo=memo):
        for _ in range(steps):
            scores = removal_scores(executor, windows, chosen, [i for i in tried if i not in chosen])
            chosen.append(min(scores, key=scores.get))  # ties: the lowest layer index (`tried` is sorted)
    return chosen + [i for i in fallback if i not in chosen]


@torch.no_grad()
def removal_scores(executor: AdaptiveExecutor, windows: torch.Tensor, removed: list[int],
                   candidates: Sequence[int]) -> dict[int, float]:
    """`removal_ppl` over `windows` [N, T] with `removed` plus one more layer removed, for each of
    `candidates`, bit for bit. Each window's pass with only `removed` runs once; candidate i's pass
    starts at layer i from that pass's state (`resume`: before i their decisions agree), so it
    costs the layers from i on and the head instead of a whole pass."""
    L, T = executor.adapter.num_layers, windows.shape[1]
    base = removal_decisions(removed, len(removed), L, T)
    nll = dict.fromkeys(candidates, 0.0)
    for ids in windows:
        x = ids.unsqueeze(0)
        states = executor.forward(x, decisions=base, collect_hidden=True, with_logits=False).hidden_states
        for i in candidates:
            decisions = removal_decisions(removed + [i], len(removed) + 1, L, T)
            logits = executor.forward(x, decisions=decisions, resume=(i, states[i])).logits[0, :-1]
            nll[i] += nll_sum(logits, ids[1:])
    return {i: math.exp(total / (len(windows) * (T - 1))) for i, total in nll.items()}
