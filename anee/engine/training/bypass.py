"""Fitting and tuning the layer bypass on the valid split.

1. `layer_bypass_stats`: run the full model over valid windows and accumulate, per layer, the
   sufficient statistics of (layer input, layer update) pairs.
2. `BypassBank.fit_` turns them into closed-form maps (`anee.core.bypass`).
3. `tune_bypass_` (optional) trains the maps end to end: each step removes the `k` least important
   layers (k drawn at random up to `max_removed`, so every nested removal set of the ranking is
   seen), replaces them by their bypass, and minimises the mean per-token KL(full || bypassed)
   over a batch of valid windows. Only the bypass parameters move; the base stays frozen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.actions import removal_decisions
from ...core.bypass import BypassBank, BypassConfig, BypassStats
from ...core.data import sample_windows
from ...core.divergence import token_kl
from ...core.freezing import frozen
from ..executor import AdaptiveExecutor


@torch.no_grad()
def layer_bypass_stats(executor: AdaptiveExecutor, windows: torch.Tensor) -> list[BypassStats]:
    """Per layer, statistics of (input, update) over every token of `windows` [N, T] (valid split)."""
    L, D = executor.adapter.num_layers, executor.adapter.dims.hidden
    stats = [BypassStats(D) for _ in range(L)]
    for ids in windows:
        hs = executor.forward(ids.unsqueeze(0), collect_hidden=True, with_logits=False).hidden_states
        for layer in range(L):
            stats[layer].add_(hs[layer][0], (hs[layer + 1] - hs[layer])[0])
    return stats


def fit_layer_bypass(executor: AdaptiveExecutor, windows: torch.Tensor, config: BypassConfig,
                     stats: list[BypassStats] | None = None) -> BypassBank:
    """A closed-form layer bypass of `config`'s family fitted on `windows` [N, T] (valid split)."""
    adapter = executor.adapter
    bank = BypassBank(config, adapter.dims.hidden, adapter.num_layers)
    if not bank.is_identity:
        stats = stats if stats is not None else layer_bypass_stats(executor, windows)
        bank.fit_(stats)
        bank.info.update(fit_tokens=stats[0].count)
    return bank


@dataclass
class BypassTuneConfig:
    steps: int = 60
    batch: int = 2
    seq_len: int = 256
    lr: float = 3e-4
    max_removed: int = 12  # each step removes the k least important layers, k uniform in 1..max_removed
    seed: int = 0


def tune_bypass_(executor: AdaptiveExecutor, ids: torch.Tensor, order: list[int], cfg: BypassTuneConfig) -> list[dict]:
    """Train `executor.bypass` in place with KL to the full model on windows drawn from the valid
    token ids [1, N], removing nested prefixes of `order` (least important first). Returns one log
    row per step (the loss is the mean per-token KL of that step's batch)."""
    bank = executor.bypass
    if bank is None:
        raise ValueError("the executor has no bypass to tune (identity)")
    L = executor.adapter.num_layers
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(bank.parameters(), lr=cfg.lr)
    history = []
    with frozen(executor.adapter.model):
        bank.train()
        try:
            for step in range(cfg.steps):
                x = sample_windows(ids, cfg.seq_len, cfg.batch, seed=cfg.seed * 100_003 + step)
                k = int(torch.randint(1, cfg.max_removed + 1, (1,), generator=g))
                with torch.no_grad():
                    teacher = executor.forward(x, collect_hidden=True)
                # the layers before the first removed one are the full model's: start there, from the
                # teacher's state (the same numbers bit for bit; about a third of a pass less per step here)
                first = min(order[:k])
                decisions = removal_decisions(order, k, L, cfg.seq_len).expand(cfg.batch, -1, -1)
                logits = executor.forward_grad(x, decisions=decisions,
                                               resume=(first, teacher.hidden_states[first])).logits
                loss = token_kl(teacher.logits, logits).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                history.append({"step": step, "removed": k, "kl": float(loss.detach())})
        finally:
            bank.eval()
    bank.info.update(tune_steps=bank.info.get("tune_steps", 0) + cfg.steps, tune_max_removed=cfg.max_removed,
                     tune_tokens=cfg.steps * cfg.batch * cfg.seq_len)
    return history
