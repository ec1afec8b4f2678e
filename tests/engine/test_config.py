"""Energy budgets outside [0, 1] are refused wherever they enter; any real scalar is accepted alike."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import tiny_gpt2, wrap

from anee import ANEEConfig


@pytest.mark.parametrize("budget", [-0.01, 1.01, math.nan, float("inf")])
def test_budget_outside_unit_interval(budget):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ANEEConfig(model_name="x", energy_budget=budget)
    wrapper = wrap(tiny_gpt2())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        wrapper.generate_ids(torch.tensor([[1, 2]]), 2, energy_budget=budget)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        wrapper.executor.forward(torch.tensor([[1, 2]]), budget=torch.tensor([0.5, budget]).expand(2)[1:])


@pytest.mark.parametrize("budget", ["0.5", True, None, [0.5], 0.5j, torch.tensor([0.5, 0.5])])
def test_budget_of_another_type_lists_the_accepted_ones(budget):
    message = (r"energy_budget must be a finite number in \[0, 1\] .*: a Python int or float, a NumPy scalar "
               r"or a 0-d torch tensor")
    with pytest.raises(TypeError, match=message):
        ANEEConfig(model_name="x", energy_budget=budget)
    if budget is not None:  # None means the config's budget in generate_ids
        with pytest.raises(TypeError, match=message):
            wrap(tiny_gpt2()).generate_ids(torch.tensor([[1, 2]]), 2, energy_budget=budget)


def test_any_real_scalar_budget_is_accepted_alike():
    """np.float32(0.5) and torch.tensor(0.5) used to be refused while np.float64(0.5) was accepted."""
    wrapper = wrap(tiny_gpt2())
    plain = wrapper.generate_ids(torch.tensor([[1, 2, 3]]), 3, energy_budget=0.5).trace.decisions
    for budget in (np.float32(0.5), np.float64(0.5), np.float16(0.5), np.array(0.5), torch.tensor(0.5),
                   torch.tensor(0.5, dtype=torch.float64)):
        assert ANEEConfig(model_name="x", energy_budget=budget).energy_budget == 0.5
        assert torch.equal(wrapper.generate_ids(torch.tensor([[1, 2, 3]]), 3, energy_budget=budget).trace.decisions,
                           plain)
    assert ANEEConfig(model_name="x", energy_budget=np.int64(1)).energy_budget == 1.0


def test_config_numbers():
    config = ANEEConfig(model_name="x", min_layers=np.int64(3), exit_budget_threshold=torch.tensor(0.2),
                        seed=np.uint32(7))
    assert (config.min_layers, config.exit_budget_threshold, config.seed) == (3, pytest.approx(0.2), 7)
    assert type(config.min_layers) is int and type(config.seed) is int
    with pytest.raises(TypeError, match="min_layers must be an integer >= 0"):
        ANEEConfig(model_name="x", min_layers=2.0)
    with pytest.raises(ValueError, match="min_layers must be an integer >= 0"):
        ANEEConfig(model_name="x", min_layers=-1)
    with pytest.raises(ValueError, match=r"exit_budget_threshold must be a finite number in \[0, 1\]"):
        ANEEConfig(model_name="x", exit_budget_threshold=math.nan)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        ANEEConfig(model_name="x", seed=-1)


def test_a_model_loaded_by_name_goes_to_the_auto_device_by_default(monkeypatch):
    """ANEEConfig.device defaulted to "cpu" while the notebooks and the command line default to "auto"
    (CUDA when torch sees a GPU): the quickstart then ran on the CPU of a GPU machine."""
    import anee.engine.wrapper as wrapper_module

    asked = []

    def fake_load(name, device, dtype):
        asked.append(device)
        return tiny_gpt2(), None

    monkeypatch.setattr(wrapper_module, "load_model", fake_load)
    wrapper_module.ANEEWrapper(ANEEConfig(model_name="tiny", controller="budget"))
    wrapper_module.ANEEWrapper(ANEEConfig(model_name="tiny", controller="budget", device="cpu"))
    assert asked == ["auto", "cpu"]
