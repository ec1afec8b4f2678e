"""BranchyNet: exact MACs, training, early exits and the threshold sweep."""

import pytest
import torch

from anee.granularity.branchynet import BranchyNet, early_exit, load_digits_split, threshold_sweep, train_branchynet


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
    assert ((always["exit"] == 0).all()
            and torch.allclose(always["macs"], torch.tensor(float(stage[0] + head[0]), dtype=torch.float64)))
    rows = threshold_sweep(net, x, y, [0.0, 0.05, 0.3, 1.0, 10.0])
    macs = [r["avg_macs"] for r in rows]
    assert macs == sorted(macs, reverse=True)
    assert rows[0]["accuracy"] > 0.85
    mid = rows[2]
    assert 0 < mid["exit1_frac"] + mid["exit2_frac"] < 1 and mid["accuracy"] > rows[-1]["accuracy"]
