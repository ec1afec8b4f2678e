"""Exact multiply-accumulate (MAC) counts for one token, component by component.

Only matrix products are counted (a MAC is one multiply plus one add); norms, activations, softmax
and rotary embeddings are element-wise, O(hidden) per token, below 0.3 % of a layer for every model
here, and left out on purpose so the counts can be checked against a hand formula.

Attention work grows with the context: at context length n (keys the token attends to, itself
included) it is H*hd*n for q·k plus H*hd*n for the weighted sum of values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .actions import DROP, EXIT, PROCESS, SKIP
from .adapters.base import Dims

# DROP: the layer is removed for the whole sequence. No token attends at it, so nobody reads its
# K/V and they are not computed: it costs nothing, like static layer removal.


@dataclass(frozen=True)
class CostModel:
    """MAC counts of every component of one decoder, for one token. `bypass`: the MACs of the
    learned stand-in a SKIPPED or DROPPED layer runs instead (0: the identity, nothing)."""

    dims: Dims
    bypass: int = 0

    @property
    def q_proj(self) -> int:
        d = self.dims
        return d.hidden * d.num_heads * d.head_dim

    @property
    def kv_proj(self) -> int:
        """K and V projections together (grouped-query heads make these smaller than Q)."""
        d = self.dims
        return 2 * d.hidden * d.num_kv_heads * d.head_dim

    @property
    def o_proj(self) -> int:
        d = self.dims
        return d.num_heads * d.head_dim * d.hidden

    @property
    def mlp(self) -> int:
        d = self.dims
        return d.mlp_matrices * d.hidden * d.intermediate

    def attention(self, context: int | torch.Tensor) -> int | torch.Tensor:
        """Scores q·k and the weighted sum of values over `context` keys."""
        d = self.dims
        return 2 * d.num_heads * d.head_dim * context

    @property
    def layer_static(self) -> int:
        """A PROCESSED layer's context-independent MACs (projections and MLP)."""
        return self.q_proj + self.kv_proj + self.o_proj + self.mlp

    def layer(self, context: int | torch.Tensor) -> int | torch.Tensor:
        """A PROCESSED layer at context length `context`."""
        return self.layer_static + self.attention(context)

    def context_of(self, layer_macs: torch.Tensor) -> torch.Tensor:
        """The context length at which a PROCESSED layer costs `layer_macs` (inverse of `layer`)."""
        d = self.dims
        return (layer_macs - self.layer_static) / (2 * d.num_heads * d.head_dim)

    @property
    def kv_only(self) -> int:
        """A SKIPPED (or exited) layer: only K and V are computed, for the cache."""
        return self.kv_proj

    @property
    def skip_path(self) -> int:
        """A SKIPPED layer: K/V for the cache plus the bypass update."""
        return self.kv_only + self.bypass

    @property
    def drop_path(self) -> int:
        """A DROPPED layer: no K/V, only the bypass update (0 with the identity)."""
        return self.bypass

    def _fraction(self, macs: int, contexts: torch.Tensor | None) -> float:
        if contexts is None:
            return macs / self.layer_static
        return macs / float(self.layer(contexts.to(torch.float64)).mean())

    def kv_fraction(self, contexts: torch.Tensor | None = None) -> float:
        """The K/V-only path's share of a PROCESSED layer: of its context-independent MACs, or of
        its mean cost over `contexts` (keys attended) when given."""
        return self._fraction(self.kv_only, contexts)

    def skip_fraction(self, contexts: torch.Tensor | None = None) -> float:
        """A SKIPPED layer's share of a PROCESSED one (K/V-only path plus bypass), as `kv_fraction`."""
        return self._fraction(self.skip_path, contexts)

    def drop_fraction(self, contexts: torch.Tensor | None = None) -> float:
        """A DROPPED layer's share of a PROCESSED one (its bypass), as `kv_fraction`."""
        return self._fraction(self.drop_path, contexts)

    @property
    def lm_head(self) -> int:
        d = self.dims
        return d.hidden * d.vocab

    def full_token(self, context: int | torch.Tensor) -> int | torch.Tensor:
        """All layers processed plus the LM head: the reference every saving is measured against."""
        return self.dims.num_layers * self.layer(context) + self.lm_head


@dataclass
class CostReport:
    """Per-token MAC totals for a trace, with savings stated net of every overhead."""

    layer_macs: torch.Tensor  # [B, T] MACs spent in transformer layers (incl. K/V-only paths)
    full_layer_macs: torch.Tensor  # [B, T] MACs all layers would have cost
    head_macs: int  # LM head, paid once per token either way
    overhead_macs: torch.Tensor  # [B, T] profiler + controller work

    @property
    def layer_fraction(self) -> float:
        """Realized fraction of layer compute (what `energy_budget` targets)."""
        return float(self.layer_macs.sum() / self.full_layer_macs.sum())

    @property
    def layer_saved(self) -> float:
        """Fraction of layer compute saved, net of profiler and controller overheads."""
        return float(1 - (self.layer_macs + self.overhead_macs).sum() / self.full_layer_macs.sum())

    @property
    def total_saved(self) -> float:
        """Fraction of total per-token compute (layers + LM head) saved, net of overheads."""
        n = self.layer_macs.numel()
        spent = self.layer_macs.sum() + self.overhead_macs.sum() + self.head_macs * n
        full = self.full_layer_macs.sum() + self.head_macs * n
        return float(1 - spent / full)

    def as_dict(self) -> dict[str, float]:
        return {
            "layer_fraction": self.layer_fraction,
            "layer_saved_net": self.layer_saved,
            "total_saved_net": self.total_saved,
        }


def bypassed(decisions: torch.Tensor) -> torch.Tensor:
    """Where a token runs the bypass [..., L]: at a SKIP, and at a DROP it reaches before any EXIT."""
    exited = (decisions == EXIT).to(torch.int8).cummax(-1).values.bool()
    return (decisions == SKIP) | ((decisions == DROP) & ~exited)


def trace_cost(cost: CostModel, decisions: torch.Tensor, context: torch.Tensor,
               overhead_macs: torch.Tensor | None = None) -> CostReport:
    """Cost of a decision tensor [B, T, L] whose tokens attend to `context` [B, T] keys each."""
    processed = (decisions == PROCESS).sum(-1)
    skipped = ((decisions == SKIP) | (decisions == EXIT)).sum(-1)
    per_layer = cost.layer(context.to(torch.float64))
    layer_macs = processed * per_layer + skipped * cost.kv_only
    if cost.bypass:
        layer_macs = layer_macs + bypassed(decisions).sum(-1) * cost.bypass
    full = decisions.shape[-1] * per_layer
    if overhead_macs is None:
        overhead_macs = torch.zeros_like(layer_macs)
    return CostReport(layer_macs.double(), full.double(), cost.lm_head, overhead_macs.double())


def static_cost(cost: CostModel, context: torch.Tensor, layers_run: int) -> CostReport:
    """Cost of running `layers_run` full layers per token and only the bypass for the rest (static
    removal: nobody reads the removed layers' K/V)."""
    per_layer = cost.layer(context.double())
    removed = cost.dims.num_layers - layers_run
    return CostReport(layers_run * per_layer + removed * cost.drop_path, cost.dims.num_layers * per_layer, cost.lm_head,
                      torch.zeros_like(per_layer))
