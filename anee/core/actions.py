"""What a token may do at a layer, and the one plan entry that is not an action.

    PROCESS  h <- h + attn(norm(h)) ; h <- h + mlp(norm(h))
    SKIP     h <- h + bypass(h), but K/V = proj(norm(h)) still go into the cache (later tokens attend to it)
    EXIT     h frozen for this and every remaining layer (K/V still written)
    DROP     h <- h + bypass(h), no K/V: the layer is removed for every token of the sequence

The bypass (`anee.core.bypass`) is a cheap learned stand-in for the layer's update; with the
identity family (or none) SKIP and DROP leave h as it is.

Stored as int8 in decision tensors [B, T, L]. A *plan* (one entry per layer, see
`anee.engine.controllers.plan`) holds either a fixed action for every token or `ASK`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

PROCESS, SKIP, EXIT, DROP = 0, 1, 2, 3
ACTION_NAMES = ("PROCESS", "SKIP", "EXIT", "DROP")
ASK = -1  # in a plan: decide per token at this layer


def pattern_decisions(pattern: Sequence[int] | torch.Tensor, tokens: int, batch: int = 1) -> torch.Tensor:
    """Decisions [batch, tokens, L] that apply one action per layer (`pattern` [L]) to every token."""
    pattern = torch.as_tensor(pattern, dtype=torch.int8)
    return pattern.expand(batch, tokens, pattern.numel())


def removal_decisions(order: Sequence[int], k: int, num_layers: int, tokens: int) -> torch.Tensor:
    """Decisions [1, T, L] that DROP the first `k` layers of `order` for every token (static removal:
    the removed layers run their bypass)."""
    removed = set(order[:k])
    return pattern_decisions([DROP if i in removed else PROCESS for i in range(num_layers)], tokens)
