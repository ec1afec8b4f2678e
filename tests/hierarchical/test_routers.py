"""Routers: top-k routing over the sequence is not causal (the negative control)."""

from __future__ import annotations

import torch

from anee.hierarchical.routers import topk_route


def test_topk_routing_is_not_causal():
    """The negative control: top-k over the sequence lets future tokens change earlier decisions."""
    s = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    t = torch.tensor([[3.0, 1.0, 2.0, 9.0]])
    assert not torch.equal(topk_route(s, 0.5)[:, :3], topk_route(t, 0.5)[:, :3])
