"""Trace collection (state, action, outcome) and supervised warm-start of the learned controller.

Two kinds of traces: the heuristic's own decisions (`collect_traces`), and, for a planned
controller, counterfactual traces (`counterfactual_traces`): every combination of PROCESS / SKIP on
the marginal layers is played for every token, so each token's outcome is known for each choice.
`hindsight_labels` turns the latter into the per-token choice that would have been best at a common
compute price, which the warm-start then learns to predict from the state.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .controller import ASK, LayerView, PacedController, PlanConfig, PolicyNet
from .executor import AdaptiveExecutor
from .profiler import FEATURES


def token_kl(full_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(full || adaptive) per token [B, T] (nats)."""
    p = torch.log_softmax(full_logits.float(), -1)
    q = torch.log_softmax(logits.float(), -1)
    return (p.exp() * (p - q)).sum(-1)


@torch.no_grad()
def collect_traces(executor: AdaptiveExecutor, controller: PacedController, windows: torch.Tensor, budgets: list[float]) -> dict[str, np.ndarray]:
    """Run `controller` (recording) on every window [N, T] at every budget; one row per controller
    call on a live token: features, layer, budget, action, free, and the token's outcome (KL to
    the full model, realized layer fraction)."""
    cols: dict[str, list] = {k: [] for k in ("layer", "budget", "action", "free", "token_kl", "token_fraction", "window", "token")}
    feats = []
    for w, ids in enumerate(windows):
        ids = ids.unsqueeze(0)
        full = executor.forward(ids).logits
        for b in budgets:
            controller.record = True
            controller.reset_records()
            out = executor.forward(ids, controller=controller, budget=b)
            kl = token_kl(full, out.logits)[0]
            rep = out.trace.cost(executor.cost)
            frac = (rep.layer_macs / rep.full_layer_macs)[0]
            for r in controller.records:
                alive = r["alive"][0]
                n = int(alive.sum())
                feats.append(r["features"][0][alive])
                cols["layer"].append(np.full(n, int(r["layer"])))
                cols["budget"].append(np.full(n, b))
                cols["action"].append(r["action"][0][alive].numpy())
                cols["free"].append(r["free"][0][alive].numpy())
                cols["token_kl"].append(kl[alive].numpy())
                cols["token_fraction"].append(frac[alive].numpy())
                cols["window"].append(np.full(n, w))
                cols["token"].append(alive.nonzero().flatten().numpy())
            controller.record = False
            controller.reset_records()
    out = {k: np.concatenate(v) for k, v in cols.items()}
    f = torch.cat(feats).numpy()
    for i, name in enumerate(FEATURES):
        out[name] = f[:, i]
    return out


class ScriptedController(PacedController):
    """Plays `actions[i]` at the i-th asked layer of the plan, for every token (inside the pacing
    guards): a behaviour policy for counterfactual traces."""

    def __init__(self, profiler, plan: PlanConfig, actions: tuple[int, ...], record: bool = False):
        super().__init__(profiler, record=record, plan=plan)
        self.actions = actions

    def raw_actions(self, view: LayerView, feats: torch.Tensor) -> torch.Tensor:
        slot = int((view.plan[: view.layer] == ASK).sum())
        return torch.full(view.spent.shape, self.actions[slot], dtype=torch.long, device=view.hidden.device)


def counterfactual_traces(executor: AdaptiveExecutor, profiler, plan: PlanConfig, windows: torch.Tensor,
                          budgets: list[float]) -> dict[str, np.ndarray]:
    """`collect_traces` for every PROCESS / SKIP combination on the plan's marginal layers; column
    `combo` numbers the combination, `slot` the marginal layer (in depth order)."""
    from .cost import PROCESS, SKIP

    parts = []
    for c, actions in enumerate(itertools.product((PROCESS, SKIP), repeat=plan.marginal)):
        tr = collect_traces(executor, ScriptedController(profiler, plan, actions), windows, budgets)
        tr["combo"] = np.full(len(tr["layer"]), c)
        parts.append(tr)
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    key = pd.DataFrame({"window": out["window"], "budget": out["budget"], "combo": out["combo"], "token": out["token"]})
    out["slot"] = key.groupby(["window", "budget", "combo", "token"]).cumcount().to_numpy()
    return out


def combo_table(traces: pd.DataFrame) -> pd.DataFrame:
    """One row per (window, budget, token, combo) of counterfactual traces: the token's KL and how
    many marginal layers it skipped under that combination."""
    from .cost import SKIP

    df = traces.assign(skips=(traces.action == SKIP).astype(int))
    return df.groupby(["window", "budget", "token", "combo"]).agg(kl=("token_kl", "first"), skips=("skips", "sum")).reset_index()


def hindsight_labels(traces: pd.DataFrame, skip_share: float = 0.5, iters: int = 50) -> pd.DataFrame:
    """Rows of counterfactual traces along each token's best combination, with `label` = its action.

    Best = least KL to the full model plus a compute price per skipped marginal layer, one price for
    all tokens, set by bisection so that `skip_share` of the marginal decisions are SKIPs: the
    labels say *which* tokens should skip, the share says how many."""
    from .headroom import lagrangian_pick

    table = combo_table(traces)
    kl = table.pivot(index=["window", "budget", "token"], columns="combo", values="kl")
    skips = table.pivot(index=["window", "budget", "token"], columns="combo", values="skips")
    n_slots = int(traces.slot.max()) + 1
    pick = lagrangian_pick(kl.to_numpy().T, skips.to_numpy().T, skip_share * n_slots, iters)
    best = kl.index.to_frame(index=False).assign(combo=kl.columns.to_numpy()[pick])
    rows = traces.merge(best, on=["window", "budget", "token", "combo"])
    return rows.assign(label=rows.action)


def to_dataset(traces: dict[str, np.ndarray]):
    """A `datasets.Dataset` of the traces (save with `.to_parquet(path)`)."""
    from datasets import Dataset

    return Dataset.from_dict({k: v.tolist() if v.dtype == bool else v for k, v in traces.items()})


@dataclass
class WarmStartConfig:
    hidden: int = 32
    epochs: int = 8
    batch_size: int = 512
    lr: float = 3e-3
    seed: int = 0
    val_fraction: float = 0.2


def train_warmstart(features: np.ndarray, actions: np.ndarray, groups: np.ndarray, cfg: WarmStartConfig) -> tuple[PolicyNet, dict]:
    """Cross-entropy training on `actions` (the heuristic's, or hindsight labels); validation = held-out
    `groups` (windows). Returns the policy and {history, val_accuracy, confusion (3x3, rows = target)}."""
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(actions, dtype=torch.long)
    uniq = np.unique(groups)
    n_val = max(1, int(round(len(uniq) * cfg.val_fraction))) if len(uniq) > 1 else 0
    val_groups = uniq[len(uniq) - n_val :]
    is_val = torch.as_tensor(np.isin(groups, val_groups))
    if n_val == 0:
        is_val = torch.zeros(len(y), dtype=torch.bool)
    xt, yt = x[~is_val], y[~is_val]
    xv, yv = (x[is_val], y[is_val]) if is_val.any() else (xt, yt)
    torch.manual_seed(cfg.seed)
    policy = PolicyNet(x.shape[1], cfg.hidden)
    policy.mean.copy_(xt.mean(0))
    policy.std.copy_(xt.std(0).clamp(min=1e-3))
    counts = torch.bincount(yt, minlength=3).float()
    weight = (counts.sum() / (3 * counts.clamp(min=1))).clamp(max=10.0)
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    history = []
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(yt), generator=g)
        total = 0.0
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            loss = F.cross_entropy(policy(xt[idx]), yt[idx], weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        with torch.no_grad():
            acc = float((policy(xv).argmax(-1) == yv).float().mean())
        history.append({"epoch": epoch, "train_loss": total / len(yt), "val_accuracy": acc})
    with torch.no_grad():
        pred = policy(xv).argmax(-1)
    confusion = torch.zeros(3, 3, dtype=torch.long)
    confusion.index_put_((yv, pred), torch.ones_like(yv), accumulate=True)
    return policy.eval(), {"history": history, "val_accuracy": history[-1]["val_accuracy"], "confusion": confusion.numpy()}
