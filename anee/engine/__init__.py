"""ANEE, the adaptive neural execution engine: a HF causal LM run layer by layer under a controller
that decides per token and layer (executor, wrapper and its arguments and sampling, profiler,
controllers/, training/)."""

from .config import ANEEConfig
from .executor import AdaptiveExecutor
from .wrapper import ANEEWrapper, GenerationResult

__all__ = ["ANEEConfig", "ANEEWrapper", "AdaptiveExecutor", "GenerationResult"]
