import pytest
import torch
from _anee_tiny import quant_llama as tiny_llama

from anee import AdaptiveExecutor, adapter_for
from anee.branchynet import (
    BranchyNet,
    EntropyExitController,
    early_exit,
    load_digits_split,
    threshold_sweep,
    train_branchynet,
)
from anee.cost import EXIT


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    xtr, ytr, xte, yte = load_digits_split()
    net = BranchyNet()
    losses = train_branchynet(net, xtr, ytr, epochs=8)
    return net, xte, yte, losses


def test_macs_are_exact():
    net = BranchyNet(width=8)
    stage, head = net.stage_macs((1, 8, 8))
    assert stage[0] == 8 * 9 * 64  # conv 1->8, 3x3, 8x8 output
    assert stage[1] == 16 * 8 * 9 * 64
    assert stage[2] == 32 * 16 * 9 * 16 + 128 * 64
    assert head == [32 * 10, 64 * 10, 64 * 10]


def test_training_and_exits(trained):
    net, x, y, losses = trained
    assert losses[-1] < losses[0]
    stage, head = net.stage_macs((1, 8, 8))
    never = early_exit(net, x, threshold=0.0)  # entropy is never < 0: everyone reaches the end
    assert (never["exit"] == 2).all()
    assert torch.allclose(never["macs"], torch.tensor(float(sum(stage) + sum(head)), dtype=torch.float64))
    assert torch.equal(never["pred"], net(x)[-1].argmax(-1))
    always = early_exit(net, x, threshold=10.0)  # above log(10): everyone leaves at the first exit
    assert (always["exit"] == 0).all() and torch.allclose(always["macs"], torch.tensor(float(stage[0] + head[0]), dtype=torch.float64))
    rows = threshold_sweep(net, x, y, [0.0, 0.05, 0.3, 1.0, 10.0])
    macs = [r["avg_macs"] for r in rows]
    assert macs == sorted(macs, reverse=True)
    assert rows[0]["accuracy"] > 0.85
    mid = rows[2]
    assert 0 < mid["exit1_frac"] + mid["exit2_frac"] < 1 and mid["accuracy"] > rows[-1]["accuracy"]


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
    assert torch.allclose(allx.trace.cost(ex.cost).overhead_macs, torch.full((1, 9), float(ex.cost.lm_head), dtype=torch.float64))
