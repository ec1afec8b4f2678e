"""Energy budgets outside [0, 1] are refused wherever they enter."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_gpt2, wrap

from anee import ANEEConfig


@pytest.mark.parametrize("budget", [-0.01, 1.01, math.nan, float("inf"), "0.5"])
def test_budget_outside_unit_interval(budget):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ANEEConfig(model_name="x", energy_budget=budget)
    wrapper = wrap(tiny_gpt2())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        wrapper.generate_ids(torch.tensor([[1, 2]]), 2, energy_budget=budget)
    if not isinstance(budget, str):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            wrapper.executor.forward(torch.tensor([[1, 2]]), budget=torch.tensor([0.5, budget]).expand(2)[1:])
