"""Every method on the perplexity frontier, in one explicit registry: name -> factory.

A factory takes an `EvalContext` and the method's setting (keyword arguments) and returns a
method: a callable from a window of token ids [1, T] to a `MethodOutput`. To add a method, write
its factory in one of the modules here (or a new one) and add it to `METHODS`.
"""

from __future__ import annotations

from . import baselines, controllers, hierarchical

METHODS = {
    "full": baselines.full_model,
    "block_influence": baselines.block_influence_removal,
    "profiler_removal": baselines.profiler_order_removal,
    "logit_lens": baselines.logit_lens_exit,
    "anee_budget": baselines.anee_budget,
    "anee_heuristic": controllers.anee_heuristic,
    "anee_heuristic_every_layer": controllers.anee_heuristic_every_layer,
    "anee_warmstart": controllers.anee_warmstart,
    "anee_warmstart_profiler_only": controllers.anee_warmstart_profiler_only,
    "anee_rl": controllers.anee_rl,
    "anee_kl_profile": controllers.anee_kl_profile,
    "hierarchical": hierarchical.hierarchical,
}


def build_method(name: str, ctx, **setting):
    """The method `name` with this setting, or a ValueError listing the known names."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {sorted(METHODS)}")
    return METHODS[name](ctx, **setting)
