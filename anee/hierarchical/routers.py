"""MoE-style FFN routers: one per layer, deciding per token whether the FFN runs (attention always does).

A router reads the post-attention residual stream (RMS-normalised, no learned scale) and gives two
logits (skip, run); its *score* is their difference. Two ways of turning scores into decisions:

- training (`topk_route`): the top `ceil(capacity * T)` tokens of each sequence run the FFN. This
  looks at the whole sequence, i.e. at future tokens, so it is used for training only; the straight-
  through estimator (hard 0/1 forward, gradient through the run probability) teaches the router which
  tokens' FFN output lowers the distillation loss.
- inference (`threshold_route`): a token runs the FFN iff its score, centred on the running mean of
  the scores of the earlier tokens of its sequence (`causal_center`), exceeds the layer's threshold,
  calibrated on validation data so the realized fraction equals the requested capacity. The decision
  depends on the token's own state only, so it is causal.

Regularisers: router z-loss (mean squared log-sum-exp of the logits, keeps logits small and stable)
and an entropy penalty (mean binary entropy of the run probability, keeps decisions sharp so a
threshold reproduces the top-k split).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..core.divergence import entropy

MIN_CAPACITY, MAX_CAPACITY = 0.1, 0.9


class FFNRouter(nn.Module):
    """Linear router D -> 2 on the RMS-normalised post-attention stream."""

    def __init__(self, hidden: int, init_bias: float = 0.0):
        super().__init__()
        self.proj = nn.Linear(hidden, 2)
        nn.init.normal_(self.proj.weight, std=0.02)
        with torch.no_grad():
            self.proj.bias.copy_(torch.tensor([0.0, init_bias]))

    @property
    def macs(self) -> int:
        return self.proj.in_features * 2

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [..., 2] = (skip, run)."""
        return self.proj(F.rms_norm(hidden, hidden.shape[-1:]))


def score(logits: torch.Tensor) -> torch.Tensor:
    """Run-minus-skip logit: the quantity thresholds are calibrated on."""
    return logits[..., 1] - logits[..., 0]


def topk_route(scores: torch.Tensor, capacity: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean [B, T]: the top ceil(capacity * n) scores of each row (n = valid tokens of the row)."""
    if capacity >= 1.0:
        return torch.ones_like(scores, dtype=torch.bool) if valid is None else valid.clone()
    s = scores if valid is None else scores.masked_fill(~valid, float("-inf"))
    n = s.shape[-1] if valid is None else valid.sum(-1, keepdim=True)
    k_max = math.ceil(capacity * s.shape[-1])
    order = s.argsort(dim=-1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(s.shape[-1], device=s.device).expand_as(order))
    k = torch.ceil(capacity * torch.as_tensor(n, dtype=torch.float64)).long() if valid is not None else k_max
    mask = rank < k
    return mask if valid is None else mask & valid


def causal_center(scores: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Scores [..., T] minus the running mean of the valid scores at positions <= t of the same row.

    Top-k training only ranks scores *within* a sequence, so their absolute level drifts with the
    topic of the text; subtracting the causal running mean removes that drift while keeping every
    decision a function of the token and its past only (in decoding: one running sum per layer)."""
    w = torch.ones_like(scores) if valid is None else valid.to(scores.dtype)
    mean = (scores * w).cumsum(-1) / w.cumsum(-1).clamp_min(1.0)
    return scores - mean


def threshold_route(scores: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """Boolean: score strictly above the threshold (a causal, per-token decision)."""
    return scores > threshold


def aux_losses(logits: torch.Tensor, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(z-loss, mean binary entropy) of router logits [..., 2], averaged over `weight` (bool/float)."""
    z = torch.logsumexp(logits, dim=-1) ** 2
    ent = entropy(logits)
    if weight is None:
        return z.mean(), ent.mean()
    w = weight.to(z.dtype)
    denom = w.sum().clamp_min(1.0)
    return (z * w).sum() / denom, (ent * w).sum() / denom


def check_capacity(capacity: float, allow_full: bool = True) -> float:
    """Capacity must lie in [0.1, 0.9] (1.0 = every token runs every FFN, allowed as the reference)."""
    c = float(capacity)
    if allow_full and c == 1.0:
        return c
    if not MIN_CAPACITY - 1e-9 <= c <= MAX_CAPACITY + 1e-9:
        raise ValueError(f"capacity must be in [{MIN_CAPACITY}, {MAX_CAPACITY}] (or 1.0 for the full model), "
                         f"got {capacity!r}")
    return c
