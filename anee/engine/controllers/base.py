"""The controller protocol, what a controller sees, and the controllers that need no state.

The executor calls `decide(view)` once per layer (after `min_layers`) with a `LayerView` of every
token in the chunk and gets back an action per token: PROCESS, SKIP or EXIT. A controller may also
have a `plan(budget, num_layers)`: one entry per layer, either a fixed action for every token
(PROCESS, SKIP or DROP) or ASK; `decide` is then called only at the ASK layers. A decision may only
use the token's own state, so the same controller gives the same decisions in sequential decode and
in teacher-forced parallel mode. The work one call costs per token is charged against the savings:
a constant `overhead_macs`, or, for a controller whose work depends on the layer, what its
`layer_overhead(view)` reports (see `layer_overhead`).

A controller with an `anchor_layer` also sees, at every later layer, each token's input to that layer
(`LayerView.anchor`): a decision about a token's whole depth can be made from one state and acted
on layer by layer without the controller keeping anything between calls.

Per-call state lives in the call, not on the controller: what a decision needs about the chunk so
far (budget spent, which tokens already EXITed) comes in the `LayerView`. One controller can then
serve several threads at once, each getting the decisions it gets alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ...core.actions import ASK, DROP, PROCESS, SKIP
from ...core.adapters.base import ModelAdapter
from ...core.cost import CostModel


@dataclass
class LayerView:
    """What a controller may look at before layer `layer` runs, for each token [B, T]."""

    layer: int
    num_layers: int
    hidden: torch.Tensor  # [B, T, D] input to this layer
    prev_hidden: torch.Tensor  # [B, T, D] input to the previous layer (== hidden at layer 0)
    spent: torch.Tensor  # [B, T] layer MACs spent so far
    full: torch.Tensor  # [B, T] MACs of all layers processed, at this token's context
    layer_cost: torch.Tensor  # [B, T] MACs of processing this layer
    budget: torch.Tensor  # [B, 1] energy budget (fraction of full layer compute)
    adapter: ModelAdapter
    cost: CostModel
    plan: torch.Tensor | None = None  # [L] fixed actions or ASK; None = ASK everywhere
    exited: torch.Tensor | None = None  # [B, T] tokens that EXITed at an earlier layer of this chunk; None = none
    anchor: torch.Tensor | None = None  # [B, T, D] input to the controller's `anchor_layer`, once reached; None = none

    @property
    def remaining_layers(self) -> int:
        return self.num_layers - self.layer

    def _later(self) -> torch.Tensor:
        plan = self.plan if self.plan is not None else torch.full((self.num_layers,), ASK)
        return plan[self.layer + 1 :]

    @property
    def asks_after(self) -> int:
        """Number of later layers the controller will still be asked about."""
        return int((self._later() == ASK).sum())

    def asked_after(self) -> torch.Tensor:
        """Indices of the later layers the controller will still be asked about."""
        return (self._later() == ASK).nonzero().flatten() + self.layer + 1

    def fixed_after(self) -> torch.Tensor:
        """[B, T] MACs the plan has already committed for later layers (PROCESS, SKIP, DROP's bypass)."""
        later = self._later()
        n_process, n_skip = int((later == PROCESS).sum()), int((later == SKIP).sum())
        n_drop = int((later == DROP).sum())
        return n_process * self.layer_cost + n_skip * float(self.cost.skip_path) + n_drop * float(self.cost.drop_path)

    @property
    def kept_after(self) -> int:
        """Number of later layers that are not DROPPED (each costs at least its K/V-only path)."""
        return int((self._later() != DROP).sum())

    @property
    def process_fixed_after(self) -> bool:
        """Whether the plan PROCESSes some later layer (then leaving early is not an option)."""
        return bool((self._later() == PROCESS).any())

    def affordable(self, leave_path: int | None = None) -> torch.Tensor:
        """True where processing this layer keeps the token within budget, with every later layer
        still able to pay for the way the token leaves: `leave_path` MACs (default a SKIP, its K/V-only
        path and the bypass; a policy that always leaves by EXIT passes `cost.kv_only`)."""
        reserve = (self.remaining_layers - 1) * (self.cost.skip_path if leave_path is None else leave_path)
        return self.spent + self.layer_cost + reserve <= self.budget * self.full + 1e-6 * self.full

    def alive(self) -> torch.Tensor:
        """[B, T] tokens still running (not EXITed before this layer)."""
        if self.exited is None:
            return torch.ones(self.spent.shape, dtype=torch.bool, device=self.spent.device)
        return ~self.exited


class Controller(Protocol):
    overhead_macs: int  # MACs per token per call; `layer_overhead(view)` instead when it depends on the layer

    def decide(self, view: LayerView) -> torch.Tensor:
        """Actions [B, T] (PROCESS=0, SKIP=1, EXIT=2) for layer `view.layer`."""
        ...


def layer_overhead(controller: Controller, view: LayerView) -> float:
    """MACs per running token of asking `controller` about `view.layer`: its `layer_overhead(view)` if
    it has one, else its constant `overhead_macs` (returned, never stored: the call stays stateless)."""
    per_layer = getattr(controller, "layer_overhead", None)
    return per_layer(view) if per_layer is not None else controller.overhead_macs


class FullController:
    """PROCESS everything: the unmodified model."""

    overhead_macs = 0

    def static_decisions(self, batch: int, tokens: int, layers: int) -> torch.Tensor:
        """Decisions known before running (lets the executor skip per-layer bookkeeping)."""
        return torch.full((batch, tokens, layers), PROCESS, dtype=torch.int8)

    def decide(self, view: LayerView) -> torch.Tensor:
        return torch.full(view.spent.shape, PROCESS, dtype=torch.long, device=view.hidden.device)


class FixedController:
    """A fixed action per layer, the same for every token (e.g. a static skip pattern)."""

    overhead_macs = 0

    def __init__(self, pattern: list[int] | torch.Tensor):
        self.pattern = torch.as_tensor(pattern, dtype=torch.long)

    def static_decisions(self, batch: int, tokens: int, layers: int) -> torch.Tensor:
        if self.pattern.numel() != layers:
            raise ValueError(f"pattern has {self.pattern.numel()} entries for a {layers}-layer model")
        return self.pattern.to(torch.int8).expand(batch, tokens, layers).clone()

    def decide(self, view: LayerView) -> torch.Tensor:
        return self.pattern[view.layer].expand(view.spent.shape).to(view.hidden.device)


def skip_pattern(num_layers: int, num_skipped: int, first: int = 2, last: int = 1) -> list[int]:
    """A static pattern SKIPping `num_skipped` layers spread evenly over the middle of the stack,
    keeping the first `first` and last `last` layers (the usual 'sandwich')."""
    middle = list(range(first, num_layers - last))
    if num_skipped > len(middle):
        raise ValueError(f"cannot skip {num_skipped} of {num_layers} layers keeping {first}+{last} fixed")
    step = len(middle) / max(num_skipped, 1)
    skipped = {middle[int(i * step)] for i in range(num_skipped)}
    return [SKIP if i in skipped else PROCESS for i in range(num_layers)]
