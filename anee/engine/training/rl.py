"""REINFORCE for the learned controller, on the teacher-forced parallel mode.

A rollout runs whole windows through the executor with actions sampled from the policy (no grad),
recording each call's features, raw action and whether the choice was free (not forced by the
pacing guards). Log-probabilities are then recomputed with grad. Per token:

    reward = -KL(full || adaptive) - lam * layer_fraction - mu * |layer_fraction - budget|

Baseline: with `self_critical=True` each token's reward under the greedy (argmax) policy on the
same windows, so a token's advantage says whether *its* sampled deviation helped it; otherwise the
mean reward of the token's window. Advantages are scaled by their batch std. With `lam_lr > 0`
the compute price `lam` is a dual variable, so the policy learns whom to give compute to, not how
much. Without a plan it rises while the layer fraction is above the budget and falls while below.
Under a plan the budget is met by the plan's static part, and the price keeps the share of SKIPs
on the marginal layers at the plan's `skip_share` instead, with one price per training budget
(`RLConfig.budgets`): the KL at stake differs by an order of magnitude between budgets, so one
price for all would skip too much at some and too little at others. The measured fraction or
share is the greedy policy's when there is a greedy rollout (that is the policy deployed: a
policy that samples SKIP 45 % of the time for every token skips nothing under argmax), else the
sampled one.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch

from ...core.divergence import KLReference, log_probs
from ..controllers.learned import LearnedController
from ..controllers.pacing import PacingConfig
from ..controllers.plan import PlanConfig, skip_share
from ..controllers.policy import PolicyNet
from ..executor import AdaptiveExecutor
from ..prefix_memo import shared_prefixes


@dataclass
class RLConfig:
    steps: int = 40
    batch: int = 2  # windows per step
    seq_len: int = 128
    lr: float = 1e-3
    lam: float = 0.5  # compute price (per unit of layer fraction); initial value when lam_lr > 0
    lam_lr: float = 0.0  # dual step on log(lam) per unit of (fraction - budget); 0 = fixed price
    mu: float = 2.0  # per-token budget-adherence penalty
    entropy_bonus: float = 0.01
    temperature: float = 1.0  # sampling temperature of the rollouts (exploration)
    self_critical: bool = False  # greedy-rollout baseline instead of the window mean
    budget_low: float = 0.6
    budget_high: float = 0.95
    shared_budget: bool = False  # one budget per step for the whole batch (needed with a plan)
    # training budgets to draw from (one dual price each); empty: uniform in [low, high]
    budgets: tuple[float, ...] = ()
    lam_by_budget: dict[float, float] = field(default_factory=dict)  # initial price per training budget (else `lam`)
    seed: int = 0


def token_reward(executor: AdaptiveExecutor, out, full: KLReference, budgets: torch.Tensor, lam: float,
                 mu: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token reward, KL to the full model's pass `full` and layer fraction [B, T] of an executor output."""
    kl = full.kl(log_probs(out.logits))
    rep = out.trace.cost(executor.cost)
    frac = (rep.layer_macs / rep.full_layer_macs).float()
    reward = -kl - lam * frac - mu * (frac - budgets.float().unsqueeze(1)).abs()
    return reward, kl, frac


def rollout(executor: AdaptiveExecutor, controller: LearnedController, ids: torch.Tensor, budgets: torch.Tensor,
            full: KLReference, cfg: RLConfig, lam: float | None = None) -> tuple[torch.Tensor, dict, object]:
    """Sampled pass over ids [B, T] scored against the full model's pass `full` (its softmax computed
    once per step, shared with the greedy baseline); returns per-token reward [B, T], stats and the
    trace (records kept)."""
    controller.record, controller.sample = True, True
    controller.reset_records()
    out = executor.forward(ids, controller=controller, budget=_budget_arg(budgets, cfg))
    controller.record, controller.sample = False, False
    reward, kl, frac = token_reward(executor, out, full, budgets, cfg.lam if lam is None else lam, cfg.mu)
    return reward, {"kl": float(kl.mean()), "layer_fraction": float(frac.mean()),
                    "reward": float(reward.mean())}, out.trace


def log_prob(policy: PolicyNet, records: list[dict],
             controller: LearnedController | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over layers of log pi(raw action) on free decisions [B, T], and mean policy entropy.
    With `controller`, pi is its sampling distribution (temperature, EXIT mask)."""
    total, ent, n = 0.0, 0.0, 0
    for r in records:
        hidden = r.get("hidden")
        logits = controller.logits(r["features"], hidden) if controller is not None else policy(r["features"], hidden)
        logp = torch.log_softmax(logits, -1)
        free = r["free"].float()
        total = total + logp.gather(-1, r["raw"].unsqueeze(-1)).squeeze(-1) * free
        safe = logp.masked_fill(~torch.isfinite(logp), 0.0)  # masked actions: p = 0, and no inf * 0 in backward
        ent = ent - ((logp.exp() * safe).sum(-1) * free).sum()
        n += int(free.sum())
    return total, ent / max(n, 1)


def train_reinforce(executor: AdaptiveExecutor, policy: PolicyNet, profiler, windows: torch.Tensor, cfg: RLConfig,
                    pacing: PacingConfig | None = None, plan: PlanConfig | None = None) -> tuple[PolicyNet, list[dict]]:
    """Fine-tune a copy of `policy` with REINFORCE on windows [N, >= seq_len] (valid split)."""
    if plan is not None and not cfg.shared_budget:
        raise ValueError("a planned controller needs one budget per batch: set RLConfig(shared_budget=True)")
    policy = copy.deepcopy(policy).train()
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    controller = LearnedController(policy, profiler, pacing, sample=True, generator=g, plan=plan,
                                   temperature=cfg.temperature)
    greedy = LearnedController(policy, profiler, pacing, plan=plan)
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    log_lam: dict[float, float] = {}  # one dual price per training budget under a plan, else one for all (key -1)
    history = []
    for step in range(cfg.steps):
        rows = torch.randint(0, windows.shape[0], (cfg.batch,), generator=g)
        start = torch.randint(0, windows.shape[1] - cfg.seq_len + 1, (1,), generator=g).item()
        ids = windows[rows, start : start + cfg.seq_len]
        budgets = _draw_budgets(cfg, g)
        key = round(float(budgets[0]), 6) if plan is not None else -1.0
        lam = math.exp(log_lam.setdefault(key, math.log(max(cfg.lam_by_budget.get(key, cfg.lam), 1e-8))))
        with torch.no_grad(), shared_prefixes(executor):  # the rollouts restore the layers their plan runs in full
            full = KLReference(executor.forward(ids).logits)
            reward, stats, trace = rollout(executor, controller, ids, budgets, full, cfg, lam)
            layer_plan = controller.plan(budgets[0], executor.adapter.num_layers)
            deployed = {"fraction": stats["layer_fraction"], "share": skip_share(trace.decisions, layer_plan)}
            if cfg.self_critical:
                base_out = executor.forward(ids, controller=greedy, budget=_budget_arg(budgets, cfg))
                baseline, _, greedy_frac = token_reward(executor, base_out, full, budgets, lam, cfg.mu)
                deployed = {"fraction": float(greedy_frac.mean()),
                            "share": skip_share(base_out.trace.decisions, layer_plan)}
                stats["greedy_layer_fraction"] = deployed["fraction"]
            else:
                baseline = reward.mean(1, keepdim=True)
        adv = reward - baseline
        adv = adv / adv.std().clamp(min=1e-6)
        logp, ent = log_prob(policy, controller.records, controller)
        loss = -(adv.detach() * logp).mean() - cfg.entropy_bonus * ent
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        controller.reset_records()
        if cfg.lam_lr > 0:
            if plan is not None:
                if deployed["share"] == deployed["share"]:  # not NaN: the plan asked something
                    log_lam[key] += cfg.lam_lr * (plan.skip_share - deployed["share"])
            else:
                log_lam[key] += cfg.lam_lr * (deployed["fraction"] - float(budgets.mean()))
        history.append({"step": step, "loss": float(loss.detach()), "policy_entropy": torch.as_tensor(ent).item(),
                        "lam": lam, "budget": float(budgets.mean()), **stats,
                        **({"greedy_skip_share": deployed["share"]} if plan is not None else {})})
    return policy.eval(), history


def price_to_lam(price: float, cost, num_layers: int) -> float:
    """A price in KL per skipped marginal layer as `lam` (per unit of layer fraction): skipping one
    layer lowers a token's fraction by (1 - SKIP path's share) / L."""
    return price * num_layers / (1.0 - cost.skip_fraction())


def _draw_budgets(cfg: RLConfig, g: torch.Generator) -> torch.Tensor:
    """This step's budgets [batch]: one shared or one per row, from `cfg.budgets` or uniform in [low, high]."""
    n = 1 if cfg.shared_budget else cfg.batch
    if cfg.budgets:
        budgets = torch.tensor(cfg.budgets, dtype=torch.float64)[torch.randint(0, len(cfg.budgets), (n,), generator=g)]
    else:
        budgets = cfg.budget_low + (cfg.budget_high - cfg.budget_low) * torch.rand(n, generator=g, dtype=torch.float64)
    return budgets.expand(cfg.batch)


def _budget_arg(budgets: torch.Tensor, cfg: RLConfig) -> float | torch.Tensor:
    return float(budgets[0]) if cfg.shared_budget else budgets
