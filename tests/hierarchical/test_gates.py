"""Exit gates: decoupled Gumbel temperatures, exit depths that scale with the model."""

from __future__ import annotations

import pytest
import torch
from _anee_tiny import hier_llama as tiny_llama

from anee.hierarchical.gates import default_exit_layers, gumbel_decoupled
from anee.hierarchical.model import HierarchicalModel


def test_gumbel_decoupled_temperatures():
    logits = torch.tensor([[0.3, -0.2]] * 4, requires_grad=True)
    y = gumbel_decoupled(logits, tau_forward=0.1, tau_backward=2.0, hard=True,
                         generator=torch.Generator().manual_seed(0))
    v = y.detach()
    assert torch.allclose(v, v.round(), atol=1e-6) and torch.allclose(v.sum(-1), torch.ones(4))  # hard forward
    y[:, 1].sum().backward()
    assert logits.grad.abs().sum() > 0  # soft backward
    assert 0 < logits.grad.abs().max() < 0.25  # 1/(4*tau_backward) bounds the softmax slope at tau=2


def test_exit_layers_scale_with_depth():
    assert default_exit_layers(30) == (6, 12, 18, 23, 27)
    assert default_exit_layers(22) == (4, 9, 13, 17, 20)
    with pytest.raises(ValueError, match="exit_layers"):
        HierarchicalModel(tiny_llama(), exit_layers=(0, 3))
