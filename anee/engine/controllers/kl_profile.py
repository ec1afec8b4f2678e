"""A closed-form per-token depth controller: ridge regression of each token's KL profile.

Skip the layers of the profiler's removal order as a nested prefix: a token at depth k SKIPs the
order's first k layers. For each token a ridge map predicts its KL(full || k skipped) for
k = 0..K from its residual stream at the *anchor*, the lowest of those K layers (every layer
below it runs for every token, so the anchor's input is the full model's and the whole depth is
decided before any of the K layers runs). Under a budget the first m layers of the order are
DROPPED for every token (no K/V, bypass charged); each token takes the depth k in m..K minimising

    predicted KL(k) - price * (net layers saved at k)

so a token whose prediction says skipping is cheap skips more. m and the price per budget come
from `fit_kl_profile`'s table, calibrated on valid windows the map was not fitted on so that the
mean net saving (SKIPs' K/V-only path and bypass, DROPs' bypass and this controller's MACs
charged) lands on the budget. Closed form: no training loop, no sampling.

Every call recomputes the token's depth from the same anchor state (K+1 dot products), so the
controller stays stateless per layer and sequential decode gives the parallel pass's decisions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ...core.actions import ASK, DROP, PROCESS, SKIP
from ...core.bypass import check_same_bypass
from ...core.checkpoints import Checkpointable
from .base import LayerView

KL_PROFILE_FORMAT = "anee.kl_profile_controller.v2"  # v2: the bypass is recorded by its label (v1: a flag)
POSITION_FEATURES = 4  # log1p(position) / log(window), its square, position < 8, a bias


def profile_features(hidden: torch.Tensor, positions: torch.Tensor, window: int) -> torch.Tensor:
    """Ridge inputs [..., D + 4] (float64): the RMS-normalised residual stream (its scale says little
    about a token and varies along the sequence) and three position terms plus a bias."""
    positions = torch.as_tensor(positions).expand(hidden.shape[:-1])  # [..., T], or [T] for every row
    h = hidden.double()
    h = h / h.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)
    lp = torch.log1p(positions.double()).unsqueeze(-1) / math.log(window)
    first = (positions < 8).double().unsqueeze(-1)
    return torch.cat([h, lp, lp**2, first, torch.ones_like(lp)], -1)


@dataclass
class DepthOptions:
    """What each depth k = m..K costs and saves, in layers, for a token when the first m are DROPPED."""

    depths: np.ndarray  # [K - m + 1] k = m..K
    saved: np.ndarray  # [K - m + 1] net layers saved: k - (k - m) * skip_fraction - m * drop_fraction


def depth_options(m: int, max_depth: int, skip_fraction: float, drop_fraction: float) -> DepthOptions:
    k = np.arange(m, max_depth + 1)
    return DepthOptions(k, k - (k - m) * skip_fraction - m * drop_fraction)


class KLProfileController(Checkpointable):
    """Per-token depth from a ridge prediction of the KL profile (see the module docstring).

    `weight` [D + 4, K + 1] maps `profile_features` at the anchor to the predicted KL of k = 0..K
    skipped layers; `budgets` [G] (ascending, each < 1) with `drops` [G] and `prices` [G] is the
    calibrated table. A budget runs at the largest table budget not above it (so it never spends
    more than asked; 1.0 and above: the full model); a budget below the table's lowest is an error.
    """

    FORMAT = KL_PROFILE_FORMAT
    FIX = "refit it with anee.engine.training.kl_profile.fit_kl_profile (notebook 03 writes it)"

    def __init__(self, order: list[int], num_layers: int, weight: torch.Tensor, budgets: torch.Tensor,
                 drops: torch.Tensor, prices: torch.Tensor, window: int, bypass: str | None,
                 skip_fraction: float, drop_fraction: float):
        order = [int(i) for i in order]
        if not order or len(set(order)) != len(order) or not all(0 <= i < num_layers for i in order):
            raise ValueError(f"order must list distinct layers of the {num_layers}-layer model, got {order}")
        if weight.ndim != 2 or weight.shape[1] != len(order) + 1:
            raise ValueError(f"weight must be [features, {len(order) + 1}] (k = 0..{len(order)}), "
                             f"got {tuple(weight.shape)}")
        budgets, drops, prices = (torch.as_tensor(budgets, dtype=torch.float64), torch.as_tensor(drops),
                                  torch.as_tensor(prices, dtype=torch.float64))
        if not (budgets.ndim == 1 and budgets.numel() > 0 and drops.shape == budgets.shape == prices.shape):
            raise ValueError("budgets, drops and prices must be non-empty vectors of one length "
                             "(one entry per calibrated budget)")
        if (budgets.diff() <= 0).any() or (budgets >= 1).any() or (budgets <= 0).any():
            raise ValueError(f"budgets must ascend strictly within (0, 1), got {budgets.tolist()}")
        if (drops < 0).any() or (drops >= len(order)).any():
            raise ValueError(f"drops must be in 0..{len(order) - 1}, got {drops.tolist()}")
        self.order, self.num_layers = order, int(num_layers)
        self.anchor_layer = min(order)  # the executor hands its input to every later call (`LayerView.anchor`)
        self.weight = weight.double()
        self.budgets, self.drops, self.prices = budgets, drops.long(), prices
        if bypass is not None and not isinstance(bypass, str):
            raise TypeError(f"bypass must be the label of the layer bypass it was fitted with (or None), "
                            f"got {bypass!r}")
        self.window, self.bypass = int(window), bypass
        # the price's units: a SKIPPED and a DROPPED layer's share of a processed one over the fitting windows
        self.skip_fraction, self.drop_fraction = float(skip_fraction), float(drop_fraction)

    @property
    def max_depth(self) -> int:
        return len(self.order)

    @property
    def overhead_macs(self) -> int:
        """Per call: the ridge map's multiply-accumulates (the normalisation and the argmin are O(D + K))."""
        return int(self.weight.numel())

    def entry(self, budget: torch.Tensor | float) -> int | None:
        """Index of the table row that runs `budget` (one value for the batch); None for the full model."""
        b = torch.as_tensor(budget, dtype=torch.float64).flatten()
        if (b != b[0]).any():
            raise ValueError("the KL-profile controller needs one energy_budget for the whole batch; "
                             "run rows with different budgets separately")
        b0 = float(b[0])
        if b0 >= 1.0:
            return None
        if b0 < float(self.budgets[0]) - 1e-6:  # 1e-6: a budget stored in float32 still finds its row
            raise ValueError(f"energy_budget {b0} is below the lowest calibrated budget {float(self.budgets[0]):.2f} "
                             f"(skipping all {self.max_depth} layers of the controller's order); "
                             "use a larger budget or refit with more layers")
        return int((self.budgets <= b0 + 1e-6).nonzero().max())

    def plan(self, budget: torch.Tensor, num_layers: int) -> torch.Tensor:
        """DROP the order's first m layers, ASK about the rest of its K, PROCESS every other layer."""
        if num_layers != self.num_layers:
            raise ValueError(f"the controller was fitted for {self.num_layers} layers, the model has {num_layers}")
        plan = torch.full((num_layers,), PROCESS, dtype=torch.long)
        g = self.entry(budget)
        if g is not None:
            m = int(self.drops[g])
            plan[self.order[:m]] = DROP
            plan[self.order[m:]] = ASK
        return plan

    def predict(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Predicted KL [..., K + 1] of k = 0..K skipped layers from the anchor's input [..., D]."""
        return profile_features(hidden, positions, self.window) @ self.weight

    def depth(self, hidden: torch.Tensor, positions: torch.Tensor, g: int) -> torch.Tensor:
        """Each token's depth k [...] under table row `g`: argmin of predicted KL - price * net layers saved."""
        m = int(self.drops[g])
        opts = depth_options(m, self.max_depth, self.skip_fraction, self.drop_fraction)
        score = self.predict(hidden, positions)[..., m:] - float(self.prices[g]) * torch.from_numpy(opts.saved)
        return score.argmin(-1) + m

    def decide(self, view: LayerView) -> torch.Tensor:
        if view.anchor is None:
            raise ValueError(f"no anchor state: the executor must hand the input of layer {self.anchor_layer} "
                             "to the controller (AdaptiveExecutor does for a controller with `anchor_layer`)")
        g = self.entry(view.budget)
        if g is None or view.layer not in self.order:
            raise ValueError(f"layer {view.layer} is not one the plan asks about")
        positions = view.cost.context_of(view.layer_cost) - 1  # keys attended = position + 1 (unpadded)
        k = self.depth(view.anchor, positions, g)
        return torch.where(k > self.order.index(view.layer), SKIP, PROCESS)

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight.float(), "budgets": self.budgets, "drops": self.drops, "prices": self.prices}

    def load_checkpoint_tensors_(self, tensors: dict[str, torch.Tensor]) -> None:
        self.weight = tensors["weight"].double()
        self.budgets, self.drops, self.prices = (tensors["budgets"].double(), tensors["drops"].long(),
                                                 tensors["prices"].double())

    def checkpoint_config(self) -> dict:
        return {"order": self.order, "num_layers": self.num_layers, "features": int(self.weight.shape[0]),
                "table": int(self.budgets.numel()), "window": self.window, "bypass": self.bypass,
                "skip_fraction": self.skip_fraction, "drop_fraction": self.drop_fraction}

    def check_model(self, executor) -> None:
        """ValueError unless `executor` runs the model (layers, width) and bypass setting this was fitted for."""
        check_fitted_for(self.checkpoint_config(), executor)

    @classmethod
    def from_config(cls, config: dict, executor=None) -> KLProfileController:
        """An instance of the saved shapes (tensors loaded after); with `executor`, checked against its model."""
        if executor is not None:
            check_fitted_for(config, executor)
        order, n, g = config["order"], int(config["features"]), int(config["table"])
        return cls(order, config["num_layers"], torch.zeros(n, len(order) + 1),
                   torch.linspace(0.1, 0.9, g) if g > 1 else torch.full((1,), 0.5),
                   torch.zeros(g, dtype=torch.long), torch.zeros(g), config["window"], config["bypass"],
                   config["skip_fraction"], config["drop_fraction"])


def check_fitted_for(config: dict, executor) -> None:
    """ValueError unless `executor`'s model and bypass setting are those a controller `config` was fitted for."""
    n = int(config["features"])
    if (executor.adapter.num_layers, executor.adapter.dims.hidden + POSITION_FEATURES) != (config["num_layers"], n):
        raise ValueError(f"fitted for {config['num_layers']} layers and {n - POSITION_FEATURES} hidden units, "
                         f"the model has {executor.adapter.num_layers} and {executor.adapter.dims.hidden}")
    check_same_bypass(config["bypass"], executor.bypass, "the KL-profile controller",
                      "run it in an executor with that bypass (or refit it in this one)")
