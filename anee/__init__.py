"""anee: adaptive computation at inference time for pretrained decoder-only transformers."""

from .adapters import ModelAdapter, adapter_for
from .config import ANEEConfig
from .controller import BudgetController, FixedController, FullController, skip_pattern
from .cost import EXIT, PROCESS, SKIP, CostModel
from .executor import AdaptiveExecutor, Trace
from .loading import load_model
from .wrapper import ANEEWrapper

__all__ = [
    "ANEEConfig", "ANEEWrapper", "AdaptiveExecutor", "BudgetController", "CostModel", "EXIT",
    "FixedController", "FullController", "ModelAdapter", "PROCESS", "SKIP", "Trace", "adapter_for",
    "load_model", "skip_pattern",
]
