"""Layer plans: exact counts, planned controllers asked only at the marginal layers, causal, one
budget per batch."""

from __future__ import annotations

import pytest
import torch
from _anee_tiny import random_bypass, tiny_setup

from anee import AdaptiveExecutor
from anee.core.actions import ASK, DROP, PROCESS, SKIP
from anee.core.kv_cache import KVCache
from anee.engine.controllers.heuristic import HeuristicController
from anee.engine.controllers.learned import LearnedController
from anee.engine.controllers.plan import PlanConfig, budget_plan
from anee.engine.controllers.policy import PolicyNet
from anee.engine.profiler import FEATURES, Profiler


@pytest.fixture(scope="module")
def tiny():
    return tiny_setup(layers=10)


def test_budget_plan_counts_with_a_bypass():
    """A SKIP saves 1 - skip_fraction of a layer and a DROP 1 - drop_fraction: a dearer bypass drops more."""
    rank = torch.tensor([3, 0, 5, 1, 4, 2, 6, 7])  # least important first: layers 7, 6, 2, 4, 0, 5, 3, 1
    cfg = PlanConfig(marginal=2, skip_share=0.5)
    # save 4 layers; 2 asked layers at share 0.5 save 0.5 * 2 * (1 - 0.2) = 0.8; drop round(3.2 / 0.9) = round(3.56) = 4
    plan = budget_plan(rank, 0.5, cfg, skip_fraction=0.2, drop_fraction=0.1)
    assert (plan == DROP).nonzero().flatten().tolist() == [2, 4, 6, 7]
    assert (plan == ASK).nonzero().flatten().tolist() == [0, 5]
    # the same costs with a free DROP: round(3.2) = 3
    assert (budget_plan(rank, 0.5, cfg, 0.2, 0.0) == DROP).nonzero().flatten().tolist() == [2, 6, 7]
    # round(3.2 / 0.5) = 6 drops (7, 6, 2, 4, 0, 5) leave exactly the 2 asked layers (3, 1)
    assert budget_plan(rank, 0.5, cfg, 0.2, 0.5).tolist() == [DROP, ASK, DROP, ASK, DROP, DROP, DROP, DROP]
    # save 1.6 layers: floor(1.6 / (0.5 * 0.6)) = 5 >= 2 asked; drop round((1.6 - 0.6) / 0.75) = 1 (layer 7),
    # ask 6 and 2
    assert budget_plan(rank, 0.8, cfg, 0.4, 0.25).tolist() == [PROCESS, PROCESS, ASK, PROCESS, PROCESS, PROCESS,
                                                               ASK, DROP]


def test_budget_plan_counts():
    rank = torch.tensor([3, 0, 5, 1, 4, 2, 6, 7])  # 0 = most important; layer 7 least
    cfg = PlanConfig(marginal=2, skip_share=0.5)
    plan = budget_plan(rank, 0.5, cfg, skip_fraction=0.0)  # save 4 layers: drop round(4 - 1) = 3, ask 2
    assert (plan == DROP).nonzero().flatten().tolist() == [2, 6, 7]
    assert (plan == ASK).nonzero().flatten().tolist() == [0, 4]
    assert budget_plan(rank, 1.0, cfg, 0.0).tolist() == [PROCESS] * 8  # nothing to save: the full model, nothing asked
    assert budget_plan(rank, 0.0, cfg, 0.0).tolist().count(DROP) == 6  # never drops the marginal layers
    # ask no more layers than the budget needs skipped: saving 0.8 layers at share 0.5 needs one asked layer
    wide = PlanConfig(marginal=4, skip_share=0.5)
    assert budget_plan(rank, 0.9, wide, 0.0).tolist() == [PROCESS] * 7 + [ASK]
    # after dropping 7, 6
    assert (budget_plan(rank, 0.5, wide, 0.0) == ASK).nonzero().flatten().tolist() == [0, 2, 4, 5]
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
    for c in (HeuristicController(prof, plan=plan_cfg),
              LearnedController(PolicyNet(len(FEATURES)), prof, plan=plan_cfg)):
        plan = c.plan(torch.tensor([[budget]]), 10)
        out = ex.forward(ids[:, :64].reshape(2, 32), controller=c, budget=budget)
        d = out.trace.decisions
        assert torch.equal(d[..., plan == DROP], torch.full_like(d[..., plan == DROP], DROP))
        assert (d[..., plan == PROCESS] == PROCESS).all()
        assert set(d[..., plan == ASK].unique().tolist()) <= {PROCESS, SKIP}  # no EXIT under a plan
        n_asked = int((plan == ASK).sum())
        # budget 0.9 needs 1 layer: 2 asked at share 0.5
        assert n_asked == (0 if budget == 1.0 else 3 if budget < 0.9 else 2)
        assert torch.equal(out.trace.overhead_macs,
                           torch.full_like(out.trace.overhead_macs, n_asked * float(c.overhead_macs)))
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


@pytest.mark.parametrize("budget", [0.3, 0.6, 0.9])
def test_planned_controllers_keep_the_band_with_a_bypass(tiny, budget):
    """With a bypass a SKIP costs its K/V path plus the bypass and a DROP the bypass: the plan and the
    pacing count both, and every token still ends within budget +- slack."""
    _, ex, prof, ids = tiny
    bx = AdaptiveExecutor(ex.adapter, bypass=random_bypass("linear", 32, 10, seed=1))
    assert bx.cost.skip_fraction() == pytest.approx(2 / 9) and bx.cost.drop_fraction() == pytest.approx(1 / 9)
    pb = Profiler(prof.entropy, prof.importance, bx, prof.entropy_median)  # the same profiler, bound to the costs of bx
    torch.manual_seed(0)
    cfg = PlanConfig(marginal=3)
    for c in (HeuristicController(pb, plan=cfg), LearnedController(PolicyNet(len(FEATURES)), pb, plan=cfg)):
        plan = c.plan(torch.tensor([[budget]]), 10)
        assert torch.equal(plan, budget_plan(prof.rank, budget, cfg, 2 / 9, 1 / 9))
        out = bx.forward(ids[:, :64].reshape(2, 32), controller=c, budget=budget)
        assert (out.trace.decisions[..., plan == DROP] == DROP).all()
        rep = out.trace.cost(bx.cost)
        frac = rep.layer_macs / rep.full_layer_macs
        assert (frac >= budget - 0.05 - 1e-9).all() and (frac <= min(budget + 0.05, 1.0) + 1e-9).all()
