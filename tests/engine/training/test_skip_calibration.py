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


def test_full_prompt_calibration_fills_the_second_table_from_governed_tokens_only(tiny):
    """With full_prompt, the prompt runs every layer, the share is of the governed tokens, and only
    the policy's table for tokens after a full-depth prompt changes."""
    from anee.engine.controllers.plan import PlanConfig, skip_share
    from anee.engine.training.skip_calibration import calibrate_skip_offsets

    _, ex, prof, ids = tiny
    torch.manual_seed(0)
    p = PolicyNet(len(FEATURES), 32, hidden_size=32, rank=4)
    with torch.no_grad():
        p.net[-1].bias.copy_(torch.tensor([0.0, 3.0, 0.0]))  # SKIP-leaning
    p.set_skip_offsets(torch.tensor([0.4, 0.7]), torch.tensor([0.5, 0.25]))
    c = LearnedController(p, prof, pacing=PacingConfig(slack=0.5), plan=PlanConfig(marginal=4))
    windows = ids[0, :160].reshape(4, 40)
    table = calibrate_skip_offsets(ex, c, windows, [0.4, 0.7], full_prompt=8)
    assert torch.equal(p.skip_offsets, torch.tensor([0.5, 0.25]))  # the teacher-forced table stays
    assert p.full_prompt_skip_offsets.shape == (2,) and not torch.equal(p.full_prompt_skip_offsets, torch.zeros(2))
    last = table[table["round"] == table["round"].max()]
    assert ((last.skip_share - 0.5).abs() < 0.1).all()
    prompt = ex.forward(windows[:, :8])
    rest = ex.forward(windows[:, 8:], cache=prompt.cache, controller=c.for_full_prompt(), budget=0.7)
    assert skip_share(rest.trace.decisions, c.plan(0.7, 10)) == pytest.approx(
        float(last[last.budget == 0.7].skip_share.iloc[0]))
    for bad in (-1, 40, 2.5):
        with pytest.raises(ValueError, match="full_prompt must be"):
            calibrate_skip_offsets(ex, c, windows, [0.4], full_prompt=bad)


@pytest.mark.parametrize("full_prompt", [0, 8])
def test_calibration_without_the_verifying_round_sets_the_same_offsets(tiny, full_prompt):
    """verify=False skips only the last, measuring round: the offsets it leaves on the policy are
    bit for bit those of a verified calibration, and the table's rounds are the first `rounds`."""
    from anee.engine.controllers.plan import PlanConfig
    from anee.engine.training.skip_calibration import calibrate_skip_offsets

    _, ex, prof, ids = tiny
    windows = ids[0, :160].reshape(4, 40)
    offsets, tables = [], []
    for verify in (True, False):
        torch.manual_seed(0)
        p = PolicyNet(len(FEATURES), 32, hidden_size=32, rank=4)
        with torch.no_grad():
            p.net[-1].bias.copy_(torch.tensor([0.0, 3.0, 0.0]))  # SKIP-leaning
        c = LearnedController(p, prof, pacing=PacingConfig(slack=0.5), plan=PlanConfig(marginal=4))
        tables.append(calibrate_skip_offsets(ex, c, windows, [0.4, 0.7], rounds=2, full_prompt=full_prompt,
                                             verify=verify))
        offsets.append(p.full_prompt_skip_offsets if full_prompt else p.skip_offsets)
    assert not torch.equal(offsets[0], torch.zeros(2)) and torch.equal(offsets[0], offsets[1])
    assert sorted(tables[0]["round"].unique()) == [0, 1, 2] and sorted(tables[1]["round"].unique()) == [0, 1]
    assert tables[1].equals(tables[0][tables[0]["round"] < 2].reset_index(drop=True))
