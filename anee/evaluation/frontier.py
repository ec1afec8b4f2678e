"""Notebook 06's frontier: the evaluation context, the method grid, perplexity at equal net savings
(interpolated, and on each method's lower convex hull), and the hindsight-headroom table."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..core.adapters import adapter_for
from ..core.data import wikitext_tokens
from ..engine.executor import AdaptiveExecutor
from ..engine.importance import removal_order
from ..engine.training.oracle import oracle_allocation, oracle_ppl, skip_profiles, static_ppl
from .context import EvalContext
from .methods import build_method
from .perplexity import PerplexityResult, evaluate
from .results import output_dir


def frontier_context(model, tokenizer, profile: str, calibration_tokens: int = 4096, min_layers: int = 0) -> EvalContext:
    """EvalContext with valid-split calibration tokens and the profile's checkpoint folder."""
    executor = AdaptiveExecutor(adapter_for(model), min_layers=min_layers)
    calibration = wikitext_tokens(tokenizer, "valid", calibration_tokens)
    return EvalContext(model, tokenizer, executor, calibration,
                       extras={"checkpoint_dir": output_dir("results", profile) / "checkpoints", "profile": profile})


def extra_specs(ctx: EvalContext, budgets=(0.9, 0.8, 0.7, 0.6), planned_budgets=None) -> list[tuple[str, dict]]:
    """Rows contributed by the ANEE controllers (02-04) and the hierarchical model (05). Their
    checkpoints must exist in the profile's checkpoint folder: run those notebooks first. The
    planned controllers are cheap to evaluate, so they may get a denser grid (`planned_budgets`)."""
    planned = ("anee_heuristic", "anee_warmstart", "anee_warmstart_profiler_only", "anee_rl")
    specs = [(m, {"budget": b}) for m in planned for b in (planned_budgets or budgets)]
    specs += [("anee_heuristic_every_layer", {"budget": b}) for b in budgets]
    specs += [("hierarchical", {"capacity": c, "exits": False}) for c in (0.9, 0.7)]
    specs += [("hierarchical", {"capacity": 0.9, "exits": True})]
    return specs


def run_frontier(ctx: EvalContext, specs: list[tuple[str, dict]], ids: torch.Tensor, window: int, stride: int,
                 progress: bool = False) -> list[PerplexityResult]:
    """Evaluate every (method name, setting) pair on the same windows."""
    results = []
    for name, setting in specs:
        method = build_method(name, ctx, **setting)
        label = ",".join(f"{k}={v}" for k, v in setting.items())
        results.append(evaluate(method, ids, window, stride, name=name, setting=label, progress=progress))
    return results


def lower_hull(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices (in increasing x) of the lower convex hull of the points (x, y): the best a method can
    do by time-sharing two of its operating points (y = log-perplexity mixes linearly)."""
    order = np.lexsort((y, x))
    hull: list[int] = []
    for i in order:
        if hull and x[hull[-1]] == x[i]:
            continue  # same saving: the lower point (sorted first) is kept
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = (x[hull[-2]], y[hull[-2]]), (x[hull[-1]], y[hull[-1]])
            if (x2 - x1) * (y[i] - y1) - (y2 - y1) * (x[i] - x1) <= 0:  # hull[-1] on or above the chord
                hull.pop()
            else:
                break
        hull.append(i)
    return np.array(hull)


def ppl_at_saving(df: pd.DataFrame, levels: list[float], saved_col: str = "layer_saved_net", hull: bool = False) -> pd.DataFrame:
    """Perplexity of each method at the given net savings, interpolating log-ppl linearly between
    evaluated settings (NaN outside the evaluated range). With `hull=True` only the points on each
    method's lower convex hull are used: every method may time-share two of its operating points, so
    no method wins at a level merely because another's curve has a bump there."""
    rows = []
    for method, g in df.groupby("method"):
        x, y = g[saved_col].to_numpy(float), np.log(g.ppl.to_numpy(float))
        keep = lower_hull(x, y) if hull else np.argsort(x, kind="stable")
        x, y = x[keep], y[keep]
        for s in levels:
            ok = x.min() - 1e-9 <= s <= x.max() + 1e-9
            rows.append({"method": method, "net_saved": s, "ppl": float(np.exp(np.interp(s, x, y))) if ok else float("nan")})
    return pd.DataFrame(rows)


def anchored(table: pd.DataFrame) -> pd.DataFrame:
    """Every method can fall back to the full model, so the full model's row anchors each method's
    curve at 0 % saved; the full model's own row is left out."""
    parts = [table] + [table[table.method == "full"].assign(method=m) for m in table.method.unique() if m != "full"]
    out = pd.concat(parts)
    return out[out.method != "full"]


def equal_saving_tables(table: pd.DataFrame, levels: Sequence[float]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Perplexity [method x level] interpolated between each method's points, and on each method's
    lower convex hull (both anchored at the full model)."""
    rows = anchored(table)
    at_levels = ppl_at_saving(rows, list(levels)).pivot(index="method", columns="net_saved", values="ppl")
    on_hull = ppl_at_saving(rows, list(levels), hull=True).pivot(index="method", columns="net_saved", values="ppl")
    return at_levels, on_hull


def wins(at_levels: pd.DataFrame, on_hull: pd.DataFrame, learned=("anee_rl", "anee_warmstart"),
         others=("anee_heuristic", "block_influence")) -> dict[str, int]:
    """At how many levels each learned controller's perplexity is below each other method's."""
    return {f"{a}_beats_{b}_levels{suffix}": int((levels.loc[a] < levels.loc[b]).sum())
            for suffix, levels in (("", at_levels), ("_hull", on_hull))
            for a in learned for b in others if a in levels.index and b in levels.index}


def controller_overhead(table: pd.DataFrame, method: str = "anee_heuristic_every_layer") -> float:
    """A method's mean per-token overhead as a fraction of full layer compute (realized fraction minus net saving)."""
    rows = table[table.method == method]
    return float(((1 - rows.layer_fraction) - rows.layer_saved_net).mean())


def headroom_table(ctx: EvalContext, test_ids: torch.Tensor, window: int, tokens: int, levels: Sequence[float],
                   overhead: float) -> pd.DataFrame:
    """Hindsight bound at each net-saving level on the first `tokens` test tokens (windows of
    `window`): static Block-Influence removal against an oracle that gives every token its own
    number of skipped layers, free and paying the K/V-only path plus `overhead` per token."""
    L = ctx.adapter.num_layers
    order = removal_order(ctx.extras["block_influence"])
    windows = [test_ids[:, i : i + window] for i in range(0, tokens - window + 1, window)]
    profiles = skip_profiles(ctx.executor, windows, order, list(range(0, round(0.45 * L))))
    kv = ctx.cost.kv_fraction(torch.arange(1, window + 1, dtype=torch.float64))
    return pd.DataFrame([
        {"net_saved": s, "static_block_influence_ppl": static_ppl(profiles, s * L),
         "oracle_ppl_no_costs": oracle_ppl(profiles, oracle_allocation(profiles, L, s, 0.0)),
         "oracle_ppl_with_costs": oracle_ppl(profiles, oracle_allocation(profiles, L, s, kv, overhead)),
         "kv_fraction_of_layer": kv, "controller_overhead": overhead, "tokens": profiles.kl.shape[1]}
        for s in levels])
