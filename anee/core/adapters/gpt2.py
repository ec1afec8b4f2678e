"""GPT-2 family (gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2): learned absolute positions,
LayerNorm, fused Conv1D q/k/v projection."""

from __future__ import annotations

import torch
from torch import nn

from .base import Dims, ModelAdapter, split_heads


class GPT2Adapter(ModelAdapter):
    """Adapter for `GPT2LMHeadModel`."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        cfg = model.config
        if cfg.scale_attn_by_inverse_layer_idx or cfg.reorder_and_upcast_attn or not cfg.scale_attn_weights:
            raise ValueError("GPT2Adapter supports the standard GPT-2 attention scaling only")
        self.transformer = model.transformer

    @property
    def dims(self) -> Dims:
        cfg = self.model.config
        return Dims(
            hidden=cfg.n_embd,
            num_heads=cfg.n_head,
            num_kv_heads=cfg.n_head,
            head_dim=cfg.n_embd // cfg.n_head,
            intermediate=cfg.n_inner or 4 * cfg.n_embd,
            vocab=cfg.vocab_size,
            num_layers=cfg.n_layer,
            mlp_matrices=2,
            max_positions=cfg.n_positions,
        )

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.transformer.wte(input_ids) + self.transformer.wpe(position_ids)

    def layer(self, index: int) -> nn.Module:
        return self.transformer.h[index]

    def attn_norm(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.layer(index).ln_1(hidden)

    def qkv(self, index, x, pos):
        d = self.dims
        q, k, v = self.layer(index).attn.c_attn(x).split(d.hidden, dim=2)
        return split_heads(q, d.head_dim), split_heads(k, d.head_dim), split_heads(v, d.head_dim)

    def kv(self, index, x, pos):
        # Only the K and V columns of the fused projection: 2/3 of c_attn's work.
        d = self.dims
        c_attn = self.layer(index).attn.c_attn
        kv = torch.addmm(c_attn.bias[d.hidden :], x.reshape(-1, d.hidden), c_attn.weight[:, d.hidden :])
        k, v = kv.view(*x.shape[:-1], 2 * d.hidden).split(d.hidden, dim=2)
        return split_heads(k, d.head_dim), split_heads(v, d.head_dim)

    def attn_out(self, index: int, attn: torch.Tensor) -> torch.Tensor:
        return self.layer(index).attn.c_proj(attn)

    def mlp(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        block = self.layer(index)
        return block.mlp(block.ln_2(hidden))

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.transformer.ln_f(hidden)

    def lm_head(self) -> nn.Linear:
        return self.model.lm_head
