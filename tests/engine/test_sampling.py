"""Sampling is seeded, and top-k 1 is greedy."""

from __future__ import annotations

import torch
from conftest import tiny_gpt2, wrap


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    wrapper = wrap(tiny_gpt2())
    prompt = torch.tensor([[3, 5, 7, 11]])
    a = wrapper.generate_ids(prompt, 16, do_sample=True, seed=5)
    b = wrapper.generate_ids(prompt, 16, do_sample=True, seed=5)
    c = wrapper.generate_ids(prompt, 16, do_sample=True, seed=6)
    assert torch.equal(a.sequences, b.sequences)
    assert not torch.equal(a.sequences, c.sequences)
    greedy = wrapper.generate_ids(prompt, 16)
    top1 = wrapper.generate_ids(prompt, 16, do_sample=True, top_k=1, seed=9)
    assert torch.equal(greedy.sequences, top1.sequences)
