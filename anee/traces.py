"""Trace collection (state, action, outcome) and supervised warm-start of the learned controller.

Two kinds of traces: the heuristic's own decisions (`collect_traces`), and, for a planned
controller, hindsight-labelled traces. For the latter, `nested_outcomes` first plays, for every
token, each *nested* choice on the budget's marginal layers (skip the j least important of them,
j = 0 .. marginal) and records the token's KL to the full model under each; `hindsight_allocation`
gives every token the j that would have been best at one compute price per budget (set so the
plan's skip share is met); `allocation_traces` then plays that allocation with an
`AllocatedController` and records the state (profiler features and residual stream) at every
marginal decision, labelled with the action taken. The warm-start learns to predict those labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .controller import LayerView, PacedController, PacingConfig, PlanConfig, PolicyNet, marginal_order
from .cost import DROP, PROCESS, SKIP
from .executor import AdaptiveExecutor
from .profiler import FEATURES


def token_kl(full_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(full || adaptive) per token [B, T] (nats)."""
    p = torch.log_softmax(full_logits.float(), -1)
    q = torch.log_softmax(logits.float(), -1)
    return (p.exp() * (p - q)).sum(-1)


def _record_rows(executor: AdaptiveExecutor, controller: PacedController, ids: torch.Tensor, full_logits: torch.Tensor,
                 budget: float, window: int) -> dict[str, np.ndarray]:
    """Run `controller` (recording) on ids [1, T]; one row per controller call on a live token."""
    controller.record = True
    controller.reset_records()
    out = executor.forward(ids, controller=controller, budget=budget)
    kl = token_kl(full_logits, out.logits)[0]
    rep = out.trace.cost(executor.cost)
    frac = (rep.layer_macs / rep.full_layer_macs)[0]
    cols: dict[str, list] = {k: [] for k in ("layer", "budget", "action", "free", "token_kl", "token_fraction", "window", "token", "f", "hidden")}
    for r in controller.records:
        alive = r["alive"][0]
        n = int(alive.sum())
        cols["f"].append(r["features"][0][alive].numpy())
        if "hidden" in r:
            cols["hidden"].append(r["hidden"][0][alive].to(torch.float16).numpy())
        cols["layer"].append(np.full(n, int(r["layer"])))
        cols["budget"].append(np.full(n, budget))
        cols["action"].append(r["action"][0][alive].numpy())
        cols["free"].append(r["free"][0][alive].numpy())
        cols["token_kl"].append(kl[alive].numpy())
        cols["token_fraction"].append(frac[alive].numpy())
        cols["window"].append(np.full(n, window))
        cols["token"].append(alive.nonzero().flatten().numpy())
    controller.record = False
    controller.reset_records()
    return {k: v for k, v in cols.items() if v}


def _join(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate row blocks; the feature matrix becomes one column per name in `FEATURES`."""
    out = {k: np.concatenate([np.concatenate(p[k]) for p in parts]) for k in parts[0]}
    f = out.pop("f")
    for i, name in enumerate(FEATURES):
        out[name] = f[:, i]
    return out


@torch.no_grad()
def collect_traces(executor: AdaptiveExecutor, controller: PacedController, windows: torch.Tensor, budgets: list[float]) -> dict[str, np.ndarray]:
    """Run `controller` (recording) on every window [N, T] at every budget; one row per controller
    call on a live token: features, layer, budget, action, free, and the token's outcome (KL to
    the full model, realized layer fraction); `hidden` [rows, D] (float16) if the controller
    records the residual stream."""
    parts = []
    for w, ids in enumerate(windows):
        ids = ids.unsqueeze(0)
        full = executor.forward(ids).logits
        parts += [_record_rows(executor, controller, ids, full, b, w) for b in budgets]
    return _join(parts)


class AllocatedController(PacedController):
    """Plays a given per-token allocation (`skips` [B, T]): at a marginal layer, SKIP where the layer
    is among the token's `skips` least important marginal layers, PROCESS otherwise (inside the
    pacing guards). The behaviour policy of hindsight-labelled traces."""

    def __init__(self, profiler, plan: PlanConfig, pacing: PacingConfig | None = None, record_hidden: bool = True):
        super().__init__(profiler, pacing, plan=plan, record_hidden=record_hidden)
        self.skips: torch.Tensor | None = None

    def raw_actions(self, view: LayerView, feats: torch.Tensor) -> torch.Tensor:
        slot = marginal_order(view.plan, self.profiler.rank).index(view.layer)  # 0 = skipped first
        return torch.where(self.skips.to(view.hidden.device) > slot, SKIP, PROCESS)


def nested_decisions(plan: torch.Tensor, skipped: list[int], tokens: int) -> torch.Tensor:
    """Decisions [1, T, L] of a plan with the `skipped` layers SKIPPED and the other asked ones PROCESSED."""
    row = torch.where(plan == DROP, DROP, PROCESS)
    row[skipped] = SKIP
    return row.to(torch.int8).expand(1, tokens, -1)


@torch.no_grad()
def nested_outcomes(executor: AdaptiveExecutor, profiler, plan: PlanConfig, windows: torch.Tensor, budgets: list[float]) -> pd.DataFrame:
    """Counterfactual outcomes: for every window [N, T], budget and j = 0 .. (marginal layers of the
    budget's plan), each token's KL to the full model and NLL of the next token (NaN at the last
    position) when the j least important marginal layers are SKIPPED for every token."""
    controller, L = AllocatedController(profiler, plan), executor.adapter.num_layers
    rows = []
    for w, ids in enumerate(windows):
        ids = ids.unsqueeze(0)
        full = executor.forward(ids).logits
        for b in budgets:
            layer_plan = controller.plan(b, L)
            order = marginal_order(layer_plan, profiler.rank)
            for j in range(len(order) + 1):
                logits = executor.forward(ids, decisions=nested_decisions(layer_plan, order[:j], ids.shape[1])).logits
                nll = F.cross_entropy(logits[0, :-1].float(), ids[0, 1:], reduction="none")
                rows.append(pd.DataFrame({"window": w, "budget": b, "token": np.arange(ids.shape[1]), "skips": j,
                                          "token_kl": token_kl(full, logits)[0].numpy(),
                                          "token_nll": np.append(nll.numpy(), np.nan)}))
    return pd.concat(rows, ignore_index=True)


def hindsight_allocation(outcomes: pd.DataFrame, skip_share: float, iters: int = 50) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per (window, budget, token) the number of marginal layers to skip, `skips`, with the least total KL
    at one compute price per budget, set by bisection so that the mean is `skip_share` of the
    marginal layers: the allocation says *which* tokens should skip, the share says how many.
    Also returns the prices (KL per skipped marginal layer), one row per budget."""
    from .headroom import lagrangian_price

    parts, prices = [], []
    for b, g in outcomes.groupby("budget"):
        kl = g.pivot(index=["window", "token"], columns="skips", values="token_kl")
        options = kl.columns.to_numpy()
        price = lagrangian_price(kl.to_numpy().T, options.astype(float), skip_share * options.max(), iters)
        pick = (kl.to_numpy() - price * options).argmin(1)
        parts.append(kl.index.to_frame(index=False).assign(budget=b, skips=options[pick]))
        prices.append({"budget": b, "marginal": int(options.max()), "price": price, "mean_skips": float(options[pick].mean())})
    return pd.concat(parts, ignore_index=True)[["window", "budget", "token", "skips"]], pd.DataFrame(prices)


def hindsight_summary(outcomes: pd.DataFrame, allocation: pd.DataFrame) -> pd.DataFrame:
    """Per budget: mean KL and perplexity when every token skips half of the marginal layers (static;
    an odd half time-shares its two neighbours) against the hindsight allocation, and how the
    allocation spreads over tokens (no marginal layer skipped / all skipped)."""
    rows = []
    for b, g in outcomes.groupby("budget"):
        m = int(g.skips.max())
        by_j = g.groupby("skips")[["token_kl", "token_nll"]].mean()
        static = by_j.loc[[m // 2, (m + 1) // 2]].mean()  # the same row twice when m is even
        picked = g.merge(allocation[allocation.budget == b], on=["window", "budget", "token", "skips"])
        skips = allocation[allocation.budget == b].skips
        rows.append({"budget": b, "static_kl": static.token_kl, "hindsight_kl": picked.token_kl.mean(),
                     "static_ppl": float(np.exp(static.token_nll)), "hindsight_ppl": float(np.exp(picked.token_nll.mean())),
                     "tokens_skipping_none": float((skips == 0).mean()), "tokens_skipping_all": float((skips == m).mean())})
    return pd.DataFrame(rows)


@torch.no_grad()
def allocation_traces(executor: AdaptiveExecutor, profiler, plan: PlanConfig, windows: torch.Tensor, allocation: pd.DataFrame,
                      pacing: PacingConfig | None = None) -> dict[str, np.ndarray]:
    """Play `allocation` (rows window, budget, token, skips) with an `AllocatedController` on every
    window [N, T] and record every marginal decision: features, residual stream (`hidden`, float16),
    and `action` (the label), plus the token's outcome under the allocation."""
    controller = AllocatedController(profiler, plan, pacing)
    parts = []
    for w, ids in enumerate(windows):
        ids = ids.unsqueeze(0)
        full = executor.forward(ids).logits
        for b, g in allocation[allocation.window == w].groupby("budget"):
            controller.skips = torch.tensor(g.sort_values("token").skips.to_numpy()).unsqueeze(0)
            parts.append(_record_rows(executor, controller, ids, full, float(b), w))
    out = _join(parts)
    out["label"] = out["action"]
    return out


def to_dataset(traces: dict[str, np.ndarray]):
    """A `datasets.Dataset` of the traces (save with `.to_parquet(path)`); 2-D columns (the residual
    stream) become fixed-size lists."""
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable

    cols = {k: pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1]) if v.ndim == 2 else pa.array(v)
            for k, v in traces.items()}
    return Dataset(InMemoryTable(pa.table(cols)))


def hidden_column(dataset) -> np.ndarray:
    """The `hidden` column of a trace dataset as a float32 array [rows, D]."""
    return dataset.with_format("numpy", columns=["hidden"])[:]["hidden"]


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
    return policy.eval(), {"history": history, "val_accuracy": history[-1]["val_accuracy"], "confusion": confusion.numpy()}
