"""REINFORCE: log-probabilities of free decisions only (and through the read), deterministic runs,
the dual price per budget."""

from __future__ import annotations

import pytest
import torch
from _anee_tiny import tiny_setup

from anee.engine.controllers.pacing import PacingConfig
from anee.engine.controllers.plan import PlanConfig
from anee.engine.controllers.policy import PolicyNet
from anee.engine.profiler import FEATURES
from anee.engine.training.rl import RLConfig, log_prob, train_reinforce


@pytest.fixture(scope="module")
def tiny10():
    return tiny_setup(layers=10)


@pytest.fixture(scope="module")
def tiny():
    return tiny_setup(layers=6)


def test_log_prob_only_free_decisions():
    torch.manual_seed(0)
    p = PolicyNet(len(FEATURES))
    f = torch.randn(1, 4, len(FEATURES))
    raw = torch.tensor([[0, 1, 2, 0]])
    free = torch.tensor([[True, False, True, False]])
    total, _ = log_prob(p, [{"features": f, "raw": raw, "free": free}])
    ref = torch.log_softmax(p(f), -1).gather(-1, raw.unsqueeze(-1)).squeeze(-1) * free
    assert torch.allclose(total, ref) and total[0, 1] == 0 and total[0, 3] == 0
    total.sum().backward()
    assert p.net[0].weight.grad is not None and p.mean.grad is None


def test_reinforce_runs_deterministically(tiny):
    _, ex, prof, ids = tiny
    torch.manual_seed(0)
    start = PolicyNet(len(FEATURES))
    windows = ids[0, :128].reshape(4, 32)
    cfg = RLConfig(steps=3, batch=2, seq_len=16, lr=1e-2, budget_low=0.4, budget_high=0.9)
    p1, h1 = train_reinforce(ex, start, prof, windows, cfg)
    p2, h2 = train_reinforce(ex, start, prof, windows, cfg)
    assert [h["reward"] for h in h1] == [h["reward"] for h in h2] and len(h1) == 3
    assert all(0.35 - 1e-9 <= h["layer_fraction"] <= 0.95 + 1e-9 for h in h1)
    assert not torch.equal(p1.net[0].weight, start.net[0].weight)  # it learned something
    assert torch.equal(p1.net[0].weight, p2.net[0].weight)


def test_log_prob_reaches_the_read():
    torch.manual_seed(0)
    p = PolicyNet(len(FEATURES), 32, hidden_size=16, rank=3)
    rec = {"features": torch.randn(1, 4, len(FEATURES)), "hidden": torch.randn(1, 4, 16),
           "raw": torch.tensor([[0, 1, 1, 0]]), "free": torch.ones(1, 4, dtype=torch.bool)}
    total, _ = log_prob(p, [rec])
    ref = torch.log_softmax(p(rec["features"], rec["hidden"]), -1).gather(-1, rec["raw"].unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(total, ref)
    total.sum().backward()
    assert p.read.weight.grad is not None and p.read.weight.grad.abs().sum() > 0


def test_dual_price_per_budget_pushes_share_to_the_plan(tiny):
    """A policy that never skips: the price of each training budget starts at its own initial value
    and rises (a skip is worth more) while the greedy share of SKIPs is below the plan's."""
    from anee.engine.controllers.pacing import PacingConfig
    from anee.engine.controllers.plan import PlanConfig
    from anee.engine.training.rl import price_to_lam

    _, ex, prof, ids = tiny
    torch.manual_seed(0)
    p = PolicyNet(len(FEATURES))
    with torch.no_grad():
        p.net[-1].bias.copy_(torch.tensor([20.0, 0.0, 0.0]))  # PROCESS everywhere
    cfg = RLConfig(steps=6, batch=1, seq_len=16, lr=1e-6, lam_lr=1.0, mu=0.0, self_critical=True, shared_budget=True,
                   budgets=(0.5, 0.7), lam_by_budget={0.5: 2.0, 0.7: 5.0})
    _, hist = train_reinforce(ex, p, prof, ids[0, :128].reshape(4, 32), cfg, pacing=PacingConfig(slack=0.5),
                              plan=PlanConfig())
    for b, start in ((0.5, 2.0), (0.7, 5.0)):
        lams = [h["lam"] for h in hist if h["budget"] == b]
        assert lams[0] == pytest.approx(start) and all(later > earlier for earlier, later in zip(lams, lams[1:]))
        assert all(h["greedy_skip_share"] == 0.0 for h in hist if h["budget"] == b)
    assert price_to_lam(0.1, ex.cost, 6) == pytest.approx(0.1 * 6 / (1 - ex.cost.kv_only / ex.cost.layer_static))


def test_planned_reinforce_is_deterministic_and_needs_one_budget(tiny10):
    _, ex, prof, ids = tiny10
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
