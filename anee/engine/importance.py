"""Static layer importance: Block Influence (ShortGPT, Men et al. 2024).

BI of a layer = 1 - cos(h_in, h_out), averaged over calibration tokens of the valid split: a layer
that barely turns the residual stream is a candidate for removal. The profiler ranks layers by it,
and static removal (the baseline every adaptive method must beat) removes the lowest first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .executor import AdaptiveExecutor


@torch.no_grad()
def block_influence(executor: AdaptiveExecutor, calibration_ids: torch.Tensor, window: int = 256, max_windows: int = 8) -> torch.Tensor:
    """Block Influence per layer [L]: 1 - mean cos(h_in, h_out) over calibration tokens."""
    L = executor.adapter.num_layers
    total, count = torch.zeros(L, dtype=torch.float64), 0
    n = calibration_ids.shape[1]
    for begin in range(0, min(n - window + 1, window * max_windows), window):
        hs = executor.forward(calibration_ids[:, begin : begin + window], collect_hidden=True, with_logits=False).hidden_states
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
