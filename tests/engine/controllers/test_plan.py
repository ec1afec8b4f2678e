"""Layer plans: exact counts, planned controllers asked only at the marginal layers, causal, one
budget per batch."""

from __future__ import annotations

import pytest
import torch
from _anee_tiny import tiny_setup

from anee.core.actions import ASK, DROP, PROCESS, SKIP
from anee.core.kv_cache import KVCache
from anee.engine.controllers.heuristic import HeuristicController
from anee.engine.controllers.learned import LearnedController
from anee.engine.controllers.plan import PlanConfig, budget_plan
from anee.engine.controllers.policy import PolicyNet
from anee.engine.profiler import FEATURES


@pytest.fixture(scope="module")
def tiny():
    return tiny_setup(layers=10)


def test_budget_plan_counts():
    rank = torch.tensor([3, 0, 5, 1, 4, 2, 6, 7])  # 0 = most important; layer 7 least
    cfg = PlanConfig(marginal=2, skip_share=0.5)
    plan = budget_plan(rank, 0.5, cfg, kv_fraction=0.0)  # save 4 layers: drop round(4 - 1) = 3, ask 2
    assert (plan == DROP).nonzero().flatten().tolist() == [2, 6, 7]
    assert (plan == ASK).nonzero().flatten().tolist() == [0, 4]
    assert budget_plan(rank, 1.0, cfg, 0.0).tolist() == [PROCESS] * 8  # nothing to save: the full model, nothing asked
    assert budget_plan(rank, 0.0, cfg, 0.0).tolist().count(DROP) == 6  # never drops the marginal layers
    # ask no more layers than the budget needs skipped: saving 0.8 layers at share 0.5 needs one asked layer
    wide = PlanConfig(marginal=4, skip_share=0.5)
    assert budget_plan(rank, 0.9, wide, 0.0).tolist() == [PROCESS] * 7 + [ASK]
    assert (budget_plan(rank, 0.5, wide, 0.0) == ASK).nonzero().flatten().tolist() == [0, 2, 4, 5]  # after dropping 7, 6
    assert budget_plan(rank, 0.5, wide, 0.0).tolist().count(DROP) == 2  # round(4 - 0.5 * 4)
    with pytest.raises(ValueError):
        PlanConfig(marginal=0)
    with pytest.raises(TypeError, match="marginal"):
        PlanConfig(marginal=2.5)  # a plan from a checkpoint is checked before it slices anything


@pytest.mark.parametrize("budget", [0.3, 0.6, 0.9, 1.0])
def test_planned_controllers_asked_only_at_marginal_layers(tiny, budget):
    _, ex, prof, ids = tiny
    torch.manual_seed(0)
    plan_cfg = PlanConfig(marginal=3)
    for c in (HeuristicController(prof, plan=plan_cfg), LearnedController(PolicyNet(len(FEATURES)), prof, plan=plan_cfg)):
        plan = c.plan(torch.tensor([[budget]]), 10)
        out = ex.forward(ids[:, :64].reshape(2, 32), controller=c, budget=budget)
        d = out.trace.decisions
        assert torch.equal(d[..., plan == DROP], torch.full_like(d[..., plan == DROP], DROP))
        assert (d[..., plan == PROCESS] == PROCESS).all()
        assert set(d[..., plan == ASK].unique().tolist()) <= {PROCESS, SKIP}  # no EXIT under a plan
        n_asked = int((plan == ASK).sum())
        assert n_asked == (0 if budget == 1.0 else 3 if budget < 0.9 else 2)  # budget 0.9 needs 1 layer: 2 asked at share 0.5
        assert torch.equal(out.trace.overhead_macs, torch.full_like(out.trace.overhead_macs, n_asked * float(c.overhead_macs)))
        if budget == 1.0:
            assert torch.equal(out.logits, ex.forward(ids[:, :64].reshape(2, 32)).logits)
        rep = out.trace.cost(ex.cost)
        frac = rep.layer_macs / rep.full_layer_macs
        assert (frac >= budget - 0.05 - 1e-9).all() and (frac <= min(budget + 0.05, 1.0) + 1e-9).all()


def test_planned_parallel_equals_sequential_and_one_budget(tiny):
    _, ex, prof, ids = tiny
    torch.manual_seed(1)
    c = LearnedController(PolicyNet(len(FEATURES)), prof, plan=PlanConfig())
    x = ids[:, :16]
    par = ex.forward(x, controller=c, budget=0.6)
    cache = KVCache(10)
    seq = [ex.forward(x[:, t : t + 1], cache=cache, controller=c, budget=0.6) for t in range(16)]
    assert torch.equal(par.trace.decisions, torch.cat([o.trace.decisions for o in seq], 1))
    assert torch.allclose(par.logits, torch.cat([o.logits for o in seq], 1), atol=1e-4)
    with pytest.raises(ValueError, match="one energy_budget"):
        ex.forward(ids[:, :32].reshape(2, 16), controller=c, budget=torch.tensor([0.5, 0.7]))
