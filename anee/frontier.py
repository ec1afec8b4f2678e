"""Assembling notebook 06's frontier: the evaluation context and the rows later notebooks add."""

from __future__ import annotations

from .adapters import adapter_for
from .data import wikitext_tokens
from .executor import AdaptiveExecutor
from .io import output_dir
from .perplexity import EvalContext


def frontier_context(model, tokenizer, profile: str, calibration_tokens: int = 4096, min_layers: int = 0) -> EvalContext:
    """EvalContext with valid-split calibration tokens and the profile's checkpoint folder."""
    executor = AdaptiveExecutor(adapter_for(model), min_layers=min_layers)
    calibration = wikitext_tokens(tokenizer, "valid", calibration_tokens)
    return EvalContext(model, tokenizer, executor, calibration,
                       extras={"checkpoint_dir": output_dir("results", profile) / "checkpoints", "profile": profile})


def extra_specs(ctx: EvalContext, budgets=(0.9, 0.8, 0.7, 0.6), planned_budgets=None) -> list[tuple[str, dict]]:
    """Rows contributed by the ANEE controllers (02-04) and the hierarchical model (05). Their
    checkpoints must exist in the profile's checkpoint folder: run those notebooks first. The
    planned controllers are cheap to evaluate, so they may get a denser grid (`planned_budgets`)."""
    from . import (
        controller_methods,  # noqa: F401  (registers the anee_heuristic* / anee_warmstart / anee_rl methods)
        hierarchical,  # noqa: F401  (registers hierarchical)
    )

    planned = ("anee_heuristic", "anee_warmstart", "anee_warmstart_profiler_only", "anee_rl")
    specs = [(m, {"budget": b}) for m in planned for b in (planned_budgets or budgets)]
    specs += [("anee_heuristic_every_layer", {"budget": b}) for b in budgets]
    specs += [("hierarchical", {"capacity": c, "exits": False}) for c in (0.9, 0.7)]
    specs += [("hierarchical", {"capacity": 0.9, "exits": True})]
    return specs
