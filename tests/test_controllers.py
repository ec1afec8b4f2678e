import pytest
import torch
from _anee_tiny import tiny_setup

from anee import BudgetController
from anee.cache import KVCache
from anee.controller import (
    EXIT,
    PROCESS,
    SKIP,
    Guards,
    HeuristicConfig,
    HeuristicController,
    LearnedController,
    PacingConfig,
    PolicyNet,
    apply_guards,
)
from anee.policy_io import load_policy, save_policy
from anee.profiler import FEATURES


@pytest.fixture(scope="module")
def tiny():
    return tiny_setup(layers=10)


def _controllers(prof):
    torch.manual_seed(0)
    return {"heuristic": HeuristicController(prof), "learned": LearnedController(PolicyNet(len(FEATURES)), prof)}


@pytest.mark.parametrize("budget", [0.3, 0.5, 0.7, 0.9, 1.0])
def test_budget_band_per_token(tiny, budget):
    _, ex, prof, ids = tiny
    for name, c in _controllers(prof).items():
        out = ex.forward(ids[:, :64].reshape(2, 32), controller=c, budget=budget)
        rep = out.trace.cost(ex.cost)
        frac = rep.layer_macs / rep.full_layer_macs
        assert (frac >= budget - 0.05 - 1e-9).all() and (frac <= min(budget + 0.05, 1.0) + 1e-9).all(), name
        assert abs(rep.layer_fraction - budget) <= 0.05


def test_overhead_charged_per_live_call(tiny):
    _, ex, prof, ids = tiny
    c = _controllers(prof)["learned"]
    out = ex.forward(ids[:, :32], controller=c, budget=0.5)
    d = out.trace.decisions[0]
    first_exit = [(row == EXIT).nonzero().min().item() + 1 if (row == EXIT).any() else 10 for row in d]
    expected = torch.tensor(first_exit, dtype=torch.float64) * c.overhead_macs
    assert torch.equal(out.trace.overhead_macs[0], expected)
    assert c.overhead_macs == prof.overhead_macs + c.policy.macs


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
    seq = torch.cat([ex.forward(x[:, t : t + 1], cache=cache, controller=shifted, budget=0.6).trace.decisions for t in range(32)], 1)
    assert torch.equal(par, seq)
    with pytest.raises(ValueError, match="entropy_shift"):
        HeuristicController(prof, HeuristicConfig(entropy_shift=0.1))


def test_apply_guards_exact():
    raw = torch.tensor([SKIP, PROCESS, EXIT, EXIT, PROCESS])
    g = Guards(must_process=torch.tensor([True, False, False, False, False]),
               may_process=torch.tensor([True, False, True, True, True]),
               may_exit=torch.tensor([True, True, False, True, True]))
    assert apply_guards(raw, g).tolist() == [PROCESS, EXIT, SKIP, EXIT, PROCESS]
    assert g.free.tolist() == [False, False, True, True, True]


def test_full_budget_processes_everything(tiny):
    _, ex, prof, ids = tiny
    c = HeuristicController(prof, pacing=PacingConfig(slack=0.0))
    out = ex.forward(ids[:, :16], controller=c, budget=1.0)
    assert (out.trace.decisions == PROCESS).all()
    assert torch.allclose(out.logits, ex.forward(ids[:, :16]).logits, atol=1e-5)


def test_existing_budget_controller_still_works(tiny):
    _, ex, _, ids = tiny
    rep = ex.forward(ids[:, :16], controller=BudgetController(), budget=0.5).trace.cost(ex.cost)
    assert rep.layer_fraction <= 0.5 + 1e-9


def test_policy_size_and_checkpoint(tmp_path):
    p = PolicyNet(len(FEATURES))
    assert sum(t.numel() for t in p.parameters()) <= 10_000
    assert p.macs == len(FEATURES) * 32 + 32 * 32 + 32 * 3
    path = save_policy(tmp_path / "w.safetensors", p, "warmstart", 30)
    q = load_policy(path, 30, kind="warmstart")
    x = torch.randn(4, len(FEATURES))
    assert torch.equal(p(x), q(x))
    with pytest.raises(ValueError, match="num_layers"):
        load_policy(path, 24)
    with pytest.raises(ValueError, match="kind"):
        load_policy(path, 30, kind="rl")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a valid safetensors.*notebook 03"):
        load_policy(bad, 30)
    from anee.checkpoints import save_checkpoint
    sd = dict(p.state_dict())
    sd["net.0.weight"] = torch.zeros(32, 5)
    import json
    meta = {"format": "anee-policy", "version": "1", "kind": "rl", "features": json.dumps(list(FEATURES)),
            "num_features": str(len(FEATURES)), "hidden": "32", "num_layers": "30"}
    save_checkpoint(tmp_path / "shape.safetensors", sd, meta)
    with pytest.raises(ValueError, match="shape"):
        load_policy(tmp_path / "shape.safetensors", 30)
