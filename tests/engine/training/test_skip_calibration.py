"""SKIP-offset calibration brings a policy's greedy skip share to the plan's."""

import pytest
import torch
from _anee_tiny import tiny_setup

from anee.engine.controllers.learned import LearnedController
from anee.engine.controllers.pacing import PacingConfig
from anee.engine.controllers.policy import PolicyNet
from anee.engine.profiler import FEATURES


@pytest.fixture(scope="module")
def tiny():
    return tiny_setup(layers=10)


def test_calibration_brings_the_share_to_the_plan(tiny):
    """A policy that skips almost everywhere: after calibration its greedy share of SKIPs on the
    calibration windows is near the plan's, at each calibrated budget and in between."""
    from anee.engine.controllers.plan import PlanConfig, skip_share
    from anee.engine.training.skip_calibration import calibrate_skip_offsets

    _, ex, prof, ids = tiny
    torch.manual_seed(0)
    p = PolicyNet(len(FEATURES), 32, hidden_size=32, rank=4)
    with torch.no_grad():
        p.net[-1].bias.copy_(torch.tensor([0.0, 3.0, 0.0]))  # SKIP-leaning
    c = LearnedController(p, prof, pacing=PacingConfig(slack=0.5), plan=PlanConfig(marginal=4))
    windows = ids[0, :128].reshape(2, 64)
    table = calibrate_skip_offsets(ex, c, windows, [0.4, 0.7, 1.0])
    assert sorted(table.budget.unique()) == [0.4, 0.7]  # budget 1.0 asks nothing
    first, last = table[table["round"] == 0], table[table["round"] == table["round"].max()]
    assert (first.skip_share > 0.8).all() and ((last.skip_share - 0.5).abs() < 0.1).all()
    between = ex.forward(windows, controller=c, budget=0.55)
    assert abs(skip_share(between.trace.decisions, c.plan(0.55, 10)) - 0.5) < 0.2
    with pytest.raises(ValueError, match="planned"):
        calibrate_skip_offsets(ex, LearnedController(p, prof), windows, [0.5])
