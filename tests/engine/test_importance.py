"""Layer importance: Block Influence's order, and importance from a searched removal order that the
profiler (and so every plan) ranks layers by."""

import pytest
import torch
import torch.nn.functional as F
from _anee_tiny import tiny_setup
from conftest import VOCAB

from anee.core.actions import ASK, DROP, PROCESS
from anee.engine.controllers.plan import PlanConfig, budget_plan
from anee.engine.importance import block_influence, order_importance, removal_order
from anee.engine.profiler import Profiler


@pytest.fixture(scope="module")
def tiny():
    return tiny_setup()


def test_block_influence_is_one_minus_mean_cosine(tiny):
    _, ex, _, _ = tiny
    ids = torch.randint(0, VOCAB, (1, 64), generator=torch.Generator().manual_seed(0))
    hs = ex.forward(ids[:, :32], collect_hidden=True, with_logits=False).hidden_states
    hs2 = ex.forward(ids[:, 32:], collect_hidden=True, with_logits=False).hidden_states
    by_hand = torch.stack([1 - torch.cat([F.cosine_similarity(a[i].double(), a[i + 1].double(), dim=-1).flatten() for a in (hs, hs2)]).mean()
                           for i in range(len(hs) - 1)])
    assert torch.allclose(block_influence(ex, ids, window=32), by_hand, atol=1e-12)
    with pytest.raises(ValueError, match="shorter than one window"):
        block_influence(ex, ids[:, :10], window=32)


def test_order_importance_gives_the_order_back_to_the_profiler_and_the_plan(tiny):
    _, ex, prof, _ = tiny
    order = [4, 1, 5, 0, 3, 2]
    importance = order_importance(order)
    assert importance.tolist() == pytest.approx([0.6, 0.2, 1.0, 0.8, 0.0, 0.4])
    assert removal_order(importance) == order
    profiler = Profiler(prof.entropy, importance, ex)
    assert profiler.removal_order == order
    plan = budget_plan(profiler.rank, 0.5, PlanConfig(marginal=1, skip_share=1.0), skip_fraction=0.0)
    assert plan.tolist() == [PROCESS, DROP, PROCESS, PROCESS, DROP, ASK]  # DROP 4 and 1 (first in the order), ASK 5
    for bad in ([0, 1, 1, 2, 3, 4], [1, 2, 3, 4, 5, 6]):
        with pytest.raises(ValueError, match="every layer"):
            order_importance(bad)
    with pytest.raises(ValueError, match="one value per layer"):
        Profiler(prof.entropy, order_importance([0, 1, 2]), ex)
