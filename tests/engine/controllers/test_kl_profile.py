"""The KL-profile controller: a token's nested depth is the argmin of its predicted KL minus the
price times the layers it saves; the plan DROPs the order's first m layers; sequential decode gives
the parallel decisions; the table and the checkpoint behave; bad input is refused."""

import numpy as np
import pytest
import torch
from _anee_tiny import random_bypass, tiny_setup

from anee import DROP, PROCESS, SKIP, AdaptiveExecutor
from anee.core.actions import ASK
from anee.core.kv_cache import KVCache
from anee.engine.controllers.kl_profile import KLProfileController, depth_options, profile_features

L, ORDER = 8, [5, 3, 6, 2]


@pytest.fixture(scope="module")
def tiny():
    _, ex, _, ids = tiny_setup(layers=L)
    return ex, ids


def controller(ex, seed=0, budgets=(0.7, 0.8, 0.9), drops=(2, 1, 0), prices=(0.5, 0.3, 0.1), skip=0.2, drop=0.05):
    D = ex.adapter.dims.hidden
    weight = torch.randn(D + 4, len(ORDER) + 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return KLProfileController(ORDER, L, weight, torch.tensor(budgets), torch.tensor(drops), torch.tensor(prices), 64,
                               None, skip, drop)


def test_plan_drops_the_first_m_and_asks_the_rest(tiny):
    ex, _ = tiny
    c = controller(ex)
    assert c.anchor_layer == 2 and c.max_depth == 4
    plan = c.plan(torch.tensor([[0.75]]), L)  # runs at table budget 0.7: m = 2
    expected = torch.full((L,), PROCESS)
    expected[[5, 3]], expected[[6, 2]] = DROP, ASK
    assert torch.equal(plan, expected)
    assert torch.equal(c.plan(torch.tensor([[0.9]]), L)[ORDER], torch.full((4,), ASK))  # m = 0
    assert (c.plan(torch.tensor([[1.0]]), L) == PROCESS).all()  # the full model, never asked
    with pytest.raises(ValueError, match="below the lowest calibrated budget 0.70"):
        c.plan(torch.tensor([[0.69]]), L)
    with pytest.raises(ValueError, match="one energy_budget for the whole batch"):
        c.plan(torch.tensor([[0.8], [0.9]]), L)


def test_depth_is_the_priced_argmin_and_decisions_are_nested(tiny):
    ex, ids = tiny
    c = controller(ex)
    x = ids[:, :40]
    for budget, g in ((0.8, 1), (0.9, 2), (0.7, 0)):
        out = ex.forward(x, controller=c, budget=budget, collect_hidden=True)
        anchor = out.hidden_states[c.anchor_layer]  # below the anchor every token ran every layer
        m = int(c.drops[g])
        predicted = (profile_features(anchor, torch.arange(40), 64) @ c.weight)[0].numpy()
        opts = depth_options(m, 4, 0.2, 0.05)
        depth = opts.depths[(predicted[:, m:] - float(c.prices[g]) * opts.saved).argmin(1)]
        expected = torch.full((40, L), PROCESS, dtype=torch.int8)
        for t, k in enumerate(depth):
            expected[t, ORDER[:m]] = DROP
            expected[t, ORDER[m:k]] = SKIP
        assert torch.equal(out.trace.decisions[0], expected), budget
        assert len(set(depth.tolist())) > 1  # tokens differ here: the test would see a wrong nesting
        # one call per asked layer, each charged the ridge map's MACs
        assert torch.equal(out.trace.overhead_macs[0],
                           torch.full((40,), float(c.overhead_macs * (4 - m)), dtype=torch.float64))
    assert c.overhead_macs == (ex.adapter.dims.hidden + 4) * 5


def test_sequential_decode_gives_the_parallel_decisions(tiny):
    ex, ids = tiny
    bx = AdaptiveExecutor(ex.adapter, bypass=random_bypass("linear", ex.adapter.dims.hidden, L, seed=1))
    c = controller(ex, seed=3)
    c.bypass = "linear"
    x = ids[:, :24]
    par = bx.forward(x, controller=c, budget=0.8)
    cache, outs = KVCache(L), []
    for t in range(24):
        outs.append(bx.forward(x[:, t : t + 1], cache=cache, controller=c, budget=0.8))
    assert torch.equal(par.trace.decisions, torch.cat([o.trace.decisions for o in outs], 1))
    assert (par.trace.decisions == SKIP).any()
    assert torch.allclose(par.logits, torch.cat([o.logits for o in outs], 1), atol=1e-4)


def test_checkpoint_round_trip_and_its_checks(tiny, tmp_path):
    ex, ids = tiny
    c = controller(ex, seed=5)
    path = c.save(tmp_path / "kl.safetensors")
    back = KLProfileController.from_checkpoint(path, ex)
    x = ids[:, :32]
    assert torch.equal(ex.forward(x, controller=back, budget=0.85).trace.decisions,
                       ex.forward(x, controller=c, budget=0.85).trace.decisions)
    assert (back.order, back.window, back.skip_fraction, back.drop_fraction) == (ORDER, 64, 0.2, 0.05)
    bx = AdaptiveExecutor(ex.adapter, bypass=random_bypass("linear", ex.adapter.dims.hidden, L, seed=1))
    with pytest.raises(ValueError, match="controller was trained with the layer bypass None, "
                                         "the executor runs 'linear': run it"):
        KLProfileController.from_checkpoint(path, bx)
    loose = KLProfileController.from_checkpoint(path)  # loaded without an executor: checked against one later
    loose.check_model(ex)
    with pytest.raises(ValueError, match="controller was trained with the layer bypass None, "
                                         "the executor runs 'linear'"):
        loose.check_model(bx)
    # fitted with one bypass family, refused by an executor running another (the label is saved, not a flag)
    c.bypass = "linear"
    path = c.save(tmp_path / "kl_linear.safetensors")
    assert KLProfileController.from_checkpoint(path, bx).bypass == "linear"
    other = AdaptiveExecutor(ex.adapter,
                             bypass=random_bypass("diag_lowrank", ex.adapter.dims.hidden, L, seed=1, rank=4))
    with pytest.raises(ValueError, match="trained with the layer bypass 'linear', the executor runs 'diag_lowrank-4'"):
        KLProfileController.from_checkpoint(path, other)
    with pytest.raises(TypeError, match="bypass must be the label of the layer bypass it was fitted with"):
        KLProfileController(ORDER, L, c.weight, c.budgets, c.drops, c.prices, 64, True, 0.2, 0.05)


def test_bad_construction_and_a_missing_anchor_are_refused(tiny):
    ex, _ = tiny
    with pytest.raises(ValueError, match="distinct layers"):
        KLProfileController([1, 1], L, torch.zeros(5, 3), torch.tensor([0.8]), torch.tensor([0]), torch.tensor([0.1]),
                            64, None, 0.2, 0.0)
    with pytest.raises(ValueError, match=r"weight must be \[features, 3\]"):
        KLProfileController([1, 2], L, torch.zeros(5, 4), torch.tensor([0.8]), torch.tensor([0]), torch.tensor([0.1]),
                            64, None, 0.2, 0.0)
    with pytest.raises(ValueError, match="ascend strictly"):
        controller(ex, budgets=(0.9, 0.8, 0.7))
    with pytest.raises(ValueError, match="drops must be in 0..3"):
        controller(ex, drops=(4, 0, 0))
    from anee.engine.controllers.base import LayerView

    c = controller(ex)
    view = LayerView(6, L, torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), torch.zeros(1, 2), torch.ones(1, 2),
                     torch.ones(1, 2),
                     torch.tensor([[0.8]]), ex.adapter, ex.cost)
    with pytest.raises(ValueError, match="no anchor state"):
        c.decide(view)


def test_profile_features_normalise_the_stream():
    h = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(0))
    f = profile_features(h * 7.0, torch.tensor([0, 7, 63]), 64)
    assert torch.allclose(f, profile_features(h, torch.tensor([0, 7, 63]), 64))  # scale-free
    assert torch.allclose(f[..., :8].pow(2).mean(-1), torch.ones(2, 3, dtype=torch.float64))
    assert torch.allclose(f[0, :, 8], torch.log1p(torch.tensor([0.0, 7, 63])).double() / np.log(64))
    assert f[0, :, 10].tolist() == [1.0, 1.0, 0.0] and (f[..., 11] == 1).all()
