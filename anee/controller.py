"""Pluggable per-token, per-layer policies.

The executor calls `decide(view)` once per layer (after `min_layers`) with a `LayerView` of every
token in the chunk and gets back an action per token: PROCESS, SKIP or EXIT. A decision may only
use the token's own state, so the same controller gives the same decisions in sequential decode and
in teacher-forced parallel mode. `overhead_macs` is the work one call costs per token; it is
charged against the savings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .adapters.base import ModelAdapter
from .cost import EXIT, PROCESS, SKIP, CostModel


@dataclass
class LayerView:
    """What a controller may look at before layer `layer` runs, for each token [B, T]."""

    layer: int
    num_layers: int
    hidden: torch.Tensor  # [B, T, D] input to this layer
    prev_hidden: torch.Tensor  # [B, T, D] input to the previous layer (== hidden at layer 0)
    spent: torch.Tensor  # [B, T] layer MACs spent so far
    full: torch.Tensor  # [B, T] MACs of all layers processed, at this token's context
    layer_cost: torch.Tensor  # [B, T] MACs of processing this layer
    budget: torch.Tensor  # [B, 1] energy budget (fraction of full layer compute)
    adapter: ModelAdapter
    cost: CostModel

    @property
    def remaining_layers(self) -> int:
        return self.num_layers - self.layer

    def affordable(self) -> torch.Tensor:
        """True where processing this layer keeps the token within budget, with every later layer
        still able to pay for its K/V-only path."""
        reserve = (self.remaining_layers - 1) * self.cost.kv_only
        return self.spent + self.layer_cost + reserve <= self.budget * self.full + 1e-6 * self.full


class Controller(Protocol):
    overhead_macs: int

    def decide(self, view: LayerView) -> torch.Tensor:
        """Actions [B, T] (PROCESS=0, SKIP=1, EXIT=2) for layer `view.layer`."""
        ...


class FullController:
    """PROCESS everything: the unmodified model."""

    overhead_macs = 0

    def decide(self, view: LayerView) -> torch.Tensor:
        return torch.full(view.spent.shape, PROCESS, dtype=torch.long, device=view.hidden.device)


class FixedController:
    """A fixed action per layer, the same for every token (e.g. a static skip pattern)."""

    overhead_macs = 0

    def __init__(self, pattern: list[int] | torch.Tensor):
        self.pattern = torch.as_tensor(pattern, dtype=torch.long)

    def decide(self, view: LayerView) -> torch.Tensor:
        return self.pattern[view.layer].expand(view.spent.shape).to(view.hidden.device)


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
        return torch.where(view.affordable(), PROCESS, leave)


def skip_pattern(num_layers: int, num_skipped: int, first: int = 2, last: int = 1) -> list[int]:
    """A static pattern SKIPping `num_skipped` layers spread evenly over the middle of the stack,
    keeping the first `first` and last `last` layers (the usual 'sandwich')."""
    middle = list(range(first, num_layers - last))
    if num_skipped > len(middle):
        raise ValueError(f"cannot skip {num_skipped} of {num_layers} layers keeping {first}+{last} fixed")
    step = len(middle) / max(num_skipped, 1)
    skipped = {middle[int(i * step)] for i in range(num_skipped)}
    return [SKIP if i in skipped else PROCESS for i in range(num_layers)]
