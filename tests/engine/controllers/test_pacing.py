"""Per-token pacing: every token ends in the band around its budget; the guards, exactly; no per-call
state on the controller (record mode reads the exits from the view)."""

import pytest
import torch
from _anee_tiny import controllers as _controllers
from _anee_tiny import tiny_setup

from anee.core.actions import EXIT, PROCESS, SKIP
from anee.engine.controllers.heuristic import HeuristicController
from anee.engine.controllers.pacing import Guards, PacingConfig, apply_guards


@pytest.fixture(scope="module")
def tiny():
    return tiny_setup(layers=10)


@pytest.mark.parametrize("budget", [0.3, 0.5, 0.7, 0.9, 1.0])
def test_budget_band_per_token(tiny, budget):
    _, ex, prof, ids = tiny
    for name, c in _controllers(prof).items():
        out = ex.forward(ids[:, :64].reshape(2, 32), controller=c, budget=budget)
        rep = out.trace.cost(ex.cost)
        frac = rep.layer_macs / rep.full_layer_macs
        assert (frac >= budget - 0.05 - 1e-9).all() and (frac <= min(budget + 0.05, 1.0) + 1e-9).all(), name
        assert abs(rep.layer_fraction - budget) <= 0.05


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


def test_controllers_keep_no_per_call_state(tiny):
    """Which tokens already EXITed comes in the view: deciding changes nothing on the controller."""
    _, ex, prof, ids = tiny
    for name, c in _controllers(prof).items():
        before = {k: v for k, v in vars(c).items() if k != "records"}
        ex.forward(ids[:, :24].reshape(2, 12), controller=c, budget=0.4)
        ex.forward(ids[:, :5], controller=c, budget=0.6)
        assert {k: v for k, v in vars(c).items() if k != "records"} == before, name


def test_records_mark_alive_exactly_the_tokens_not_exited(tiny):
    """In record mode (training), each call's `alive` is the executor's view of the exits so far."""
    _, ex, prof, ids = tiny
    c = _controllers(prof)["learned"]
    c.record = True
    out = ex.forward(ids[:, :30].reshape(2, 15), controller=c, budget=torch.tensor([0.3, 0.6]))
    d = out.trace.decisions
    # exits at several layers
    assert len(set((d == EXIT).int().argmax(-1).flatten().tolist())) > 1 and len(c.records) == 10
    for r in c.records:
        layer = int(r["layer"])
        assert torch.equal(r["alive"], ~(d[..., :layer] == EXIT).any(-1))
