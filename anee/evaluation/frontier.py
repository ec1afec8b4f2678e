"""Notebook 06's frontier: the evaluation context, the method grid, perplexity at equal net savings
(interpolated, and on each method's lower convex hull), and the hindsight-headroom table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..core.adapters import adapter_for
from ..core.bypass import BypassBank
from ..core.data import wikitext_tokens
from ..engine.defaults import BYPASS_FILE, PROFILER_FILE  # notebook 02's files, named as in the shipped defaults
from ..engine.executor import AdaptiveExecutor
from ..engine.importance import removal_order
from ..engine.prefix_memo import shared_prefixes
from ..engine.profiler import Profiler
from ..engine.training.oracle import oracle_allocation, oracle_ppl, skip_profiles, static_ppl
from .context import EvalContext
from .methods import build_method
from .methods.baselines import static_removal
from .methods.controllers import get_profiler
from .notebook import pick
from .perplexity import evaluate
from .results import output_dir
from .seeds import summarize, verdict

LINEAR_CLOSED_FORM_FILE = "bypass_linear_closed_form.safetensors"  # notebook 02's untuned linear map (an ablation)


def frontier_windows(profile: str) -> tuple[int, int, int]:
    """(test tokens, window, stride) of notebook 06's frontier in `profile`: the first tokens of the
    WikiText-2 test split (full profile: four non-overlapping windows of 512, half the 4,096 tokens of
    earlier runs, to keep `make reproduce` near its hour). Notebook 09's API check and the INT8
    benchmark score the full profile's."""
    return pick(profile, quick=(512, 256, 128), full=(2048, 512, 512))


def load_bypass(checkpoint_dir: Path, adapter, file: str = BYPASS_FILE) -> BypassBank | None:
    """A layer bypass notebook 02 wrote to the checkpoint folder (None when it has not run)."""
    path = Path(checkpoint_dir) / file
    return BypassBank.from_checkpoint(path, adapter.dims.hidden, adapter.num_layers) if path.is_file() else None


def trained_engine(checkpoint_dir: Path, adapter) -> tuple[AdaptiveExecutor, Profiler]:
    """The executor with notebook 02's layer bypass (the identity when it has not run) and the profiler
    notebook 02 calibrated, as the notebooks after 02 load them from a profile's checkpoint folder."""
    executor = AdaptiveExecutor(adapter, bypass=load_bypass(checkpoint_dir, adapter))
    return executor, Profiler.from_checkpoint(Path(checkpoint_dir) / PROFILER_FILE, executor)


def frontier_context(model, tokenizer, profile: str, calibration_tokens: int = 4096,
                     min_layers: int = 0) -> EvalContext:
    """EvalContext with valid-split calibration tokens, the profile's checkpoint folder and, when
    notebook 02 has written it, an executor with its layer bypass."""
    adapter = adapter_for(model)
    executor = AdaptiveExecutor(adapter, min_layers=min_layers)
    calibration = wikitext_tokens(tokenizer, "valid", calibration_tokens)
    checkpoints = output_dir("results", profile) / "checkpoints"
    bypass = load_bypass(checkpoints, adapter)
    return EvalContext(model, tokenizer, executor, calibration,
                       extras={"checkpoint_dir": checkpoints, "profile": profile},
                       bypass_executor=None if bypass is None
                       else AdaptiveExecutor(adapter, min_layers=min_layers, bypass=bypass))


def method_label(name: str, setting: dict) -> str:
    """A frontier row's method: the registry name, "+bypass" when its skipped layers run the bypass."""
    return f"{name}+bypass" if setting.get("bypass") else name


def extra_specs(ctx: EvalContext, budgets=(0.9, 0.8, 0.7, 0.6), planned_budgets=None,
                seeds=(0,)) -> list[tuple[str, dict]]:
    """Rows contributed by the ANEE controllers (02-04, the KL-profile controller fitted in 03) and
    the hierarchical model (05). Their checkpoints must exist in the profile's checkpoint folder:
    run those notebooks first. The planned controllers are cheap to evaluate, so they may get a
    denser grid (`planned_budgets`); the learned ones and the hierarchical model run once per
    training seed. The heuristic runs with and without the layer bypass, the learned controllers
    with the bypass they were trained with."""
    planned = planned_budgets or budgets
    with_bypass = ctx.bypass_executor is not None
    specs = [("anee_heuristic", {"budget": b}) for b in planned]
    if with_bypass:
        specs += [("anee_heuristic", {"budget": b, "bypass": True}) for b in planned]
    for m in ("anee_warmstart", "anee_warmstart_profiler_only", "anee_rl"):
        specs += [(m, {"budget": b, "seed": s, "bypass": with_bypass}) for s in seeds for b in planned]
    specs += [("anee_kl_profile", {"budget": b, "bypass": with_bypass}) for b in planned]
    specs += [("anee_heuristic_every_layer", {"budget": b}) for b in budgets]
    specs += [("hierarchical", {"capacity": c, "exits": False, "seed": s}) for s in seeds for c in (0.9, 0.7)]
    specs += [("hierarchical", {"capacity": 0.9, "exits": True, "seed": seeds[0]})]
    return specs


def run_frontier(ctx: EvalContext, specs: list[tuple[str, dict]], ids: torch.Tensor, window: int, stride: int,
                 progress: bool = False) -> pd.DataFrame:
    """Evaluate every (method name, setting) pair on the same windows: one row per pair, with the
    method's label (`method_label`) and its training seed (-1 for a method that trains nothing). A
    method with the `signature` of one scored before (the same computation, e.g. static removal of the
    same layers) gets that one's numbers without running again."""
    rows, scored = [], {}
    with shared_prefixes(ctx.executor, ctx.bypass_executor):  # the layers every setting processes run once per window
        for name, setting in specs:
            method = build_method(name, ctx, **setting)
            label = method_label(name, setting)
            text = ",".join(f"{k}={v}" for k, v in setting.items() if k not in ("seed", "bypass"))
            signature = getattr(method, "signature", None)
            result = scored.get(signature) if signature is not None else None
            if result is None:
                result = evaluate(method, ids, window, stride, name=label, progress=progress)
                if signature is not None:
                    scored[signature] = result
            rows.append({**result.row(), "method": label, "setting": text, "seed": int(setting.get("seed", -1))})
    table = pd.DataFrame(rows)
    return table[["method", "setting", "seed"] + [c for c in table.columns if c not in ("method", "setting", "seed")]]


def levels_on_text(ctx: EvalContext, specs: list[tuple[str, dict]], ids: torch.Tensor, window: int, stride: int,
                   levels: Sequence[float]) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """`specs` (which must include ("full", {})) on another text `ids`: (the `run_frontier` table, its
    interpolated perplexity at `levels` per method as `equal_saving_tables` gives it, the full model's
    perplexity there)."""
    if ("full", {}) not in specs:
        raise ValueError('levels_on_text needs ("full", {}) among the specs: the ratios are to the full model')
    table = run_frontier(ctx, specs, ids, window, stride)
    at_levels, _, _ = equal_saving_tables(table, levels)
    return table, at_levels, full_model_ppl(table)


def full_model_ppl(table: pd.DataFrame) -> float:
    """The full model's perplexity in a `run_frontier` table (its one "full" row), the reference of every ratio."""
    full = table.loc[table.method == "full", "ppl"]
    if len(full) != 1:
        raise ValueError(f'the table needs exactly one row of method "full" (the reference), found {len(full)}: '
                         f'add ("full", {{}}) to the specs')
    return float(full.iloc[0])


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


def ppl_at_saving(df: pd.DataFrame, levels: list[float], saved_col: str = "layer_saved_net",
                  hull: bool = False) -> pd.DataFrame:
    """Perplexity of each method (and seed, when the table has a `seed` column) at the given net
    savings, interpolating log-ppl linearly between evaluated settings (NaN outside the evaluated
    range). With `hull=True` only the points on each method's lower convex hull are used: every
    method may time-share two of its operating points, so no method wins at a level merely because
    another's curve has a bump there."""
    keys = ["method", "seed"] if "seed" in df.columns else ["method"]
    rows = []
    for key, g in df.groupby(keys, sort=False):
        key = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        x, y = g[saved_col].to_numpy(float), np.log(g.ppl.to_numpy(float))
        keep = lower_hull(x, y) if hull else np.argsort(x, kind="stable")
        x, y = x[keep], y[keep]
        for s in levels:
            ok = x.min() - 1e-9 <= s <= x.max() + 1e-9
            rows.append({**key, "net_saved": s, "ppl": float(np.exp(np.interp(s, x, y))) if ok else float("nan")})
    return pd.DataFrame(rows)


def anchored(table: pd.DataFrame) -> pd.DataFrame:
    """Every method can fall back to the full model, so the full model's row anchors each method's
    curve (each seed's) at 0 % saved; the full model's own row is left out."""
    full = table[table.method == "full"]
    runs = table[table.method != "full"]
    keys = ["method", "seed"] if "seed" in table.columns else ["method"]
    groups = runs.groupby(keys, sort=False).groups
    parts = [runs] + [full.assign(**dict(zip(keys, k if isinstance(k, tuple) else (k,)))) for k in groups]
    return pd.concat(parts, ignore_index=True)


def equal_saving_tables(table: pd.DataFrame,
                        levels: Sequence[float]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Perplexity at each net-saving level, interpolated between each method's points and on each
    method's lower convex hull (both anchored at the full model): one wide table each (a row per
    method: the mean over seeds at each level, `<level>_std` beside it, `n_seeds`), and every
    seed's values (long, `curve` = "interpolated" or "hull")."""
    rows = anchored(table)
    runs = pd.concat([ppl_at_saving(rows, list(levels)).assign(curve="interpolated"),
                      ppl_at_saving(rows, list(levels), hull=True).assign(curve="hull")], ignore_index=True)

    def wide(curve: str) -> pd.DataFrame:
        summary = summarize(runs[runs.curve == curve], ["method", "net_saved"], ["ppl"])
        out = {}
        for level in levels:
            part = summary[summary.net_saved == level].set_index("method")
            out[f"{level:g}"], out[f"{level:g}_std"] = part.ppl, part.ppl_std
        result = pd.DataFrame(out)
        result["n_seeds"] = summary.groupby("method", sort=False).n_seeds.max()
        result.index.name = "method"
        return result

    return wide("interpolated"), wide("hull"), runs


def comparisons(levels_table: pd.DataFrame, pairs: Sequence[tuple[str, str]], levels: Sequence[float]) -> pd.DataFrame:
    """For each (a, b) pair present in `levels_table` (a wide table of `equal_saving_tables`) and each
    level: both means and spreads and the verdict ("a", "b" or "tie", `anee.evaluation.seeds.verdict`)."""
    rows = []
    for a, b in pairs:
        if a not in levels_table.index or b not in levels_table.index:
            continue
        ra, rb = levels_table.loc[a], levels_table.loc[b]
        for level in levels:
            col = f"{level:g}"
            rows.append({"a": a, "b": b, "net_saved": level, "a_ppl": ra[col], "a_std": ra[f"{col}_std"],
                         "b_ppl": rb[col], "b_std": rb[f"{col}_std"],
                         "verdict": verdict(ra[col], ra[f"{col}_std"], rb[col], rb[f"{col}_std"])})
    return pd.DataFrame(rows, columns=["a", "b", "net_saved", "a_ppl", "a_std", "b_ppl", "b_std", "verdict"])


WORDS = {"a": "better", "b": "worse", "tie": "a tie", "n/a": "n/a"}


def ratio_to_full(at_levels: pd.DataFrame, full_ppl: float, levels: Sequence[float]) -> pd.DataFrame:
    """Perplexity at each level (columns "0.1", ...) as a multiple of the full model's, per method."""
    return at_levels[[f"{x:g}" for x in levels]] / full_ppl


def findings(verdicts: pd.DataFrame, at_levels: pd.DataFrame, full_ppl: float, levels: Sequence[float],
             curve: str = "interpolated") -> dict:
    """What the README states, in words, from the comparisons: for each pair "a_vs_b" the verdict of
    a against b at each level joined by " / " ("better", "worse", "a tie": differences within the
    larger seed spread are ties); and each method's perplexity as a multiple of the full model's."""
    out: dict = {}
    for (a, b), g in verdicts[verdicts.curve == curve].groupby(["a", "b"], sort=False):
        words = [WORDS[v] for v in g.sort_values("net_saved").verdict]
        out[f"{a}_vs_{b}"] = " / ".join(words)
    cols = [f"{x:g}" for x in levels]
    ratios = ratio_to_full(at_levels, full_ppl, levels)
    out["ratio_to_full"] = {m: [round(float(v), 3) for v in ratios.loc[m]] for m in ratios.index}
    anee = ratios[ratios.index.str.startswith("anee_")]
    out["best_anee_method"] = {c: str(anee[c].idxmin()) if anee[c].notna().any() else "n/a" for c in cols}
    out["best_anee_ratio_to_full"] = {c: round(float(anee[c].min()), 3) for c in cols}
    return out


def bypass_ablation(ctx: EvalContext, banks: dict[str, BypassBank | None], n_removed: int, ids: torch.Tensor,
                    window: int, stride: int) -> pd.DataFrame:
    """Static removal of the `n_removed` lowest-Block-Influence layers with each bypass of `banks`
    (label -> bank, None: the identity) on the same windows: perplexity, its ratio to the identity's,
    and the net saving (each bypass charged)."""
    removed = removal_order(ctx.extras["block_influence"])[:n_removed]
    rows = []
    for label, bank in banks.items():
        executor = AdaptiveExecutor(ctx.adapter, bypass=bank)
        r = evaluate(static_removal(executor, removed), ids, window, stride, name=label)
        rows.append({"bypass": label, "n_removed": n_removed, "macs_per_bypass": executor.cost.bypass, "ppl": r.ppl,
                     "layer_saved_net": r.layer_saved_net})
    table = pd.DataFrame(rows)
    table["ppl_vs_identity"] = table.ppl / table.ppl.iloc[0]
    return table


def controller_overhead(table: pd.DataFrame, method: str = "anee_heuristic_every_layer") -> float:
    """A method's mean per-token overhead as a fraction of full layer compute (realized fraction minus net saving)."""
    rows = table[table.method == method]
    return float(((1 - rows.layer_fraction) - rows.layer_saved_net).mean())


def headroom_table(ctx: EvalContext, test_ids: torch.Tensor, window: int, tokens: int, levels: Sequence[float],
                   overhead: float, bypass: bool = False) -> pd.DataFrame:
    """Hindsight bound at each net-saving level on the first `tokens` test tokens (windows of
    `window`): static removal against an oracle that gives every token its own number of skipped
    layers, free and paying the K/V-only path (and the bypass, `bypass=True`) plus `overhead` per
    token. Both skip nested prefixes of the profiler's removal order, the one the controllers' plans
    drop in (notebook 02's choice), so the bound is on the choice the controllers make."""
    L, executor = ctx.adapter.num_layers, ctx.executor_for(bypass)
    order = get_profiler(ctx, executor).removal_order
    windows = [test_ids[:, i : i + window] for i in range(0, tokens - window + 1, window)]
    profiles = skip_profiles(executor, windows, order, list(range(0, round(0.45 * L))))
    kv = executor.cost.skip_fraction(torch.arange(1, window + 1, dtype=torch.float64))
    return pd.DataFrame([
        {"net_saved": s, "static_ppl": static_ppl(profiles, s * L),
         "oracle_ppl_no_costs": oracle_ppl(profiles, oracle_allocation(profiles, L, s, 0.0)),
         "oracle_ppl_with_costs": oracle_ppl(profiles, oracle_allocation(profiles, L, s, kv, overhead)),
         "skip_fraction_of_layer": kv, "controller_overhead": overhead, "tokens": profiles.kl.shape[1]}
        for s in levels])
