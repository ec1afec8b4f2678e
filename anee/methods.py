"""Baseline and ANEE methods for the perplexity frontier (registered in `anee.perplexity.METHODS`).

- `full`: every layer processed.
- `block_influence`: static removal of the `n_removed` layers with the lowest Block Influence
  (ShortGPT: BI = 1 - cos(h_in, h_out), averaged over calibration tokens of the valid split).
- `logit_lens`: every token stops after `depth` layers and is decoded through the final norm and
  LM head.
- `anee_budget`: ANEE's simple budget policy at `budget`.

Static methods pay nothing for the layers they drop: no token ever reads those layers' K/V.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .controller import BudgetController
from .cost import EXIT, PROCESS, SKIP, CostModel, CostReport
from .executor import AdaptiveExecutor
from .perplexity import EvalContext, MethodOutput, register_method


def static_cost(cost: CostModel, context: torch.Tensor, layers_run: int) -> CostReport:
    """Cost of running `layers_run` full layers per token and nothing for the rest."""
    per_layer = cost.layer(context.double())
    return CostReport(layers_run * per_layer, cost.dims.num_layers * per_layer, cost.lm_head, torch.zeros_like(per_layer))


@torch.no_grad()
def block_influence(executor: AdaptiveExecutor, calibration_ids: torch.Tensor, window: int = 256, max_windows: int = 8) -> torch.Tensor:
    """Block Influence per layer [L]: 1 - mean cos(h_in, h_out) over calibration tokens."""
    L = executor.adapter.num_layers
    total, count = torch.zeros(L, dtype=torch.float64), 0
    n = calibration_ids.shape[1]
    for begin in range(0, min(n - window + 1, window * max_windows), window):
        hs = executor.forward(calibration_ids[:, begin : begin + window], collect_hidden=True).hidden_states
        for layer in range(L):
            cos = F.cosine_similarity(hs[layer].double(), hs[layer + 1].double(), dim=-1)
            total[layer] += cos.sum()
        count += window
    if count == 0:
        raise ValueError(f"calibration data shorter than one window of {window} tokens")
    return 1 - total / count


def removal_order(influence: torch.Tensor) -> list[int]:
    """Layers from least to most influential (the order ShortGPT removes them in)."""
    return torch.argsort(influence, stable=True).tolist()


def _static_decisions(pattern: list[int], T: int) -> torch.Tensor:
    return torch.tensor(pattern, dtype=torch.int8).expand(1, T, len(pattern))


@register_method("full")
def full_model(ctx: EvalContext) -> callable:
    def run(ids):
        out = ctx.executor.forward(ids)
        return MethodOutput(out.logits, out.trace.cost(ctx.cost))

    return run


@register_method("block_influence")
def block_influence_removal(ctx: EvalContext, n_removed: int) -> callable:
    if "block_influence" not in ctx.extras:
        if ctx.calibration_ids is None:
            raise ValueError("block_influence needs calibration_ids (valid split) in the EvalContext")
        ctx.extras["block_influence"] = block_influence(ctx.executor, ctx.calibration_ids)
    L = ctx.adapter.num_layers
    removed = set(removal_order(ctx.extras["block_influence"])[:n_removed])
    pattern = [SKIP if i in removed else PROCESS for i in range(L)]

    def run(ids):
        out = ctx.executor.forward(ids, decisions=_static_decisions(pattern, ids.shape[1]))
        return MethodOutput(out.logits, static_cost(ctx.cost, out.trace.context, L - n_removed))

    return run


@register_method("logit_lens")
def logit_lens_exit(ctx: EvalContext, depth: int) -> callable:
    L = ctx.adapter.num_layers
    pattern = [PROCESS] * depth + [EXIT] * (L - depth)

    def run(ids):
        out = ctx.executor.forward(ids, decisions=_static_decisions(pattern, ids.shape[1]))
        return MethodOutput(out.logits, static_cost(ctx.cost, out.trace.context, depth))

    return run


@register_method("anee_budget")
def anee_budget(ctx: EvalContext, budget: float, exit_threshold: float = 0.0) -> callable:
    controller = BudgetController(exit_threshold)

    def run(ids):
        out = ctx.executor.forward(ids, controller=controller, budget=budget)
        return MethodOutput(out.logits, out.trace.cost(ctx.cost))

    return run
