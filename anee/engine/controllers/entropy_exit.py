"""BranchyNet's confidence rule on a language model: EXIT where the logit-lens entropy is low.

At a few check depths the logit lens (final norm + LM head on the current residual stream) gives a
next-token distribution; a token EXITs when its entropy is below the threshold. Each check costs a
full LM-head evaluation per still-running token and is charged as controller overhead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...core.actions import EXIT, PROCESS
from ...core.divergence import entropy
from .base import LayerView


class EntropyExitController:
    """EXIT a token at a check depth when its logit-lens entropy is below `threshold` (nats).

    `layer_overhead(view)` is one LM-head evaluation at a check depth, zero elsewhere; the executor
    charges it to every token still running. The check that triggers an exit produces the logits
    the token outputs, so this over-counts by at most one head per exiting token. Stateless: one
    instance may serve several threads.
    """

    def __init__(self, check_layers: Sequence[int], threshold: float):
        self.check_layers = frozenset(check_layers)
        self.threshold = threshold

    def layer_overhead(self, view: LayerView) -> int:
        return view.cost.lm_head if view.layer in self.check_layers else 0

    def decide(self, view: LayerView) -> torch.Tensor:
        if view.layer not in self.check_layers:
            return torch.full(view.spent.shape, PROCESS, dtype=torch.long, device=view.hidden.device)
        ent = entropy(view.adapter.logits(view.hidden))
        return torch.where(ent < self.threshold, EXIT, PROCESS)
