"""The heuristic ANEE controller: thresholds on the profiler state, no training."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.actions import EXIT, PROCESS, SKIP
from .base import LayerView
from .pacing import PacedController, PacingConfig
from .plan import PlanConfig


@dataclass
class HeuristicConfig:
    """Optional entropy modulation of the per-token target: uncertain tokens aim up to
    `entropy_shift` above the budget, confident ones up to `entropy_shift` below (`entropy_ref` and
    `entropy_scale` in units of ln V). Off by default: on SmolLM2 / WikiText-2 (2,048 test tokens,
    budget 0.7) a shift of 0.05 raised perplexity from 155 to 733, because the intermediate
    entropy changes from layer to layer, so a token's target does too, and tokens that spent
    early on a high target had to skip the last (most important) layers."""

    entropy_shift: float = 0.0  # at most the pacing slack
    entropy_ref: float | None = None  # None: the profiler's calibration median
    entropy_scale: float = 0.05


class HeuristicController(PacedController):
    """Thresholds on the profiler state: PROCESS the layer when it is among the `n` most important
    (static Block Influence) of the remaining asked layers, `n` being what the token's target still
    affords; leave otherwise (EXIT once nothing more is planned and the plan allows it)."""

    def __init__(self, profiler, config: HeuristicConfig | None = None, pacing: PacingConfig | None = None,
                 record: bool = False, plan: PlanConfig | None = None):
        super().__init__(profiler, pacing, record, plan)
        self.config = config or HeuristicConfig()
        if not 0.0 <= self.config.entropy_shift <= self.pacing.slack:
            raise ValueError(f"entropy_shift must lie in [0, pacing slack {self.pacing.slack}], "
                             f"got {self.config.entropy_shift}")

    def raw_actions(self, view: LayerView, feats: torch.Tensor) -> torch.Tensor:
        c = self.config
        target = view.budget.expand(view.spent.shape)
        if c.entropy_shift > 0:
            ref = self.profiler.entropy_median if c.entropy_ref is None else c.entropy_ref
            shift = torch.tanh((feats[..., 0] - ref) / c.entropy_scale).double()
            target = (view.budget + c.entropy_shift * shift).clamp(0.0, 1.0)
        n = self.profiler.layers_to_target(view, target)
        ahead = self.profiler.more_important_left(view.layer, view.asked_after())
        leave = torch.where((n < 0.5) & (not view.process_fixed_after), EXIT, SKIP)
        return torch.where(ahead + 0.5 < n, PROCESS, leave)
