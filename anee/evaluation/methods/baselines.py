"""Baseline methods for the perplexity frontier (listed in `anee.evaluation.methods.METHODS`).

- `full`: every layer processed.
- `block_influence`: static removal of the `n_removed` layers with the lowest Block Influence
  (ShortGPT: BI = 1 - cos(h_in, h_out), averaged over calibration tokens of the valid split);
  with `bypass=True` each removed layer is replaced by its learned bypass (charged).
- `profiler_removal`: the same with the profiler's removal order (notebook 02's greedy bypass-aware
  search: the order the controllers' plans DROP layers in), so `anee_*` rows can be told apart from
  their plan's static part.
- `logit_lens`: every token stops after `depth` layers and is decoded through the final norm and
  LM head.
- `anee_budget`: ANEE's simple budget policy at `budget`.

Static methods pay nothing for the layers they drop: no token ever reads those layers' K/V.
"""

from __future__ import annotations

from ...core.actions import EXIT, PROCESS, pattern_decisions, removal_decisions
from ...core.cost import static_cost
from ...core.outputs import MethodOutput
from ...engine.controllers.budget import BudgetController
from ...engine.executor import AdaptiveExecutor
from ...engine.importance import block_influence, removal_order
from ..context import EvalContext, Method
from .controllers import get_profiler


def full_model(ctx: EvalContext) -> Method:
    def run(ids):
        out = ctx.executor.forward(ids)
        return MethodOutput(out.logits, out.trace.cost(ctx.cost))

    return run


def block_influence_removal(ctx: EvalContext, n_removed: int, bypass: bool = False) -> Method:
    if "block_influence" not in ctx.extras:
        if ctx.calibration_ids is None:
            raise ValueError("block_influence needs calibration_ids (valid split) in the EvalContext")
        ctx.extras["block_influence"] = block_influence(ctx.executor, ctx.calibration_ids)
    return static_removal(ctx.executor_for(bypass), removal_order(ctx.extras["block_influence"])[:n_removed])


def profiler_order_removal(ctx: EvalContext, n_removed: int, bypass: bool = False) -> Method:
    executor = ctx.executor_for(bypass)
    return static_removal(executor, get_profiler(ctx, executor).removal_order[:n_removed])


def static_removal(executor: AdaptiveExecutor, removed: list[int]) -> Method:
    """Every token skips the `removed` layers (DROP: nobody reads their K/V; the bypass runs if any)."""
    L = executor.adapter.num_layers

    def run(ids):
        out = executor.forward(ids, decisions=removal_decisions(removed, len(removed), L, ids.shape[1]))
        return MethodOutput(out.logits, static_cost(executor.cost, out.trace.context, L - len(removed)))

    # equal for equal sets in one executor: `run_frontier` scores such a method once (Block Influence's
    # and the profiler's orders agree when notebook 02 kept Block Influence)
    run.signature = ("static_removal", executor, tuple(sorted(removed)))
    return run


def logit_lens_exit(ctx: EvalContext, depth: int) -> Method:
    L = ctx.adapter.num_layers
    pattern = [PROCESS] * depth + [EXIT] * (L - depth)

    def run(ids):
        out = ctx.executor.forward(ids, decisions=pattern_decisions(pattern, ids.shape[1]))
        return MethodOutput(out.logits, static_cost(ctx.cost, out.trace.context, depth))

    return run


def anee_budget(ctx: EvalContext, budget: float, exit_threshold: float = 0.0, bypass: bool = False) -> Method:
    controller, executor = BudgetController(exit_threshold), ctx.executor_for(bypass)

    def run(ids):
        out = executor.forward(ids, controller=controller, budget=budget)
        return MethodOutput(out.logits, out.trace.cost(executor.cost))

    return run
