"""DROP (a layer removed for the whole sequence) and layer plans: exact logits, zero cost, guarded
misuse, plans that ask the controller only at the marginal layers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _anee_tiny import tiny_setup
from conftest import VOCAB
from safetensors import safe_open

from anee import AdaptiveExecutor, CostModel, adapter_for
from anee.adapters.base import Dims
from anee.cache import KVCache
from anee.controller import (
    ASK,
    HeuristicController,
    LearnedController,
    PacingConfig,
    PlanConfig,
    PolicyNet,
    budget_plan,
    marginal_order,
)
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
    assert budget_plan(rank, 1.0, cfg, 0.0).tolist() == [PROCESS] * 8  # nothing to save: the full model, nothing asked
    assert budget_plan(rank, 0.0, cfg, 0.0).tolist().count(DROP) == 6  # never drops the marginal layers
    # ask no more layers than the budget needs skipped: saving 0.8 layers at share 0.5 needs one asked layer
    wide = PlanConfig(marginal=4, skip_share=0.5)
    assert budget_plan(rank, 0.9, wide, 0.0).tolist() == [PROCESS] * 7 + [ASK]
    assert (budget_plan(rank, 0.5, wide, 0.0) == ASK).nonzero().flatten().tolist() == [0, 2, 4, 5]  # after dropping 7, 6
    assert budget_plan(rank, 0.5, wide, 0.0).tolist().count(DROP) == 2  # round(4 - 0.5 * 4)
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
                   shared_budget=True, budgets=(0.6,))
    wide = PacingConfig(slack=0.5)  # on 10 layers the default band leaves each token exactly one of two skips
    p1, h1 = train_reinforce(ex, start, prof, windows, cfg, pacing=wide, plan=PlanConfig())
    p2, h2 = train_reinforce(ex, start, prof, windows, cfg, pacing=wide, plan=PlanConfig())
    assert h1 == h2 and all(torch.equal(a, b) for a, b in zip(p1.state_dict().values(), p2.state_dict().values()))
    assert any(not torch.equal(a, b) for a, b in zip(p1.state_dict().values(), start.state_dict().values()))
    assert h1[1]["lam"] != h1[0]["lam"]  # the dual price of budget 0.6 moved
    assert all(h["budget"] == 0.6 and 0.0 <= h["greedy_skip_share"] <= 1.0 for h in h1)
    with pytest.raises(ValueError, match="shared_budget"):
        train_reinforce(ex, start, prof, windows, RLConfig(steps=1), plan=PlanConfig())


def test_nested_outcomes_match_direct_runs(tiny):
    """Option j of a budget's plan = its j least important marginal layers SKIPPED for every token;
    j = 0 processes them all, j = m is static removal of the dropped and the marginal layers."""
    import torch.nn.functional as F

    from anee.traces import nested_outcomes, token_kl

    _, ex, prof, ids = tiny
    cfg = PlanConfig(marginal=3)
    windows = ids[0, :64].reshape(2, 32)
    oc = nested_outcomes(ex, prof, cfg, windows, [0.6, 1.0])
    assert sorted(oc[oc.budget == 0.6].skips.unique()) == [0, 1, 2, 3] and set(oc[oc.budget == 1.0].skips) == {0}
    assert len(oc) == 2 * 32 * (4 + 1)
    plan = HeuristicController(prof, plan=cfg).plan(torch.tensor([[0.6]]), 10)
    order = marginal_order(plan, prof.rank)
    assert [int(prof.rank[i]) for i in order] == sorted((int(prof.rank[i]) for i in order), reverse=True)
    w = windows[1:2]
    full = ex.forward(w).logits
    for j in (0, 3):
        skipped = set(order[:j]) | set((plan == DROP).nonzero().flatten().tolist())
        pattern = torch.tensor([SKIP if i in skipped else PROCESS for i in range(10)], dtype=torch.int8).expand(1, 32, 10)
        logits = ex.forward(w, decisions=pattern).logits
        rows = oc[(oc.window == 1) & (oc.budget == 0.6) & (oc.skips == j)].sort_values("token")
        assert torch.allclose(torch.tensor(rows.token_kl.to_numpy()), token_kl(full, logits)[0], atol=1e-5)
        nll = F.cross_entropy(logits[0, :-1], w[0, 1:], reduction="none")
        assert torch.allclose(torch.tensor(rows.token_nll.to_numpy()[:-1], dtype=torch.float32), nll, atol=1e-5)
        assert np.isnan(rows.token_nll.to_numpy()[-1])
    assert (oc[(oc.budget == 1.0)].token_kl.abs() < 1e-5).all()  # budget 1.0: nothing asked, the full model


def test_allocation_traces_play_the_allocation_and_record_the_stream(tiny):
    """Every token skips exactly its allocated number of marginal layers, the least important ones;
    the recorded residual stream is the input of that layer in a teacher-forced run of the same
    decisions, and the recorded KL is that run's."""
    import pandas as pd

    from anee.traces import allocation_traces, to_dataset, token_kl

    _, ex, prof, ids = tiny
    cfg = PlanConfig(marginal=3)
    windows = ids[0, :64].reshape(2, 32)
    skips = torch.randint(0, 4, (2, 32), generator=torch.Generator().manual_seed(0))
    alloc = pd.DataFrame({"window": np.repeat([0, 1], 32), "budget": 0.6, "token": np.tile(np.arange(32), 2), "skips": skips.flatten().numpy()})
    tr = allocation_traces(ex, prof, cfg, windows, alloc, PacingConfig(slack=0.5))
    assert len(tr["label"]) == 2 * 32 * 3 and tr["hidden"].shape == (2 * 32 * 3, 32) and tr["hidden"].dtype == np.float16
    df = pd.DataFrame({k: v for k, v in tr.items() if k != "hidden"})
    per_token = df.assign(s=df.label == SKIP).groupby(["window", "token"]).s.sum().to_numpy()
    assert np.array_equal(per_token, skips.flatten().numpy())
    plan = HeuristicController(prof, plan=cfg).plan(torch.tensor([[0.6]]), 10)
    order = marginal_order(plan, prof.rank)
    w1 = df.window.to_numpy() == 1
    d = plan.expand(32, 10).clone()
    for slot, layer in enumerate(order):
        d[:, layer] = torch.where(skips[1] > slot, SKIP, PROCESS)
    out = ex.forward(windows[1:2], decisions=d.to(torch.int8).unsqueeze(0), collect_hidden=True)
    for layer in order:
        rows = np.flatnonzero(w1 & (df.layer.to_numpy() == layer))
        assert np.allclose(tr["hidden"][rows].astype(np.float32), out.hidden_states[layer][0].numpy(), atol=2e-2, rtol=1e-2)
    kl = token_kl(ex.forward(windows[1:2]).logits, out.logits)[0]
    first = df[w1 & (df.layer == order[0])].sort_values("token")
    assert torch.allclose(torch.tensor(first.token_kl.to_numpy()), kl, atol=1e-5)
    assert to_dataset(tr).features["hidden"].length == 32


def test_hindsight_allocation_gives_tolerant_tokens_the_skips():
    import pandas as pd

    from anee.traces import hindsight_allocation

    # two tokens, two marginal layers: token 0 tolerates both skips, token 1 neither
    kl = {(0, 0): 0.10, (0, 1): 0.11, (0, 2): 0.13, (1, 0): 0.10, (1, 1): 0.60, (1, 2): 1.50}
    rows = pd.DataFrame([{"window": 0, "budget": 0.5, "token": t, "skips": j, "token_kl": v} for (t, j), v in kl.items()])
    alloc, prices = hindsight_allocation(rows, skip_share=0.5)
    assert alloc.sort_values("token").skips.tolist() == [2, 0]  # mean 1 = half of the 2 marginal layers
    assert prices.marginal.tolist() == [2] and prices.mean_skips.tolist() == [1.0]
    assert 0.015 - 1e-6 <= prices.price.item() <= 0.5 + 1e-6  # between token 0's and token 1's marginal cost
    assert hindsight_allocation(rows, skip_share=1.0)[0].skips.tolist() == [2, 2]
    assert hindsight_allocation(rows, skip_share=0.0)[0].skips.tolist() == [0, 0]
