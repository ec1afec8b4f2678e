"""Typed outputs shared by every forward in the package (in the spirit of HF's `modeling_outputs`):
logits first, then the execution record that says what the forward cost.

- `Trace`: per-token, per-layer actions of the adaptive executor, and the context each token saw.
- `ExecutorOutput`: the executor's chunk result (logits, trace, cache, final stream).
- `HierarchicalOutput`: the hierarchical model's record (FFN runs, processed layers, exit depths).
- `MethodOutput`: what an evaluated method returns for a window: logits and a `CostReport`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .actions import PROCESS
from .cost import CostModel, CostReport, trace_cost
from .kv_cache import KVCache


@dataclass
class AdaptiveOutput:
    """Base of every output: next-token logits [B, T, V] (None from an executor pass asked for
    none, `AdaptiveExecutor.forward(..., with_logits=False)`)."""

    logits: torch.Tensor | None


@dataclass
class Trace:
    """Execution record of a chunk: decisions [B, T, L] and the context each token attended to."""

    decisions: torch.Tensor  # int8 PROCESS/SKIP/EXIT/DROP; after an EXIT the row stays EXIT (DROP stays DROP)
    context: torch.Tensor  # [B, T] number of keys each token attended to (itself included)
    overhead_macs: torch.Tensor  # [B, T] profiler + controller MACs

    @property
    def layers_executed(self) -> torch.Tensor:
        """[B, T] number of PROCESSED layers per token."""
        return (self.decisions == PROCESS).sum(-1)

    def cost(self, cost_model: CostModel, mask: torch.Tensor | None = None) -> CostReport:
        """Cost report; `mask` [B, T] selects the tokens to count (e.g. non-padding)."""
        report = trace_cost(cost_model, self.decisions, self.context, self.overhead_macs)
        if mask is not None:
            keep = mask.bool()
            report.layer_macs = report.layer_macs[keep]
            report.full_layer_macs = report.full_layer_macs[keep]
            report.overhead_macs = report.overhead_macs[keep]
        return report

    @staticmethod
    def cat(traces: list[Trace]) -> Trace:
        """Join chunk traces along the token axis."""
        return Trace(
            torch.cat([t.decisions for t in traces], 1),
            torch.cat([t.context for t in traces], 1),
            torch.cat([t.overhead_macs for t in traces], 1),
        )


@dataclass
class ExecutorOutput(AdaptiveOutput):
    trace: Trace
    cache: KVCache
    hidden: torch.Tensor  # [B, T, D] final residual stream (before the final norm)
    hidden_states: list[torch.Tensor] | None = None  # input of every layer, then the final stream


@dataclass
class HierarchicalOutput(AdaptiveOutput):
    """The hierarchical model's execution record."""

    ffn: torch.Tensor  # [B, T, L] bool: FFN ran
    active: torch.Tensor  # [B, T, L] bool: layer processed (token not exited before it)
    exit_depth: torch.Tensor  # [B, T] long: layers run before exiting (L = never exited)
    thresholds: torch.Tensor  # [L] float64 thresholds used (-inf = every token routed)
    context: torch.Tensor  # [B, T] keys attended (itself included)
    exits_enabled: bool
    router_logits: list[torch.Tensor] = field(default_factory=list)  # per layer [B, T, 2] (dense path)
    exit_hidden: list[torch.Tensor] = field(default_factory=list)  # stream at each exit depth (dense path)
    final_hidden: torch.Tensor | None = None  # final stream before the norm (dense path, on request)

    @property
    def realized_capacity(self) -> float:
        """FFN runs / processed (token, layer) pairs."""
        return float(self.ffn.sum() / self.active.sum().clamp_min(1))

    def ffn_usage_per_layer(self) -> torch.Tensor:
        """[L] fraction of the processed tokens that ran the FFN at each layer."""
        return self.ffn.sum((0, 1)).double() / self.active.sum((0, 1)).double().clamp_min(1)


@dataclass
class MethodOutput(AdaptiveOutput):
    """An evaluated method's result for one window [1, T]."""

    cost: CostReport  # per-token costs over the T positions
