"""Two-phase training touches only its own parameters."""

from __future__ import annotations

import pytest
import torch
from _anee_tiny import hier_llama as tiny_llama
from _anee_tiny import token_ids as ids

from anee.hierarchical.model import HierarchicalModel
from anee.hierarchical.training import TrainConfig, train


def test_two_phase_training_touches_only_its_parameters():
    base = tiny_llama()
    model = HierarchicalModel(base)
    before_base = {k: v.clone() for k, v in base.state_dict().items()}
    r0 = [p.clone() for p in model.routers.parameters()]
    g0 = [p.clone() for p in model.gates.parameters()]
    data = ids(1, 600, 7)
    cfg = TrainConfig(seq_len=32, batch=2, router_steps=2, exit_steps=2)
    hist = train(model, data, "routers", cfg)
    assert [h["phase"] for h in hist] == ["routers"] * 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    assert any(not torch.equal(a, b) for a, b in zip(r0, model.routers.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(g0, model.gates.parameters()))
    assert model.sensitivity.min() > 0  # measured before training the routers
    r1 = [p.clone() for p in model.routers.parameters()]
    hist = train(model, data, "exit", cfg)
    assert [h["phase"] for h in hist] == ["exit"] * 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    assert all(torch.equal(a, b) for a, b in zip(r1, model.routers.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(g0, model.gates.parameters()))
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before_base.items())
    assert all(p.requires_grad for p in base.parameters())  # flags restored
    with pytest.raises(ValueError, match="phase"):
        train(model, data, "everything", cfg)
