"""Tiny random LLaMA + calibrated profiler shared by the controller / profiler / RL tests."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from anee import AdaptiveExecutor, adapter_for
from anee.profiler import calibrate_profiler


def llama(layers: int, hidden: int, heads: int, kv_heads: int, ffn: int, vocab: int, positions: int,
          seed: int = 0, qk_scale: float = 1.0, **special_ids) -> LlamaForCausalLM:
    """The one tiny random LLaMA builder; `qk_scale` sharpens attention (random q/k weights are tiny,
    so attention would be nearly uniform and position bugs would go unnoticed)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=positions, **special_ids)
    model = LlamaForCausalLM(cfg).eval()
    if qk_scale != 1.0:
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.weight.mul_(qk_scale)
                layer.self_attn.k_proj.weight.mul_(qk_scale)
    return model


def tiny_llama(layers: int = 6, seed: int = 0) -> LlamaForCausalLM:
    """Controller / profiler / RL tests: vocab 128 (the profiler's shortlist needs room), context 256."""
    return llama(layers, 32, 4, 2, 64, vocab=128, positions=256, seed=seed)


def quant_llama(seed: int = 0, layers: int = 4) -> LlamaForCausalLM:
    """Quantisation / precision / BranchyNet / granularity tests: vocab 97, context 64."""
    return llama(layers, 32, 4, 2, 48, vocab=97, positions=64, seed=seed)


def tiny_setup(layers: int = 6, k: int = 16):
    model = tiny_llama(layers)
    ex = AdaptiveExecutor(adapter_for(model))
    ids = torch.randint(0, 128, (1, 256), generator=torch.Generator().manual_seed(1))
    prof = calibrate_profiler(ex, ids, k=k, window=64, max_windows=2)
    return model, ex, prof, ids
