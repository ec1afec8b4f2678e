"""Supervised warm-start of the learned controller on trace labels (the heuristic's actions or
hindsight labels), validated on held-out windows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..controllers.policy import PolicyNet


@dataclass
class WarmStartConfig:
    hidden: int = 32
    rank: int = 0  # rank of the policy's read of the residual stream (0: profiler features only)
    epochs: int = 8
    batch_size: int = 512
    lr: float = 3e-3
    weight_decay: float = 0.0
    seed: int = 0
    val_fraction: float = 0.2


def held_out(groups: np.ndarray, val_fraction: float) -> np.ndarray:
    """Rows [N] whose group (window) is among the last `val_fraction` of the sorted groups (none if one group)."""
    uniq = np.unique(groups)
    n_val = max(1, int(round(len(uniq) * val_fraction))) if len(uniq) > 1 else 0
    return np.isin(groups, uniq[len(uniq) - n_val :]) if n_val else np.zeros(len(groups), dtype=bool)


def static_accuracy(labels: pd.DataFrame, val_fraction: float = 0.2) -> float:
    """Held-out accuracy of the best *static* rule: the majority label of each (budget, layer) on the
    training windows, the same for every token. What a policy predicts beyond it is per-token skill."""
    val = held_out(labels.window.to_numpy(), val_fraction)
    majority = labels[~val].groupby(["budget", "layer"]).label.agg(lambda a: a.value_counts().idxmax()).rename("guess")
    guess = labels[val].join(majority, on=["budget", "layer"]).guess
    return float((guess == labels[val].label).mean())


def train_warmstart(features: np.ndarray, actions: np.ndarray, groups: np.ndarray, cfg: WarmStartConfig,
                    hidden: np.ndarray | None = None) -> tuple[PolicyNet, dict]:
    """Cross-entropy training on `actions` (the heuristic's, or hindsight labels) from `features`
    [N, F] and, with `cfg.rank` > 0, the residual stream `hidden` [N, D]; validation = held-out
    `groups` (windows). Returns the policy and {history, val_accuracy, confusion (3x3, rows = target)}."""
    if (cfg.rank > 0) != (hidden is not None):
        raise ValueError("pass hidden states exactly when WarmStartConfig.rank > 0")
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.as_tensor(features, dtype=torch.float32)
    h = torch.as_tensor(hidden, dtype=torch.float32) if hidden is not None else torch.zeros(len(x), 0)
    y = torch.as_tensor(actions, dtype=torch.long)
    is_val = torch.as_tensor(held_out(groups, cfg.val_fraction))
    train, val = ~is_val, is_val if is_val.any() else ~is_val
    torch.manual_seed(cfg.seed)
    policy = PolicyNet(x.shape[1], cfg.hidden, h.shape[1] if cfg.rank else 0, cfg.rank)
    policy.mean.copy_(x[train].mean(0))
    policy.std.copy_(x[train].std(0).clamp(min=1e-3))
    if cfg.rank:
        hn = PolicyNet.rms_normalize(h[train])
        policy.h_mean.copy_(hn.mean(0))
        policy.h_std.copy_(hn.std(0).clamp(min=1e-3))
    hidden_of = (lambda idx: h[idx]) if cfg.rank else (lambda idx: None)
    counts = torch.bincount(y[train], minlength=3).float()
    weight = (counts.sum() / (3 * counts.clamp(min=1))).clamp(max=10.0)
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_idx, val_idx = train.nonzero().flatten(), val.nonzero().flatten()
    history = []
    for epoch in range(cfg.epochs):
        perm = train_idx[torch.randperm(len(train_idx), generator=g)]
        total = 0.0
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            loss = F.cross_entropy(policy(x[idx], hidden_of(idx)), y[idx], weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        with torch.no_grad():
            acc = float((policy(x[val_idx], hidden_of(val_idx)).argmax(-1) == y[val_idx]).float().mean())
        history.append({"epoch": epoch, "train_loss": total / len(train_idx), "val_accuracy": acc})
    with torch.no_grad():
        pred = policy(x[val_idx], hidden_of(val_idx)).argmax(-1)
    confusion = torch.zeros(3, 3, dtype=torch.long)
    confusion.index_put_((y[val_idx], pred), torch.ones_like(pred), accumulate=True)
    return policy.eval(), {"history": history, "val_accuracy": history[-1]["val_accuracy"],
                           "confusion": confusion.numpy()}
