"""anee: adaptive computation at inference time for pretrained decoder-only transformers.

    anee.core          shared core: actions, adapters, the one layer step, K/V cache, cost, outputs,
                       loading, data, checkpoints, divergences, timers
    anee.engine        ANEE: executor, wrapper, profiler, controllers/, training/
    anee.hierarchical  exit gates + capacity-limited FFN routers on a frozen base
    anee.granularity   quantisation, precision switching, BranchyNet, model selection
    anee.evaluation    perplexity, the frontier and its methods registry, budgets, benchmarks, results
    anee.viz           every figure the notebooks draw
    anee.cli           the command line (`python -m anee`, `anee`): generate, eval, bench, heatmap, calibrate

`anee.calibrate(model, tokenizer, text)` builds what the heuristic needs for a model without
shipped defaults (`anee.engine.defaults`).

Imports flow one way: core <- engine, hierarchical, granularity <- evaluation, viz <- cli.
"""

from .core.actions import DROP, EXIT, PROCESS, SKIP
from .core.adapters import ModelAdapter, adapter_for
from .core.cost import CostModel
from .core.loading import load_model
from .core.outputs import Trace
from .engine.calibrate import calibrate
from .engine.config import ANEEConfig
from .engine.controllers.base import FixedController, FullController, skip_pattern
from .engine.controllers.budget import BudgetController
from .engine.executor import AdaptiveExecutor
from .engine.wrapper import ANEEWrapper

__all__ = [
    "ANEEConfig", "ANEEWrapper", "AdaptiveExecutor", "BudgetController", "CostModel", "DROP", "EXIT",
    "FixedController", "FullController", "ModelAdapter", "PROCESS", "SKIP", "Trace", "adapter_for",
    "calibrate", "load_model", "skip_pattern",
]
