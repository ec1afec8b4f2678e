"""Layer plans: split a budget into a static part (layers DROPPED for every token) and a per-token
part (the few marginal layers a controller is ASKed about)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...core.actions import ASK, DROP, PROCESS, SKIP
from ...core.scalars import integer, real
from ..importance import order_by_rank


@dataclass
class PlanConfig:
    """Split a budget into a static part and a per-token part.

    Static: DROP the `d` least important layers (profiler ranking) for every token; nobody reads
    their K/V, so they cost nothing, exactly like static layer removal. Per token: ASK the
    controller about the next `marginal` layers of the ranking; a SKIP there still pays the K/V-only
    path. `d` is chosen so that skipping `skip_share` of the marginal layers lands on the budget;
    a budget that needs fewer skips than that is asked about fewer layers (1.0: none, the full
    model). Everything else is PROCESSED, and the controller is neither called nor charged there.
    A token may skip anywhere from none to all of the marginal layers when the pacing band allows
    it (`PacingConfig.slack` of at least `marginal * skip_share / L`); the share keeps the average
    on the budget.
    """

    marginal: int = 4
    skip_share: float = 0.5

    def __post_init__(self):
        self.marginal = integer("plan marginal", self.marginal, 1)
        self.skip_share = real("plan skip_share", self.skip_share, 0.0, 1.0)


def budget_plan(rank: torch.Tensor, budget: float, config: PlanConfig, skip_fraction: float,
                drop_fraction: float = 0.0) -> torch.Tensor:
    """Plan [L] for `budget` given layer ranks (0 = most important) and what a SKIPPED layer (K/V-only
    path plus bypass) and a DROPPED one (its bypass) cost as fractions of a layer: DROP / ASK /
    PROCESS per layer."""
    L = rank.numel()
    to_save = (1.0 - budget) * L  # layers' worth of compute
    marginal = min(config.marginal, L)
    if config.skip_share > 0:  # ask no more layers than the budget needs skipped (budget 1.0: none, the full model)
        marginal = min(marginal, math.floor(to_save / (config.skip_share * (1.0 - skip_fraction)) + 1e-9))
    drop = round((to_save - config.skip_share * marginal * (1.0 - skip_fraction)) / (1.0 - drop_fraction))
    drop = max(0, min(drop, L - marginal))
    order = order_by_rank(rank)
    plan = torch.full((L,), PROCESS, dtype=torch.long)
    plan[order[:drop]] = DROP
    plan[order[drop : drop + marginal]] = ASK
    return plan


def skip_share(decisions: torch.Tensor, plan: torch.Tensor) -> float:
    """Share of SKIPs among `decisions` [..., L] at the plan's asked layers (NaN where nothing is asked)."""
    asked = decisions[..., plan == ASK]
    return float((asked == SKIP).float().mean()) if asked.numel() else float("nan")


def marginal_order(plan: torch.Tensor, rank: torch.Tensor) -> list[int]:
    """The plan's ASK layers, least important first: the order in which a nested allocation skips them."""
    asked = (plan == ASK).nonzero().flatten()
    return asked[order_by_rank(rank[asked])].tolist()
