"""Sliding-window perplexity with exact token-weighted NLL.

Windows of `window` tokens advance by `stride`; each window scores only the tokens not scored by the
previous one (all of them in the first window), conditioning on up to `window - 1` earlier tokens.
The NLL is summed over scored tokens and divided by their count, so the result equals
exp(mean HF loss) over the same windows.

A *method* maps a window of token ids [1, T] to a `MethodOutput` (logits and a `CostReport`); the
methods compared on the frontier are built by the factories in `anee.evaluation.methods.METHODS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..core.divergence import nll_sum
from .context import Method


@dataclass
class PerplexityResult:
    method: str
    setting: str
    ppl: float
    nll_sum: float
    tokens: int
    layer_fraction: float
    layer_saved_net: float
    total_saved_net: float

    def row(self) -> dict:
        return dict(self.__dict__)


def windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_scored) for each window over a sequence of `n_tokens` (HF's recipe)."""
    if not 0 < stride <= window:
        raise ValueError(f"need 0 < stride <= window, got stride={stride}, window={window}")
    spans, prev_end = [], 0
    for begin in range(0, n_tokens - 1, stride):
        end = min(begin + window, n_tokens)
        spans.append((begin, end, max(prev_end, begin + 1) - begin))
        prev_end = end
        if end == n_tokens:
            break
    return spans


def evaluate(method: Method, ids: torch.Tensor, window: int = 512, stride: int = 256, name: str = "", setting: str = "",
             progress: bool = False) -> PerplexityResult:
    """Token-weighted perplexity of `method` on ids [1, N], with compute averaged over scored tokens."""
    if ids.ndim != 2 or ids.shape[0] != 1 or ids.shape[1] < 2:
        raise ValueError("ids must be [1, N] with N >= 2")
    nll, count = 0.0, 0
    layer, full, overhead, head_total = 0.0, 0.0, 0.0, 0.0
    spans = windows(ids.shape[1], window, stride)
    for begin, end, first in tqdm(spans, disable=not progress, desc=name or "ppl", leave=False):
        chunk = ids[:, begin:end]
        out = method(chunk)
        # logits at position i predict token i+1; score targets first..T-1 of this window
        logits = out.logits[0, first - 1 : -1]  # nll_sum scores in float32
        targets = chunk[0, first:]
        nll += nll_sum(logits, targets)
        count += targets.numel()
        # cost of the positions whose predictions were scored
        sl = slice(first - 1, chunk.shape[1] - 1)
        layer += float(out.cost.layer_macs.reshape(-1)[sl].sum())
        full += float(out.cost.full_layer_macs.reshape(-1)[sl].sum())
        overhead += float(out.cost.overhead_macs.reshape(-1)[sl].sum())
        head_total += out.cost.head_macs * targets.numel()
    return PerplexityResult(
        method=name,
        setting=setting,
        ppl=math.exp(nll / count),
        nll_sum=nll,
        tokens=count,
        layer_fraction=layer / full,
        layer_saved_net=1 - (layer + overhead) / full,
        total_saved_net=1 - (layer + overhead + head_total) / (full + head_total),
    )
