"""The seed's simple budget policy: process while the budget affords a layer, then leave."""

from __future__ import annotations

import torch

from ...core.actions import EXIT, PROCESS, SKIP
from .base import LayerView


class BudgetController:
    """The simple budget policy: PROCESS while the token's budget affords the layer, then leave.

    `exit_threshold` separates the two ways of leaving: with less than that fraction of a full pass
    left the token EXITs (no more controller calls); otherwise it SKIPs this layer and is asked
    again at the next one. With equal layer costs both end in the same compute.
    """

    overhead_macs = 0  # a comparison of two counters

    def __init__(self, exit_threshold: float = 0.0):
        self.exit_threshold = exit_threshold

    def decide(self, view: LayerView) -> torch.Tensor:
        remaining = view.budget - view.spent / view.full
        leave = torch.where(remaining < self.exit_threshold, EXIT, SKIP)
        # a token that may still SKIP later must keep room for its bypass; one that always EXITs only for K/V
        leave_path = view.cost.kv_only if self.exit_threshold >= 1.0 else view.cost.skip_path
        return torch.where(view.affordable(leave_path), PROCESS, leave)
