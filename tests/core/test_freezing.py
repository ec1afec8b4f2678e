"""`frozen` turns a module's gradients off for its body and restores each parameter's own flag."""

from __future__ import annotations

import pytest
import torch

from anee.core.freezing import frozen


def _mixed():
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    m[0].bias.requires_grad_(False)  # one flag already off: it must stay off afterwards
    return m, [p.requires_grad for p in m.parameters()]


def test_frozen_turns_gradients_off_and_restores_each_flag():
    m, flags = _mixed()
    assert flags == [True, False, True, True]
    head = torch.nn.Linear(2, 1)
    with frozen(m):
        assert not any(p.requires_grad for p in m.parameters())
        head(m(torch.randn(5, 3))).sum().backward()  # gradients reach only the module outside
    assert [p.requires_grad for p in m.parameters()] == flags
    assert all(p.grad is None for p in m.parameters()) and head.weight.grad is not None


def test_frozen_restores_when_the_body_raises():
    m, flags = _mixed()
    with pytest.raises(RuntimeError, match="boom"), frozen(m):
        raise RuntimeError("boom")
    assert [p.requires_grad for p in m.parameters()] == flags
