"""The per-family interface the executor is written against.

Every decoder-only family reduces to the same pre-norm block:

    x = attn_norm(h);  q, k, v = qkv(x)         # k, v also written to the cache
    h = h + attn_out(attention(q, K_cache, V_cache))
    h = h + mlp(mlp_norm(h))

An adapter exposes exactly those pieces, plus the K/V-only path that a SKIPPED layer runs so the
cache stays aligned. Adding a family means writing one subclass in one new file.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Dims:
    """Shapes that fix the multiply-accumulate count of one layer (see `anee.core.cost`)."""

    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    num_layers: int
    mlp_matrices: int  # 2 for GPT-2 (fc, proj), 3 for gated MLPs (gate, up, down)
    max_positions: int


class ModelAdapter(ABC):
    """Typed access to one family's embeddings, layer sub-blocks, final norm and LM head."""

    def __init__(self, model: nn.Module):
        self.model = model

    # -- shape ---------------------------------------------------------------------------------
    @property
    @abstractmethod
    def dims(self) -> Dims:
        """Layer and head shapes read from the config."""

    @property
    def num_layers(self) -> int:
        """Number of transformer blocks."""
        return self.dims.num_layers

    @property
    def attn_scale(self) -> float:
        """Scale applied to q·k before the softmax."""
        return self.dims.head_dim**-0.5

    # -- embeddings and positions -----------------------------------------------------------------
    @abstractmethod
    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Token (and absolute-position) embeddings, [B, T, D]."""

    def position_state(self, hidden: torch.Tensor, position_ids: torch.Tensor) -> object:
        """Whatever the layers need to encode positions (rotary cos/sin); None for absolute."""
        return None

    # -- one layer -------------------------------------------------------------------------------
    @abstractmethod
    def layer(self, index: int) -> nn.Module:
        """The `index`-th transformer block."""

    @abstractmethod
    def attn_norm(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """The norm in front of attention."""

    @abstractmethod
    def qkv(self, index: int, x: torch.Tensor, pos: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries [B, H, T, hd] and keys/values [B, Hkv, T, hd], positions applied."""

    @abstractmethod
    def kv(self, index: int, x: torch.Tensor, pos: object) -> tuple[torch.Tensor, torch.Tensor]:
        """The K/V-only path: keys and values exactly as `qkv` would produce them."""

    @abstractmethod
    def attn_out(self, index: int, attn: torch.Tensor) -> torch.Tensor:
        """Output projection of merged heads [B, T, H*hd] -> [B, T, D]."""

    @abstractmethod
    def mlp(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """The MLP residual branch, including its own pre-norm: mlp(norm(h))."""

    # -- head --------------------------------------------------------------------------------------
    @abstractmethod
    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """The norm in front of the LM head."""

    @abstractmethod
    def lm_head(self) -> nn.Linear:
        """The output projection to the vocabulary."""

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits from a residual-stream state (logit lens when used mid-stack)."""
        return self.lm_head()(self.final_norm(hidden))


def split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[B, T, n*hd] -> [B, n, T, hd]."""
    b, t, _ = x.shape
    return x.view(b, t, -1, head_dim).transpose(1, 2)
