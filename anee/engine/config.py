"""User-facing configuration of the ANEE wrapper."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def check_budget(budget: float) -> float:
    """An energy budget is a fraction of full layer compute in [0, 1]."""
    if not isinstance(budget, (int, float)) or isinstance(budget, bool) or math.isnan(budget) or not 0 <= budget <= 1:
        raise ValueError(f"energy_budget must be a number in [0, 1] (fraction of full layer compute), got {budget!r}")
    return float(budget)


@dataclass
class ANEEConfig:
    """What to wrap and how much compute each token may use.

    energy_budget: fraction of full layer compute per token, in [0, 1]; 1.0 reproduces the model.
    min_layers: layers every token PROCESSES before the controller is asked.
    exit_budget_threshold: with less than this fraction of a full pass left, a token EXITs
        instead of SKIPping (it is then not asked again).
    controller: "budget" (simple budget policy) or "full"; pass an object to `ANEEWrapper` for others.
    """

    model_name: str = "smollm2-135m"
    energy_budget: float = 1.0
    min_layers: int = 2
    exit_budget_threshold: float = 0.1
    controller: str = "budget"
    device: str = "cpu"
    dtype: torch.dtype = field(default=torch.float32)
    seed: int = 0

    def __post_init__(self) -> None:
        check_budget(self.energy_budget)
        if not isinstance(self.min_layers, int) or self.min_layers < 0:
            raise ValueError(f"min_layers must be a non-negative integer, got {self.min_layers!r}")
        if not 0 <= self.exit_budget_threshold <= 1:
            raise ValueError(f"exit_budget_threshold must be in [0, 1], got {self.exit_budget_threshold!r}")
        if self.controller not in ("budget", "full"):
            raise ValueError(f"controller must be 'budget' or 'full', got {self.controller!r}")
