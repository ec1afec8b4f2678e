"""The learned controller: overhead per live call, the residual-stream read is causal and recorded,
the calibrated offset moves the SKIP logit only."""

import pytest
import torch
from _anee_tiny import controllers as _controllers
from _anee_tiny import tiny_setup

from anee.core.actions import EXIT, PROCESS, SKIP
from anee.core.kv_cache import KVCache
from anee.engine.controllers.learned import LearnedController
from anee.engine.controllers.policy import PolicyNet
from anee.engine.profiler import FEATURES


@pytest.fixture(scope="module")
def tiny():
    return tiny_setup(layers=10)


def test_overhead_charged_per_live_call(tiny):
    _, ex, prof, ids = tiny
    c = _controllers(prof)["learned"]
    out = ex.forward(ids[:, :32], controller=c, budget=0.5)
    d = out.trace.decisions[0]
    first_exit = [(row == EXIT).nonzero().min().item() + 1 if (row == EXIT).any() else 10 for row in d]
    expected = torch.tensor(first_exit, dtype=torch.float64) * c.overhead_macs
    assert torch.equal(out.trace.overhead_macs[0], expected)
    assert c.overhead_macs == prof.overhead_macs + c.policy.macs


def test_reading_controller_is_causal_and_records_the_stream(tiny):
    """With a residual-stream read, sequential decode still makes the decisions of parallel mode, and
    the records carry the stream each decision saw."""
    _, ex, prof, ids = tiny
    torch.manual_seed(2)
    p = PolicyNet(len(FEATURES), 32, hidden_size=32, rank=4)
    with torch.no_grad():
        p.read.weight.mul_(20.0)  # make the read matter
    c = LearnedController(p, prof, record=True)
    x = ids[:, :12]
    par = ex.forward(x, controller=c, budget=0.6, collect_hidden=True)
    assert [int(r["layer"]) for r in c.records] == list(range(10))
    assert all(torch.equal(r["hidden"], par.hidden_states[int(r["layer"])]) for r in c.records)
    c.record = False
    cache = KVCache(10)
    seq = torch.cat([ex.forward(x[:, t : t + 1], cache=cache, controller=c, budget=0.6).trace.decisions
                     for t in range(12)], 1)
    assert torch.equal(par.trace.decisions, seq)
    assert len(par.trace.decisions.unique()) > 1


def test_learned_controller_adds_the_offset_to_skip_only(tiny):
    """The calibrated offset shifts the SKIP logit alone; `for_full_prompt` reads the second table."""
    _, _, prof, _ = tiny
    torch.manual_seed(0)
    p = PolicyNet(len(FEATURES))
    c = LearnedController(p, prof)
    f = torch.randn(2, 3, len(FEATURES))
    f[..., prof.budget_index] = 0.6
    before = c.logits(f)
    p.set_skip_offsets(torch.tensor([0.5, 0.7]), torch.tensor([1.0, 3.0]))
    diff = c.logits(f) - before
    assert (torch.allclose(diff[..., SKIP], torch.full((2, 3), 2.0)) and diff[..., PROCESS].abs().max() == 0
            and diff[..., EXIT].abs().max() == 0)
    p.set_skip_offsets(torch.tensor([0.6]), torch.tensor([5.0]), after_full_prompt=True)
    twin = c.for_full_prompt()
    diff = twin.logits(f) - c.logits(f)
    assert torch.allclose(diff[..., SKIP], torch.full((2, 3), 3.0)) and diff[..., PROCESS].abs().max() == 0
    assert not c.after_full_prompt and twin.after_full_prompt and twin.policy is p and twin.plan_config is c.plan_config
