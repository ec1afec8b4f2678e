"""DROP (a layer removed for the whole sequence) and layer plans: exact logits, zero cost, guarded
misuse, plans that ask the controller only at the marginal layers."""

from __future__ import annotations

import json

import pytest
import torch
from _anee_tiny import tiny_setup
from conftest import VOCAB
from safetensors import safe_open

from anee import AdaptiveExecutor, CostModel, adapter_for
from anee.adapters.base import Dims
from anee.cache import KVCache
from anee.controller import ASK, HeuristicController, LearnedController, PlanConfig, PolicyNet, budget_plan
from anee.cost import DROP, EXIT, PROCESS, SKIP, trace_cost
from anee.executor import _absorb_exits
from anee.policy_io import load_plan, save_policy
from anee.profiler import FEATURES
from anee.rl import RLConfig, train_reinforce


@pytest.fixture(scope="module")
def tiny():
    return tiny_setup(layers=10)


def _pattern(L, dropped, T, B=1):
    row = torch.tensor([DROP if i in dropped else PROCESS for i in range(L)], dtype=torch.int8)
    return row.expand(B, T, L).clone()


def test_drop_equals_skip_for_every_token_and_costs_nothing(tiny_model):
    """A layer no token processes: DROP and SKIP give identical logits; DROP pays no K/V."""
    ex = AdaptiveExecutor(adapter_for(tiny_model))
    L = ex.adapter.num_layers
    ids = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(0))
    drop = _pattern(L, {1, L - 2}, 20, 2)
    skip = torch.where(drop == DROP, SKIP, drop).to(torch.int8)
    a, b = ex.forward(ids, decisions=drop), ex.forward(ids, decisions=skip)
    assert torch.equal(a.logits, b.logits)
    assert a.cache.keys[1] is None and a.cache.dropped[1] is True and a.cache.length == 20
    ca, cb = a.trace.cost(ex.cost), b.trace.cost(ex.cost)
    assert torch.allclose(cb.layer_macs - ca.layer_macs, torch.full_like(ca.layer_macs, 2.0 * ex.cost.kv_only))
    per_layer = ex.cost.layer(a.trace.context)
    assert torch.allclose(ca.layer_macs, (L - 2) * per_layer)


def test_drop_decode_matches_parallel_and_misuse_is_refused(tiny_model):
    ex = AdaptiveExecutor(adapter_for(tiny_model))
    L = ex.adapter.num_layers
    ids = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(1))
    par = ex.forward(ids, decisions=_pattern(L, {2}, 12))
    cache, logits = KVCache(L), []
    for t in range(12):
        logits.append(ex.forward(ids[:, t : t + 1], cache=cache, decisions=_pattern(L, {2}, 1)).logits)
    assert torch.allclose(par.logits, torch.cat(logits, 1), atol=1e-5)
    with pytest.raises(ValueError, match="dropped for the whole sequence"):
        ex.forward(ids[:, :1], cache=cache, decisions=_pattern(L, set(), 1))  # layer 2 was dropped before
    partial = _pattern(L, {2}, 12)
    partial[0, 3, 2] = SKIP
    with pytest.raises(ValueError, match="DROP for some tokens only"):
        ex.forward(ids, decisions=partial)


def test_exit_does_not_override_drop():
    d = torch.tensor([[[PROCESS, EXIT, DROP, SKIP]]], dtype=torch.int8)
    assert _absorb_exits(d).tolist() == [[[PROCESS, EXIT, DROP, EXIT]]]
    cm = CostModel(Dims(hidden=8, num_heads=2, num_kv_heads=1, head_dim=4, intermediate=16, vocab=10, num_layers=4,
                        mlp_matrices=3, max_positions=32))
    rep = trace_cost(cm, _absorb_exits(d), torch.tensor([[5.0]]))
    assert rep.layer_macs.item() == cm.layer(5.0) + 2 * cm.kv_only  # EXIT pays K/V, DROP nothing


def test_budget_plan_counts():
    rank = torch.tensor([3, 0, 5, 1, 4, 2, 6, 7])  # 0 = most important; layer 7 least
    cfg = PlanConfig(marginal=2, skip_share=0.5)
    plan = budget_plan(rank, 0.5, cfg, kv_fraction=0.0)  # save 4 layers: drop round(4 - 1) = 3, ask 2
    assert (plan == DROP).nonzero().flatten().tolist() == [2, 6, 7]
    assert (plan == ASK).nonzero().flatten().tolist() == [0, 4]
    assert budget_plan(rank, 1.0, cfg, 0.0).tolist().count(DROP) == 0
    assert budget_plan(rank, 0.0, cfg, 0.0).tolist().count(DROP) == 6  # never drops the marginal layers
    with pytest.raises(ValueError):
        PlanConfig(marginal=0)


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
        assert torch.equal(out.trace.overhead_macs, torch.full_like(out.trace.overhead_macs, 3.0 * c.overhead_macs))
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


def test_plan_saved_with_policy(tmp_path):
    p = PolicyNet(len(FEATURES))
    path = save_policy(tmp_path / "p.safetensors", p, "rl", 30, plan=PlanConfig(marginal=3, skip_share=0.25))
    assert load_plan(path, 30) == PlanConfig(marginal=3, skip_share=0.25)
    assert load_plan(save_policy(tmp_path / "q.safetensors", p, "rl", 30), 30) is None
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["plan"])["marginal"] == 3


def test_planned_reinforce_is_deterministic_and_needs_one_budget(tiny):
    _, ex, prof, ids = tiny
    windows = ids[0, :128].reshape(4, 32)
    torch.manual_seed(0)
    start = PolicyNet(len(FEATURES))
    cfg = RLConfig(steps=3, batch=2, seq_len=16, lr=1e-2, lam_lr=2.0, mu=0.0, temperature=2.0, self_critical=True,
                   shared_budget=True, budget_low=0.5, budget_high=0.9)
    p1, h1 = train_reinforce(ex, start, prof, windows, cfg, plan=PlanConfig())
    p2, h2 = train_reinforce(ex, start, prof, windows, cfg, plan=PlanConfig())
    assert h1 == h2 and all(torch.equal(a, b) for a, b in zip(p1.state_dict().values(), p2.state_dict().values()))
    assert any(not torch.equal(a, b) for a, b in zip(p1.state_dict().values(), start.state_dict().values()))
    assert h1[1]["lam"] != h1[0]["lam"]  # the dual price moved
    with pytest.raises(ValueError, match="shared_budget"):
        train_reinforce(ex, start, prof, windows, RLConfig(steps=1), plan=PlanConfig())


def test_counterfactual_traces_match_direct_runs(tiny):
    """Each combination's per-token KL equals a teacher-forced run of the same decisions."""
    import pandas as pd

    from anee.traces import counterfactual_traces, token_kl

    _, ex, prof, ids = tiny
    cfg = PlanConfig(marginal=2)
    windows = ids[0, :64].reshape(2, 32)
    tr = pd.DataFrame(counterfactual_traces(ex, prof, cfg, windows, [0.6]))
    assert sorted(tr.combo.unique()) == [0, 1, 2, 3] and set(tr.slot) == {0, 1}
    assert len(tr) == 4 * 2 * 32 * 2  # combos x windows x tokens x marginal layers
    plan = HeuristicController(prof, plan=cfg).plan(torch.tensor([[0.6]]), 10)
    asked = (plan == ASK).nonzero().flatten()
    for combo, actions in enumerate([(PROCESS, PROCESS), (PROCESS, SKIP), (SKIP, PROCESS), (SKIP, SKIP)]):
        rows = tr[(tr.combo == combo) & (tr.window == 1)].sort_values(["token", "slot"])
        played = torch.tensor(rows.action.to_numpy().reshape(32, 2))
        scripted = torch.tensor(actions).expand(32, 2)
        free = torch.tensor(rows.free.to_numpy().reshape(32, 2))
        assert torch.equal(played[free], scripted[free])  # the script is played wherever the band allows
        d = plan.expand(32, 10).clone()
        d[:, asked] = played
        out = ex.forward(windows[1:2], decisions=d.to(torch.int8).unsqueeze(0))
        kl = token_kl(ex.forward(windows[1:2]).logits, out.logits)[0]
        assert torch.allclose(torch.tensor(rows[rows.slot == 0].token_kl.to_numpy()), kl, atol=1e-5)


def test_hindsight_labels_pick_best_combination_at_share():
    import pandas as pd

    from anee.traces import hindsight_labels

    # two tokens, one marginal layer: combo 0 = PROCESS, combo 1 = SKIP
    kl = {(0, 0): 0.10, (0, 1): 0.12, (1, 0): 0.10, (1, 1): 0.90}
    rows = [{"window": 0, "budget": 0.5, "token": t, "combo": c, "slot": 0, "action": c, "token_kl": v, "f": t}
            for (t, c), v in kl.items()]
    lab = hindsight_labels(pd.DataFrame(rows), skip_share=0.5)
    assert lab.sort_values("token").label.tolist() == [SKIP, PROCESS]  # token 0 tolerates the skip, token 1 does not
    assert hindsight_labels(pd.DataFrame(rows), skip_share=1.0).label.tolist() == [SKIP, SKIP]
    assert hindsight_labels(pd.DataFrame(rows), skip_share=0.0).label.tolist() == [PROCESS, PROCESS]
