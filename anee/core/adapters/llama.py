"""LLaMA-style families (SmolLM2, TinyLlama, Llama, Mistral, Qwen2): rotary positions, RMSNorm,
grouped-query attention, gated SiLU MLP. One adapter covers every HF model whose blocks expose
`self_attn.{q,k,v,o}_proj`, `input_layernorm`, `post_attention_layernorm` and `mlp`."""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from .base import Dims, ModelAdapter, split_heads


class LlamaAdapter(ModelAdapter):
    """Adapter for `LlamaForCausalLM` and architecturally identical decoders."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.backbone = model.model
        cfg = model.config
        window = getattr(cfg, "sliding_window", None)
        # Within a sliding window attention equals full attention; beyond it we would need a banded
        # mask, so the usable context is capped at the window instead of silently being wrong.
        use_window = window and getattr(cfg, "use_sliding_window", cfg.model_type == "mistral")
        self.max_context = min(cfg.max_position_embeddings, window) if use_window else cfg.max_position_embeddings

    @property
    def dims(self) -> Dims:
        cfg = self.model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return Dims(
            hidden=cfg.hidden_size,
            num_heads=cfg.num_attention_heads,
            num_kv_heads=cfg.num_key_value_heads or cfg.num_attention_heads,
            head_dim=head_dim,
            intermediate=cfg.intermediate_size,
            vocab=cfg.vocab_size,
            num_layers=cfg.num_hidden_layers,
            mlp_matrices=3,
            max_positions=self.max_context,
        )

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.backbone.embed_tokens(input_ids)

    def position_state(self, hidden: torch.Tensor, position_ids: torch.Tensor):
        return self.backbone.rotary_emb(hidden, position_ids=position_ids)

    def layer(self, index: int) -> nn.Module:
        return self.backbone.layers[index]

    def attn_norm(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.layer(index).input_layernorm(hidden)

    def qkv(self, index, x, pos):
        attn = self.layer(index).self_attn
        hd = self.dims.head_dim
        q = split_heads(attn.q_proj(x), hd)
        k = split_heads(attn.k_proj(x), hd)
        v = split_heads(attn.v_proj(x), hd)
        cos, sin = pos
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        return q, k, v

    def kv(self, index, x, pos):
        attn = self.layer(index).self_attn
        hd = self.dims.head_dim
        k = split_heads(attn.k_proj(x), hd)
        v = split_heads(attn.v_proj(x), hd)
        cos, sin = pos
        # apply_rotary_pos_emb rotates both arguments; rotating k alone is the same arithmetic.
        k = (k * cos.unsqueeze(1)) + (_rotate_half(k) * sin.unsqueeze(1))
        return k, v

    def attn_out(self, index: int, attn: torch.Tensor) -> torch.Tensor:
        return self.layer(index).self_attn.o_proj(attn)

    def mlp(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        block = self.layer(index)
        return block.mlp(block.post_attention_layernorm(hidden))

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.backbone.norm(hidden)

    def lm_head(self) -> nn.Linear:
        return self.model.lm_head


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Rotate half the hidden dims (same as transformers' `rotate_half`)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)
