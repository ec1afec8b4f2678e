"""REINFORCE with a baseline for the learned controller, on the teacher-forced parallel mode.

A rollout runs whole windows through the executor with actions sampled from the policy (no grad),
recording each call's features, raw action and whether the choice was free (not forced by the
pacing guards). Log-probabilities are then recomputed with grad. Per token:

    reward = -KL(full || adaptive) - lam * layer_fraction - mu * |layer_fraction - budget|

advantage = reward - mean reward of the token's window (the baseline), scaled by the batch std.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .controller import LearnedController, PacingConfig, PolicyNet
from .executor import AdaptiveExecutor
from .traces import token_kl


@dataclass
class RLConfig:
    steps: int = 40
    batch: int = 2  # windows per step
    seq_len: int = 128
    lr: float = 1e-3
    lam: float = 0.5  # compute penalty (per unit of layer fraction)
    mu: float = 2.0  # budget-adherence penalty
    entropy_bonus: float = 0.01
    budget_low: float = 0.6
    budget_high: float = 0.95
    seed: int = 0


def rollout(executor: AdaptiveExecutor, controller: LearnedController, ids: torch.Tensor, budgets: torch.Tensor,
            full_logits: torch.Tensor, cfg: RLConfig) -> tuple[torch.Tensor, dict]:
    """Sampled pass over ids [B, T]; returns per-token reward [B, T] and stats (records kept)."""
    controller.record, controller.sample = True, True
    controller.reset_records()
    out = executor.forward(ids, controller=controller, budget=budgets)
    controller.record, controller.sample = False, False
    kl = token_kl(full_logits, out.logits)
    rep = out.trace.cost(executor.cost)
    frac = (rep.layer_macs / rep.full_layer_macs).float()
    reward = -kl - cfg.lam * frac - cfg.mu * (frac - budgets.float().unsqueeze(1)).abs()
    return reward, {"kl": float(kl.mean()), "layer_fraction": rep.layer_fraction, "reward": float(reward.mean())}


def log_prob(policy: PolicyNet, records: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over layers of log pi(raw action) on free decisions [B, T], and mean policy entropy."""
    total, ent, n = 0.0, 0.0, 0
    for r in records:
        logp = torch.log_softmax(policy(r["features"]), -1)
        free = r["free"].float()
        total = total + logp.gather(-1, r["raw"].unsqueeze(-1)).squeeze(-1) * free
        ent = ent - ((logp.exp() * logp).sum(-1) * free).sum()
        n += int(free.sum())
    return total, ent / max(n, 1)


def train_reinforce(executor: AdaptiveExecutor, policy: PolicyNet, profiler, windows: torch.Tensor, cfg: RLConfig,
                    pacing: PacingConfig | None = None) -> tuple[PolicyNet, list[dict]]:
    """Fine-tune a copy of `policy` with REINFORCE on windows [N, >= seq_len] (valid split)."""
    policy = copy.deepcopy(policy).train()
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    controller = LearnedController(policy, profiler, pacing, sample=True, generator=g)
    opt = torch.optim.Adam(policy.net.parameters(), lr=cfg.lr)
    history = []
    for step in range(cfg.steps):
        rows = torch.randint(0, windows.shape[0], (cfg.batch,), generator=g)
        start = torch.randint(0, windows.shape[1] - cfg.seq_len + 1, (1,), generator=g).item()
        ids = windows[rows, start : start + cfg.seq_len]
        budgets = cfg.budget_low + (cfg.budget_high - cfg.budget_low) * torch.rand(cfg.batch, generator=g, dtype=torch.float64)
        with torch.no_grad():
            full = executor.forward(ids).logits
            reward, stats = rollout(executor, controller, ids, budgets, full, cfg)
        adv = reward - reward.mean(1, keepdim=True)
        adv = adv / adv.std().clamp(min=1e-6)
        logp, ent = log_prob(policy, controller.records)
        loss = -(adv.detach() * logp).mean() - cfg.entropy_bonus * ent
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        controller.reset_records()
        history.append({"step": step, "loss": float(loss), "policy_entropy": float(ent), **stats})
    return policy.eval(), history
