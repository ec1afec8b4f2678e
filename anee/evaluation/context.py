"""What a method factory may need to build a method: the model, its executor, valid-split tokens."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..core.cost import CostModel
from ..core.outputs import MethodOutput
from ..engine.executor import AdaptiveExecutor

Method = Callable[[torch.Tensor], MethodOutput]  # a window of token ids [1, T] -> logits and costs


@dataclass
class EvalContext:
    """Everything a method factory may need: the model, its executor and calibration data."""

    model: torch.nn.Module
    tokenizer: object
    executor: AdaptiveExecutor
    calibration_ids: torch.Tensor | None = None  # [1, N] valid-split tokens, never test
    extras: dict = field(default_factory=dict)  # e.g. trained controllers or gates by name
    bypass_executor: AdaptiveExecutor | None = None  # the same model with the layer bypass (notebook 02's)

    def executor_for(self, bypass: bool) -> AdaptiveExecutor:
        """The executor whose skipped layers run the bypass (`bypass=True`) or nothing."""
        if not bypass:
            return self.executor
        if self.bypass_executor is None:
            raise ValueError("this method runs with the layer bypass: set EvalContext.bypass_executor "
                             "(notebook 02 writes bypass.safetensors; see anee.evaluation.frontier.frontier_context)")
        return self.bypass_executor

    @property
    def adapter(self):
        return self.executor.adapter

    @property
    def cost(self) -> CostModel:
        return self.executor.cost
