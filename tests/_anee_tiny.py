"""Tiny random LLaMA + calibrated profiler shared by the controller / profiler / RL tests."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from anee import AdaptiveExecutor, adapter_for
from anee.profiler import calibrate_profiler


def tiny_llama(layers: int = 6, seed: int = 0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval()


def quant_llama(seed: int = 0, layers: int = 4):
    """The tiny LLaMA of the quantisation / precision / BranchyNet tests (vocab 97, context 64)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def tiny_setup(layers: int = 6, k: int = 16):
    model = tiny_llama(layers)
    ex = AdaptiveExecutor(adapter_for(model))
    ids = torch.randint(0, 128, (1, 256), generator=torch.Generator().manual_seed(1))
    prof = calibrate_profiler(ex, ids, k=k, window=64, max_windows=2)
    return model, ex, prof, ids
