"""Per-token pacing: the band around the budget every ANEE controller keeps each token in, and the
base class that applies it to a policy's raw actions."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.actions import ASK, EXIT, PROCESS, SKIP
from ...core.scalars import flag, real
from .base import LayerView
from .plan import PlanConfig, budget_plan


@dataclass
class PacingConfig:
    """Per-token band around the budget: each token ends within [budget - slack, budget + slack]
    of its full layer compute (capped to [0, 1]), so any average over tokens does too."""

    slack: float = 0.05

    def __post_init__(self):
        self.slack = real("pacing slack", self.slack, 0.0, 1.0)


@dataclass
class Guards:
    must_process: torch.Tensor  # skipping would make the floor unreachable
    may_process: torch.Tensor  # processing keeps the token under the cap
    may_exit: torch.Tensor  # K/V-only for every remaining layer still reaches the floor

    @property
    def free(self) -> torch.Tensor:
        """Where the policy's PROCESS-or-not choice is not forced."""
        return self.may_process & ~self.must_process


def pacing_guards(view: LayerView, pacing: PacingConfig) -> Guards:
    """The hard pacing constraints at this layer (cost of every path counted exactly: later layers
    cost what the plan fixed for them, asked layers between a K/V-only path and a full layer)."""
    floor = (view.budget - pacing.slack).clamp(min=0.0) * view.full
    cap = (view.budget + pacing.slack).clamp(max=1.0) * view.full
    a, skip, kv, eps = view.asks_after, view.cost.skip_path, view.cost.kv_only, 1e-6 * view.full
    fixed = view.fixed_after()
    may_process = view.spent + view.layer_cost + fixed + a * skip <= cap + eps
    must_process = (view.spent + skip + fixed + a * view.layer_cost < floor - eps) & may_process
    # EXIT turns every later layer into a K/V-only path; a plan that PROCESSes a later layer forbids it
    may_exit = (view.spent + (view.kept_after + 1) * kv >= floor - eps) & (not view.process_fixed_after)
    return Guards(must_process, may_process, may_exit)


def apply_guards(raw: torch.Tensor, g: Guards) -> torch.Tensor:
    """Turn a policy's raw actions into actions that respect the pacing band. A token that cannot
    afford this layer cannot afford any later asked one (same cost, more spent), so it EXITs
    (SKIPs where EXIT is not allowed)."""
    act = torch.where(g.must_process, PROCESS, raw)
    act = torch.where(~g.may_process, EXIT, act)
    return torch.where((act == EXIT) & ~g.may_exit, SKIP, act)


class PacedController:
    """Base of the ANEE controllers: profiler features -> raw action -> pacing guards.

    With a `PlanConfig` it DROPs / ASKs / PROCESSes layers by the budget's plan; without, it is
    asked about every layer. Deciding keeps no state on the controller (which tokens already EXITed
    comes in the view), so one instance may serve several threads. `record=True` is a training-time
    mode, not for concurrent use: it appends every call's features, actions and guards to
    `self.records` (and the residual stream with `record_hidden`), which threads would interleave.
    """

    def __init__(self, profiler, pacing: PacingConfig | None = None, record: bool = False,
                 plan: PlanConfig | None = None, record_hidden: bool = False):
        self.profiler = profiler
        self.pacing = pacing or PacingConfig()
        self.plan_config = plan
        self.record = flag("record", record)
        # also keep each call's residual stream [B, T, D] in the records
        self.record_hidden = flag("record_hidden", record_hidden)
        self.records: list[dict[str, torch.Tensor]] = []

    @property
    def overhead_macs(self) -> int:
        return self.profiler.overhead_macs

    def plan(self, budget: torch.Tensor, num_layers: int) -> torch.Tensor:
        """Per-layer plan [L] for a batch sharing one budget (ASK everywhere without a `PlanConfig`)."""
        if self.plan_config is None:
            return torch.full((num_layers,), ASK, dtype=torch.long)
        b = torch.as_tensor(budget, dtype=torch.float64).flatten()
        if (b != b[0]).any():
            raise ValueError("a planned controller needs one energy_budget for the whole batch; "
                             "run rows with different budgets separately")
        cost = self.profiler.executor.cost
        return budget_plan(self.profiler.rank, float(b[0]), self.plan_config, cost.skip_fraction(),
                           cost.drop_fraction())

    def raw_actions(self, view: LayerView, feats: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decide(self, view: LayerView) -> torch.Tensor:
        feats = self.profiler.features(view)
        raw = self.raw_actions(view, feats)
        g = pacing_guards(view, self.pacing)
        act = apply_guards(raw, g)
        if self.record:
            alive = view.alive()
            self.records.append({"layer": torch.tensor(view.layer), "features": feats, "raw": raw, "action": act,
                                 "free": g.free & alive, "alive": alive,
                                 **({"hidden": view.hidden.detach()} if self.record_hidden else {})})
        return act

    def reset_records(self) -> None:
        self.records = []
