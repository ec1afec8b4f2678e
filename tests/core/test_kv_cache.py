"""The K/V cache: copies that continue one prompt several times without changing it."""

from __future__ import annotations

import pytest
import torch

from anee.core.kv_cache import KVCache


def _kv(fill: float, positions: int) -> torch.Tensor:
    return torch.full((1, 2, positions, 4), fill)


def test_copy_continues_the_prompt_and_leaves_it_unchanged():
    prompt = KVCache(2)
    for layer in range(2):
        prompt.update(layer, _kv(layer, 3), _kv(-layer, 3))
    prompt.advance(3)
    prompt.padding_mask = torch.ones(1, 3, dtype=torch.bool)
    a, b = prompt.copy(), prompt.copy()
    assert a.length == 3 and a.padding_mask is prompt.padding_mask and a.keys[1] is prompt.keys[1]
    k, v = a.update(1, _kv(7.0, 2), _kv(8.0, 2))
    a.advance(2)
    assert k.shape[2] == 5 and torch.equal(k[:, :, 3:], _kv(7.0, 2)) and torch.equal(v[:, :, :3], _kv(-1.0, 3))
    assert prompt.length == 3 and prompt.keys[1].shape[2] == 3 and torch.equal(prompt.keys[1], _kv(1.0, 3))
    assert b.keys[1].shape[2] == 3 and b.length == 3  # a sibling copy does not see the other's continuation
    b.drop(0)  # a later chunk may drop a layer the prompt kept; the prompt's own record stays
    assert b.dropped[0] is True and prompt.dropped[0] is False
    with pytest.raises(ValueError, match="stays dropped"):
        b.update(0, _kv(0.0, 1), _kv(0.0, 1))
