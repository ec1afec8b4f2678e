"""The simple budget controller never exceeds its budget and uses it (also with a layer bypass); per-row
budgets."""

from __future__ import annotations

import pytest
import torch
from _anee_tiny import random_bypass, tiny_setup
from conftest import VOCAB, tiny_llama, wrap

from anee import AdaptiveExecutor, BudgetController, adapter_for


@pytest.fixture(scope="module")
def tiny():
    return tiny_setup(layers=10)


@pytest.mark.parametrize("budget", [0.0, 0.3, 0.5, 0.77, 1.0])
def test_budget_policy_never_exceeds_its_budget(budget):
    model = tiny_llama(n_layer=8)
    wrapper = wrap(model, min_layers=0)
    ids = torch.randint(0, VOCAB, (2, 30), generator=torch.Generator().manual_seed(6))
    report = wrapper(ids, energy_budget=budget).trace.cost(wrapper.cost_model)
    per_token = report.layer_macs / report.full_layer_macs
    assert (per_token <= budget + 1e-9).all() or budget < 8 * wrapper.cost_model.kv_only / report.full_layer_macs.min()
    # and it uses the budget: one more layer would not have fit
    one_layer = (wrapper.cost_model.layer(30) - wrapper.cost_model.kv_only) / report.full_layer_macs.min()
    assert (per_token >= budget - one_layer - 1e-9).all()


def test_per_row_budgets_give_per_row_decisions():
    wrapper = wrap(tiny_llama(n_layer=6))
    ids = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(8))
    trace = wrapper.executor.forward(ids, controller=BudgetController(), budget=torch.tensor([1.0, 0.4])).trace
    assert (trace.layers_executed[0] == 6).all()
    assert (trace.layers_executed[1] < 6).all()


def test_existing_budget_controller_still_works(tiny):
    _, ex, _, ids = tiny
    rep = ex.forward(ids[:, :16], controller=BudgetController(), budget=0.5).trace.cost(ex.cost)
    assert rep.layer_fraction <= 0.5 + 1e-9


@pytest.mark.parametrize("budget", [0.3, 0.6])
def test_budget_policy_stays_within_its_budget_with_a_bypass(budget):
    model = tiny_llama(n_layer=6)
    adapter = adapter_for(model)
    bank = random_bypass("linear", adapter.dims.hidden, 6, seed=0)
    ex = AdaptiveExecutor(adapter, bypass=bank)
    assert ex.cost.skip_path == ex.cost.kv_only + 48 * 48  # K/V plus the linear bypass
    ids = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(0))
    report = ex.forward(ids, controller=BudgetController(), budget=budget).trace.cost(ex.cost)
    per_token = report.layer_macs / report.full_layer_macs
    assert 6 * ex.cost.skip_path < 0.3 * report.full_layer_macs.min()  # the budget is reachable by skipping
    assert (per_token <= budget + 1e-9).all()


def test_budget_policy_that_exits_stays_within_its_budget_with_a_bypass():
    """Leaving by EXIT pays only K/V for the later layers, which is what `affordable` reserves."""
    model = tiny_llama(n_layer=6)
    adapter = adapter_for(model)
    ex = AdaptiveExecutor(adapter, bypass=random_bypass("linear", adapter.dims.hidden, 6, seed=0))
    ids = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(0))
    for budget in (0.3, 0.6):
        report = ex.forward(ids, controller=BudgetController(exit_threshold=1.0), budget=budget).trace.cost(ex.cost)
        per_token = report.layer_macs / report.full_layer_macs
        assert (per_token <= budget + 1e-9).all() and (per_token >= budget - 0.2).all()
