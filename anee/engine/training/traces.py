"""Trace collection for the learned controller: (state, action, outcome) rows on the valid split.

Two kinds of traces: the heuristic's own decisions (`collect_traces`), and, for a planned
controller, hindsight-labelled traces. For the latter, `nested_outcomes` first plays, for every
token, each *nested* choice on the budget's marginal layers (skip the j least important of them,
j = 0 .. marginal) and records the token's KL to the full model under each; `hindsight_allocation`
gives every token the j that would have been best at one compute price per budget (set so the
plan's skip share is met); `allocation_traces` then plays that allocation with an
`AllocatedController` and records the state (profiler features and residual stream) at every
marginal decision, labelled with the action taken. `warmstart.train_warmstart` learns to predict
those labels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ...core.actions import DROP, EXIT, PROCESS, SKIP, pattern_decisions
from ...core.divergence import KLReference, log_probs, nll_log_probs
from ..controllers.base import LayerView
from ..controllers.pacing import PacedController, PacingConfig
from ..controllers.plan import PlanConfig, marginal_order
from ..executor import AdaptiveExecutor
from ..prefix_memo import WindowPasses
from ..profiler import FEATURES
from .oracle import lagrangian_price


def _record_rows(executor: AdaptiveExecutor, controller: PacedController, ids: torch.Tensor, full: KLReference,
                 budget: float, window: int) -> dict[str, np.ndarray]:
    """Run `controller` (recording) on ids [1, T]; one row per controller call on a live token."""
    controller.record = True
    controller.reset_records()
    out = executor.forward(ids, controller=controller, budget=budget)
    kl = full.kl(log_probs(out.logits))[0]
    rep = out.trace.cost(executor.cost)
    frac = (rep.layer_macs / rep.full_layer_macs)[0]
    cols: dict[str, list] = {k: [] for k in ("layer", "budget", "action", "free", "token_kl", "token_fraction",
                                             "window", "token", "f", "hidden")}
    for r in controller.records:
        alive = r["alive"][0]
        n = int(alive.sum())
        cols["f"].append(r["features"][0][alive].cpu().numpy())
        if "hidden" in r:
            cols["hidden"].append(r["hidden"][0][alive].to(torch.float16).cpu().numpy())
        cols["layer"].append(np.full(n, int(r["layer"])))
        cols["budget"].append(np.full(n, budget))
        cols["action"].append(r["action"][0][alive].cpu().numpy())
        cols["free"].append(r["free"][0][alive].cpu().numpy())
        cols["token_kl"].append(kl[alive].cpu().numpy())
        cols["token_fraction"].append(frac[alive].cpu().numpy())
        cols["window"].append(np.full(n, window))
        cols["token"].append(alive.nonzero().flatten().cpu().numpy())
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
def collect_traces(executor: AdaptiveExecutor, controller: PacedController, windows: torch.Tensor,
                   budgets: list[float]) -> dict[str, np.ndarray]:
    """Run `controller` (recording) on every window [N, T] at every budget; one row per controller
    call on a live token: features, layer, budget, action, free, and the token's outcome (KL to
    the full model, realized layer fraction); `hidden` [rows, D] (float16) if the controller
    records the residual stream."""
    parts = []
    for w, ids in enumerate(windows):
        ids = ids.unsqueeze(0)
        full = KLReference(executor.forward(ids).logits)
        parts += [_record_rows(executor, controller, ids, full, b, w) for b in budgets]
    return _join(parts)


def trace_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per budget: number of rows, share of each action, share of free (unforced) decisions, and the
    tokens' mean KL and realized layer fraction."""
    return rows.groupby("budget").agg(rows=("action", "size"), process=("action", lambda a: (a == PROCESS).mean()),
                                      skip=("action", lambda a: (a == SKIP).mean()),
                                      exit=("action", lambda a: (a == EXIT).mean()),
                                      free=("free", "mean"), token_kl=("token_kl", "mean"),
                                      token_fraction=("token_fraction", "mean")).reset_index()


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
def nested_outcomes(executor: AdaptiveExecutor, profiler, plan: PlanConfig, windows: torch.Tensor,
                    budgets: list[float]) -> pd.DataFrame:
    """Counterfactual outcomes: for every window [N, T], budget and j = 0 .. (marginal layers of the
    budget's plan), each token's KL to the full model and NLL of the next token (NaN at the last
    position) when the j least important marginal layers are SKIPPED for every token."""
    controller, L = AllocatedController(profiler, plan), executor.adapter.num_layers
    rows = []
    for w, ids in enumerate(windows):
        ids = ids.unsqueeze(0)
        done = WindowPasses(executor, ids)
        full = KLReference(done.forward(pattern_decisions([PROCESS] * L, ids.shape[1])))
        for b in budgets:
            layer_plan = controller.plan(b, L)
            order = marginal_order(layer_plan, profiler.rank)
            for j in range(len(order) + 1):
                logp = log_probs(done.forward(nested_decisions(layer_plan, order[:j], ids.shape[1])))
                nll = nll_log_probs(logp[0, :-1], ids[0, 1:])
                rows.append(pd.DataFrame({"window": w, "budget": b, "token": np.arange(ids.shape[1]), "skips": j,
                                          "token_kl": full.kl(logp)[0].cpu().numpy(),
                                          "token_nll": np.append(nll.cpu().numpy(), np.nan)}))
    return pd.concat(rows, ignore_index=True)


def hindsight_allocation(outcomes: pd.DataFrame, skip_share: float,
                         iters: int = 50) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per (window, budget, token) the number of marginal layers to skip, `skips`, with the least total KL
    at one compute price per budget, set by bisection so that the mean is `skip_share` of the
    marginal layers: the allocation says *which* tokens should skip, the share says how many.
    Also returns the prices (KL per skipped marginal layer), one row per budget."""
    parts, prices = [], []
    for b, g in outcomes.groupby("budget"):
        kl = g.pivot(index=["window", "token"], columns="skips", values="token_kl")
        options = kl.columns.to_numpy()
        price = lagrangian_price(kl.to_numpy().T, options.astype(float), skip_share * options.max(), iters)
        pick = (kl.to_numpy() - price * options).argmin(1)
        parts.append(kl.index.to_frame(index=False).assign(budget=b, skips=options[pick]))
        prices.append({"budget": b, "marginal": int(options.max()), "price": price,
                       "mean_skips": float(options[pick].mean())})
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
                     "static_ppl": float(np.exp(static.token_nll)),
                     "hindsight_ppl": float(np.exp(picked.token_nll.mean())),
                     "tokens_skipping_none": float((skips == 0).mean()),
                     "tokens_skipping_all": float((skips == m).mean())})
    return pd.DataFrame(rows)


@torch.no_grad()
def allocation_traces(executor: AdaptiveExecutor, profiler, plan: PlanConfig, windows: torch.Tensor,
                      allocation: pd.DataFrame, pacing: PacingConfig | None = None) -> dict[str, np.ndarray]:
    """Play `allocation` (rows window, budget, token, skips) with an `AllocatedController` on every
    window [N, T] and record every marginal decision: features, residual stream (`hidden`, float16),
    and `action` (the label), plus the token's outcome under the allocation."""
    controller = AllocatedController(profiler, plan, pacing)
    parts = []
    for w, ids in enumerate(windows):
        ids = ids.unsqueeze(0)
        full = KLReference(executor.forward(ids).logits)
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
