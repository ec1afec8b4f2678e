"""User-facing configuration of the ANEE wrapper."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..core.scalars import integer, real
from .arguments import check_budget, check_seed


@dataclass
class ANEEConfig:
    """What to wrap and how much compute each token may use.

    energy_budget: fraction of full layer compute per token, in [0, 1]; 1.0 reproduces the model.
    min_layers: layers every token PROCESSES before the controller is asked. They always run: a
        budget below min_layers / num_layers cannot be met, the wrapper then warns and reports the
        realized layer fraction (at least min_layers / num_layers plus the K/V-only path of the
        other layers).
    exit_budget_threshold: with less than this fraction of a full pass left, a token EXITs
        instead of SKIPping (it is then not asked again).
    controller: "budget" (simple budget policy) or "full"; pass an object to `ANEEWrapper` for others.
    Numbers may be given as any real scalar (Python, NumPy or a 0-d tensor); they are stored as
    Python numbers.
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
        self.energy_budget = check_budget(self.energy_budget)
        self.min_layers = integer("min_layers", self.min_layers, what=" (layers every token processes first)")
        self.exit_budget_threshold = real("exit_budget_threshold", self.exit_budget_threshold, 0.0, 1.0)
        self.seed = check_seed(self.seed)
        if self.controller not in ("budget", "full"):
            raise ValueError(f"controller must be 'budget' or 'full', got {self.controller!r}")
