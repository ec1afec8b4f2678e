"""The GPT-2 adapter: the K/V-only path is the K/V slice of the fused c_attn projection."""

from __future__ import annotations

import torch
from conftest import VOCAB

from anee import SKIP, AdaptiveExecutor, adapter_for


def test_gpt2_skip_kv_is_the_kv_slice_of_c_attn():
    from conftest import tiny_gpt2

    model = tiny_gpt2()
    ex = AdaptiveExecutor(adapter_for(model))
    ids = torch.randint(0, VOCAB, (1, 7), generator=torch.Generator().manual_seed(4))
    decisions = torch.full((1, 7, 4), SKIP, dtype=torch.int8)
    out = ex.forward(ids, decisions=decisions, collect_hidden=True)
    block = model.transformer.h[1]
    q, k, v = block.attn.c_attn(block.ln_1(out.hidden_states[1])).split(48, dim=2)
    assert (out.cache.keys[1] - k.view(1, 7, 4, 12).transpose(1, 2)).abs().max() <= 1e-5
    assert (out.cache.values[1] - v.view(1, 7, 4, 12).transpose(1, 2)).abs().max() <= 1e-5
