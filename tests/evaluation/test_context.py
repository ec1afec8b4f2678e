"""The evaluation context hands out the executor with or without the layer bypass."""

from __future__ import annotations

import pytest
from _anee_tiny import random_bypass
from conftest import tiny_llama

from anee import AdaptiveExecutor, adapter_for
from anee.evaluation.context import EvalContext


def test_executor_for_picks_the_bypass_executor_or_explains_its_absence():
    model = tiny_llama(n_layer=4)
    adapter = adapter_for(model)
    ex = AdaptiveExecutor(adapter)
    bx = AdaptiveExecutor(adapter, bypass=random_bypass("linear", adapter.dims.hidden, 4))
    ctx = EvalContext(model, None, ex, bypass_executor=bx)
    assert ctx.executor_for(False) is ex and ctx.executor_for(True) is bx
    assert ctx.cost is ex.cost and ctx.adapter is adapter  # the context's own cost is the plain executor's
    plain = EvalContext(model, None, ex)
    assert plain.executor_for(False) is ex
    with pytest.raises(ValueError, match=r"runs with the layer bypass: set EvalContext.bypass_executor "
                                         r"\(notebook 02 writes "
                                         r"bypass.safetensors; see anee.evaluation.frontier.frontier_context\)"):
        plain.executor_for(True)
