"""The heuristic controller: causal (parallel == sequential), keeps the most important layer,
checks its entropy shift."""

import pytest
import torch
from _anee_tiny import tiny_setup

from anee.core.actions import PROCESS
from anee.core.kv_cache import KVCache
from anee.engine.controllers.heuristic import HeuristicConfig, HeuristicController


@pytest.fixture(scope="module")
def tiny():
    return tiny_setup(layers=10)


def test_parallel_equals_sequential(tiny):
    _, ex, prof, ids = tiny
    c = HeuristicController(prof)
    x = ids[:, :12]
    par = ex.forward(x, controller=c, budget=0.6)
    cache, outs = KVCache(10), []
    for t in range(12):
        outs.append(ex.forward(x[:, t : t + 1], cache=cache, controller=c, budget=0.6))
    seq = torch.cat([o.trace.decisions for o in outs], 1)
    assert torch.equal(par.trace.decisions, seq)
    assert torch.allclose(par.logits, torch.cat([o.logits for o in outs], 1), atol=1e-4)


def test_heuristic_keeps_important_layers_and_checks_shift(tiny):
    _, ex, prof, ids = tiny
    x = ids[:, :32]
    top = int(torch.argmin(prof.rank))  # the most important layer (Block Influence)
    for budget in (0.5, 0.7, 0.9):
        d = ex.forward(x, controller=HeuristicController(prof), budget=budget).trace.decisions[0]
        assert (d[:, top] == PROCESS).all(), budget
    shifted = HeuristicController(prof, HeuristicConfig(entropy_shift=0.05))
    par = ex.forward(x, controller=shifted, budget=0.6).trace.decisions
    cache = KVCache(10)
    seq = torch.cat([ex.forward(x[:, t : t + 1], cache=cache, controller=shifted, budget=0.6).trace.decisions
                     for t in range(32)], 1)
    assert torch.equal(par, seq)
    with pytest.raises(ValueError, match="entropy_shift"):
        HeuristicController(prof, HeuristicConfig(entropy_shift=0.1))
