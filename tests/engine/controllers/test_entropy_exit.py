"""The entropy-exit controller on a language model: the logit lens at the exit depth, checks charged
through `layer_overhead`, no state kept on the controller."""

import torch
from _anee_tiny import quant_llama as tiny_llama

from anee import AdaptiveExecutor, adapter_for
from anee.core.actions import EXIT
from anee.engine.controllers.entropy_exit import EntropyExitController


def test_entropy_exit_controller_on_lm():
    model = tiny_llama(layers=6)
    adapter = adapter_for(model)
    ex = AdaptiveExecutor(adapter)
    ids = torch.randint(0, 97, (1, 9))
    full = ex.forward(ids, collect_hidden=True)
    none = ex.forward(ids, controller=EntropyExitController([2, 4], threshold=0.0))
    assert torch.allclose(none.logits, full.logits, atol=1e-5)
    rep = none.trace.cost(ex.cost)
    # two checks per token, each one LM-head evaluation, charged as overhead
    assert torch.allclose(rep.overhead_macs, torch.full((1, 9), 2.0 * ex.cost.lm_head, dtype=torch.float64))
    allx = ex.forward(ids, controller=EntropyExitController([2, 4], threshold=100.0))
    assert (allx.trace.decisions[0, :, 2:] == EXIT).all() and (allx.trace.layers_executed == 2).all()
    lens = adapter.logits(full.hidden_states[2])
    assert torch.allclose(allx.logits, lens, atol=1e-5)  # output is the logit lens at the exit depth
    assert torch.allclose(allx.trace.cost(ex.cost).overhead_macs,
                          torch.full((1, 9), float(ex.cost.lm_head), dtype=torch.float64))


def test_entropy_exit_controller_keeps_no_state():
    """Its per-layer overhead is reported by `layer_overhead(view)`, not set on the instance per call
    (which threads sharing it would overwrite)."""
    model = tiny_llama(layers=6)
    ex = AdaptiveExecutor(adapter_for(model))
    c = EntropyExitController([2, 4], threshold=3.0)
    before = dict(vars(c))
    out = ex.forward(torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(1)), controller=c)
    assert vars(c) == before and not hasattr(c, "overhead_macs")
    live_at = lambda layer: (out.trace.decisions[..., :layer] != EXIT).all(-1)  # noqa: E731
    expected = ex.cost.lm_head * (live_at(2).double() + live_at(4).double())
    assert torch.equal(out.trace.overhead_macs, expected)
