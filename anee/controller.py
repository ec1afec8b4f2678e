"""Pluggable per-token, per-layer policies.

The executor calls `decide(view)` once per layer (after `min_layers`) with a `LayerView` of every
token in the chunk and gets back an action per token: PROCESS, SKIP or EXIT. A controller may also
have a `plan(budget, num_layers)`: one entry per layer, either a fixed action for every token
(PROCESS, SKIP or DROP) or ASK; `decide` is then called only at the ASK layers. A decision may only
use the token's own state, so the same controller gives the same decisions in sequential decode and
in teacher-forced parallel mode. `overhead_macs` is the work one call costs per token; it is
charged against the savings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

from .adapters.base import ModelAdapter
from .cost import DROP, EXIT, PROCESS, SKIP, CostModel

ASK = -1  # in a plan: decide per token at this layer


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
        """[B, T] MACs the plan has already committed for later layers (PROCESS, SKIP; DROP is free)."""
        later = self._later()
        n_process, n_skip = int((later == PROCESS).sum()), int((later == SKIP).sum())
        return n_process * self.layer_cost + n_skip * float(self.cost.kv_only)

    @property
    def kept_after(self) -> int:
        """Number of later layers that are not DROPPED (each costs at least its K/V-only path)."""
        return int((self._later() != DROP).sum())

    @property
    def process_fixed_after(self) -> bool:
        """Whether the plan PROCESSes some later layer (then leaving early is not an option)."""
        return bool((self._later() == PROCESS).any())

    def affordable(self) -> torch.Tensor:
        """True where processing this layer keeps the token within budget, with every later layer
        still able to pay for its K/V-only path."""
        reserve = (self.remaining_layers - 1) * self.cost.kv_only
        return self.spent + self.layer_cost + reserve <= self.budget * self.full + 1e-6 * self.full


class Controller(Protocol):
    overhead_macs: int

    def decide(self, view: LayerView) -> torch.Tensor:
        """Actions [B, T] (PROCESS=0, SKIP=1, EXIT=2) for layer `view.layer`."""
        ...


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


class BudgetController:
    """The simple budget policy: PROCESS while the token's budget affords the layer, then leave.

    `exit_threshold` separates the two ways of leaving: with less than that fraction of a full pass
    left the token EXITs (no more controller calls); otherwise it SKIPs this layer and is asked
    again at the next one. With equal layer costs both end in the same compute.
    """

    overhead_macs = 0  # a comparison of two counters

    def __init__(self, exit_threshold: float = 0.0):
        self.exit_threshold = exit_threshold

    def decide(self, view: LayerView) -> torch.Tensor:
        remaining = view.budget - view.spent / view.full
        leave = torch.where(remaining < self.exit_threshold, EXIT, SKIP)
        return torch.where(view.affordable(), PROCESS, leave)


def skip_pattern(num_layers: int, num_skipped: int, first: int = 2, last: int = 1) -> list[int]:
    """A static pattern SKIPping `num_skipped` layers spread evenly over the middle of the stack,
    keeping the first `first` and last `last` layers (the usual 'sandwich')."""
    middle = list(range(first, num_layers - last))
    if num_skipped > len(middle):
        raise ValueError(f"cannot skip {num_skipped} of {num_layers} layers keeping {first}+{last} fixed")
    step = len(middle) / max(num_skipped, 1)
    skipped = {middle[int(i * step)] for i in range(num_skipped)}
    return [SKIP if i in skipped else PROCESS for i in range(num_layers)]


# -- ANEE controllers: budget pacing, heuristic and learned policies -----------------------------


@dataclass
class PacingConfig:
    """Per-token band around the budget: each token ends within [budget - slack, budget + slack]
    of its full layer compute (capped to [0, 1]), so any average over tokens does too."""

    slack: float = 0.05


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
    a, kv, eps = view.asks_after, view.cost.kv_only, 1e-6 * view.full
    fixed = view.fixed_after()
    may_process = view.spent + view.layer_cost + fixed + a * kv <= cap + eps
    must_process = (view.spent + kv + fixed + a * view.layer_cost < floor - eps) & may_process
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
        if self.marginal < 1 or not 0.0 <= self.skip_share <= 1.0:
            raise ValueError(f"need marginal >= 1 and skip_share in [0, 1], got {self.marginal}, {self.skip_share}")


def budget_plan(rank: torch.Tensor, budget: float, config: PlanConfig, kv_fraction: float) -> torch.Tensor:
    """Plan [L] for `budget` given layer ranks (0 = most important) and the K/V-only path's
    fraction of a layer: DROP / ASK / PROCESS per layer."""
    L = rank.numel()
    to_save = (1.0 - budget) * L  # layers' worth of compute
    marginal = min(config.marginal, L)
    if config.skip_share > 0:  # ask no more layers than the budget needs skipped (budget 1.0: none, the full model)
        marginal = min(marginal, math.floor(to_save / (config.skip_share * (1.0 - kv_fraction)) + 1e-9))
    drop = round(to_save - config.skip_share * marginal * (1.0 - kv_fraction))
    drop = max(0, min(drop, L - marginal))
    order = torch.argsort(rank, descending=True, stable=True)  # least important first
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
    return asked[torch.argsort(rank[asked], descending=True, stable=True)].tolist()


class PacedController:
    """Base of the ANEE controllers: profiler features -> raw action -> pacing guards.

    Remembers which tokens already EXITed in the current chunk (a new chunk starts when the layer
    index does not increase) and, with `record=True`, every call's features and actions. With a
    `PlanConfig` it DROPs / ASKs / PROCESSes layers by the budget's plan; without, it is asked
    about every layer.
    """

    def __init__(self, profiler, pacing: PacingConfig | None = None, record: bool = False, plan: PlanConfig | None = None,
                 record_hidden: bool = False):
        self.profiler = profiler
        self.pacing = pacing or PacingConfig()
        self.plan_config = plan
        self.record = record
        self.record_hidden = record_hidden  # also keep each call's residual stream [B, T, D] in the records
        self.records: list[dict[str, torch.Tensor]] = []
        self._last_layer = -1
        self._exited: torch.Tensor | None = None

    @property
    def overhead_macs(self) -> int:
        return self.profiler.overhead_macs

    def plan(self, budget: torch.Tensor, num_layers: int) -> torch.Tensor:
        """Per-layer plan [L] for a batch sharing one budget (ASK everywhere without a `PlanConfig`)."""
        if self.plan_config is None:
            return torch.full((num_layers,), ASK, dtype=torch.long)
        b = torch.as_tensor(budget, dtype=torch.float64).flatten()
        if (b != b[0]).any():
            raise ValueError("a planned controller needs one energy_budget for the whole batch; run rows with different budgets separately")
        cost = self.profiler.executor.cost
        return budget_plan(self.profiler.rank, float(b[0]), self.plan_config, cost.kv_only / cost.layer_static)

    def raw_actions(self, view: LayerView, feats: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decide(self, view: LayerView) -> torch.Tensor:
        shape = view.spent.shape
        if view.layer <= self._last_layer or self._exited is None or self._exited.shape != shape:
            self._exited = torch.zeros(shape, dtype=torch.bool, device=view.hidden.device)
        self._last_layer = view.layer
        feats = self.profiler.features(view)
        raw = self.raw_actions(view, feats)
        g = pacing_guards(view, self.pacing)
        act = apply_guards(raw, g)
        if self.record:
            alive = ~self._exited
            self.records.append({"layer": torch.tensor(view.layer), "features": feats, "raw": raw, "action": act,
                                 "free": g.free & alive, "alive": alive,
                                 **({"hidden": view.hidden.detach()} if self.record_hidden else {})})
        self._exited = self._exited | (act == EXIT)
        return act

    def reset_records(self) -> None:
        self.records = []


@dataclass
class HeuristicConfig:
    """Optional entropy modulation of the per-token target: uncertain tokens aim up to
    `entropy_shift` above the budget, confident ones up to `entropy_shift` below (`entropy_ref` and
    `entropy_scale` in units of ln V). Off by default: on SmolLM2 / WikiText-2 (2,048 test tokens,
    budget 0.7) a shift of 0.05 raised perplexity from 155 to 733, because the intermediate
    entropy changes from layer to layer, so a token's target does too, and tokens that spent
    early on a high target had to skip the last (most important) layers."""

    entropy_shift: float = 0.0  # at most the pacing slack
    entropy_ref: float | None = None  # None: the profiler's calibration median
    entropy_scale: float = 0.05


class HeuristicController(PacedController):
    """Thresholds on the profiler state: PROCESS the layer when it is among the `n` most important
    (static Block Influence) of the remaining asked layers, `n` being what the token's target still
    affords; leave otherwise (EXIT once nothing more is planned and the plan allows it)."""

    def __init__(self, profiler, config: HeuristicConfig | None = None, pacing: PacingConfig | None = None, record: bool = False,
                 plan: PlanConfig | None = None):
        super().__init__(profiler, pacing, record, plan)
        self.config = config or HeuristicConfig()
        if not 0.0 <= self.config.entropy_shift <= self.pacing.slack:
            raise ValueError(f"entropy_shift must lie in [0, pacing slack {self.pacing.slack}], got {self.config.entropy_shift}")

    def raw_actions(self, view: LayerView, feats: torch.Tensor) -> torch.Tensor:
        c = self.config
        target = view.budget.expand(view.spent.shape)
        if c.entropy_shift > 0:
            ref = self.profiler.entropy_median if c.entropy_ref is None else c.entropy_ref
            shift = torch.tanh((feats[..., 0] - ref) / c.entropy_scale).double()
            target = (view.budget + c.entropy_shift * shift).clamp(0.0, 1.0)
        n = self.profiler.layers_to_target(view, target)
        ahead = self.profiler.more_important_left(view.layer, view.asked_after())
        leave = torch.where((n < 0.5) & (not view.process_fixed_after), EXIT, SKIP)
        return torch.where(ahead + 0.5 < n, PROCESS, leave)


class PolicyNet(torch.nn.Module):
    """Tiny MLP: normalized profiler features, plus (with `rank` > 0) a learned rank-`rank` read of
    the token's RMS-normalized residual stream -> logits over PROCESS / SKIP / EXIT.

    The scalar features summarise the state; the read lets the policy look at *what* the token
    is, which is what tells tokens that tolerate a skip from tokens that do not."""

    def __init__(self, num_features: int, hidden: int = 32, hidden_size: int = 0, rank: int = 0):
        super().__init__()
        if (rank > 0) != (hidden_size > 0):
            raise ValueError(f"a residual-stream read needs both hidden_size and rank > 0, got {hidden_size}, {rank}")
        self.num_features, self.hidden, self.hidden_size, self.rank = num_features, hidden, hidden_size, rank
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))
        self.set_skip_offsets(torch.zeros(0), torch.zeros(0))
        if rank:
            self.register_buffer("h_mean", torch.zeros(hidden_size))
            self.register_buffer("h_std", torch.ones(hidden_size))
            self.read = torch.nn.Linear(hidden_size, rank, bias=False)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(num_features + rank, hidden), torch.nn.Tanh(),
            torch.nn.Linear(hidden, hidden), torch.nn.Tanh(),
            torch.nn.Linear(hidden, 3),
        )

    @property
    def macs(self) -> int:
        """Per call per token: the MLP's products, plus the read and its normalization (3 per coordinate)."""
        mlp = sum(m.in_features * m.out_features for m in self.net if isinstance(m, torch.nn.Linear))
        return mlp + (self.hidden_size * self.rank + 3 * self.hidden_size if self.rank else 0)

    def set_skip_offsets(self, budgets: torch.Tensor, offsets: torch.Tensor) -> None:
        """Calibrated offsets added to the SKIP logit at these (increasing) budgets; see `skip_offset`."""
        if budgets.shape != offsets.shape or budgets.ndim != 1 or (budgets.diff() <= 0).any():
            raise ValueError("skip offsets need increasing budgets [K] and offsets [K]")
        self.register_buffer("offset_budgets", budgets.float().clone())
        self.register_buffer("skip_offsets", offsets.float().clone())

    def skip_offset(self, budget: torch.Tensor) -> torch.Tensor:
        """Offset of the SKIP logit at `budget` [...]: linear between calibrated budgets, the nearest
        one's outside them, 0 when uncalibrated."""
        if self.skip_offsets.numel() == 0:
            return torch.zeros_like(budget, dtype=torch.float32)
        b, xs, ys = budget.float().clamp(float(self.offset_budgets[0]), float(self.offset_budgets[-1])), self.offset_budgets, self.skip_offsets
        i = torch.searchsorted(xs, b.contiguous()).clamp(1, max(len(xs) - 1, 1))
        if len(xs) == 1:
            return ys[0].expand_as(b).clone()
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (y1 - y0) * (b - x0) / (x1 - x0)

    @staticmethod
    def rms_normalize(hidden: torch.Tensor) -> torch.Tensor:
        """hidden / RMS(hidden) over the last axis: the residual stream's direction, at unit scale."""
        h = hidden.float()
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)

    def forward(self, feats: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
        x = (feats.float() - self.mean) / self.std
        if self.rank:
            if hidden is None:
                raise ValueError("this policy reads the residual stream: pass hidden [..., hidden_size]")
            x = torch.cat([x, self.read((self.rms_normalize(hidden) - self.h_mean) / self.h_std)], -1)
        return self.net(x)


class LearnedController(PacedController):
    """A `PolicyNet` choosing PROCESS / SKIP / EXIT from the profiler state (and, if the policy reads
    it, the residual stream), inside the pacing band (PROCESS / SKIP only with a `PlanConfig`).
    `sample=True` draws actions from softmax(logits / `temperature`) with `generator` (REINFORCE
    rollouts); otherwise argmax."""

    def __init__(self, policy: PolicyNet, profiler, pacing: PacingConfig | None = None, sample: bool = False,
                 generator: torch.Generator | None = None, record: bool = False, plan: PlanConfig | None = None,
                 temperature: float = 1.0):
        super().__init__(profiler, pacing, record, plan, record_hidden=policy.rank > 0)
        self.policy = policy
        self.sample = sample
        self.generator = generator
        self.temperature = temperature

    @property
    def overhead_macs(self) -> int:
        return self.profiler.overhead_macs + self.policy.macs

    def logits(self, feats: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Policy logits plus its calibrated SKIP offset at the token's budget, EXIT masked out for a
        planned controller, divided by the temperature."""
        logits = self.policy(feats, hidden)
        offset = self.policy.skip_offset(feats[..., self.profiler.budget_index])
        logits = torch.cat([logits[..., :SKIP], logits[..., SKIP : SKIP + 1] + offset.unsqueeze(-1), logits[..., SKIP + 1 :]], -1)
        if self.plan_config is not None:
            logits = logits.masked_fill(_exit_mask(logits), float("-inf"))
        return logits / self.temperature

    def raw_actions(self, view: LayerView, feats: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = self.logits(feats, view.hidden if self.policy.rank else None)
        if not self.sample:
            return logits.argmax(-1)
        probs = torch.softmax(logits, -1).reshape(-1, 3)
        return torch.multinomial(probs, 1, generator=self.generator).reshape(logits.shape[:-1])


def _exit_mask(logits: torch.Tensor) -> torch.Tensor:
    """True at the EXIT logit, for masking it out."""
    mask = torch.zeros_like(logits, dtype=torch.bool)
    mask[..., EXIT] = True
    return mask
