"""Notebook 05's evaluation: perplexity + realized routing on test, its tables, wall-clock timing, and
the causality check.

Perplexity uses `anee.evaluation.perplexity.evaluate` (token-weighted sliding windows); the thresholds are always
calibrated on validation windows passed in by the caller, never on the test tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..core.outputs import HierarchicalOutput, MethodOutput
from ..core.timing import interleaved_seconds
from ..hierarchical import HierarchicalModel
from .perplexity import evaluate


@dataclass
class SettingResult:
    row: dict  # one row of the capacity / exit tables
    ffn_usage: torch.Tensor  # [L] realized FFN fraction per layer (processed tokens) on test
    allocated: torch.Tensor  # [L] per-layer capacities the thresholds were calibrated for
    exit_depths: torch.Tensor  # [N] layers run per test token (L = no exit)
    thresholds: torch.Tensor  # [L]


def evaluate_setting(model: HierarchicalModel, test_ids: torch.Tensor, calib: torch.Tensor, capacity: float = 1.0,
                     exits: bool = False, exit_threshold: float = 0.5, window: int = 256, stride: int = 256,
                     label: str = "") -> SettingResult:
    """Calibrate on `calib` [N, T] (validation windows), then score `test_ids` [1, M] with the sparse path."""
    thresholds = model.calibrate(calib, capacity, exits, exit_threshold)
    routed = capacity < 1.0
    outs: list[HierarchicalOutput] = []

    def run(ids):
        out = model.sparse_forward(ids, thresholds if routed else None, exits, exit_threshold)
        outs.append(out)
        return MethodOutput(out.logits, model.cost_report(out, routed=routed))

    res = evaluate(run, test_ids, window, stride, name="hierarchical", setting=label)
    ffn = sum(o.ffn.sum((0, 1)).double() for o in outs)
    act = sum(o.active.sum((0, 1)).double() for o in outs)
    depths = torch.cat([o.exit_depth.flatten() for o in outs])
    L = model.num_layers
    row = {
        "setting": label, "capacity": capacity, "exits": exits, "lens": "tuned" if model.tuned_lens else "logit",
        "ppl": res.ppl, "tokens": res.tokens,
        "realized_capacity": float(ffn.sum() / act.sum()),
        "layer_saved_net": res.layer_saved_net, "total_saved_net": res.total_saved_net,
        "layer_speedup": 1 / (1 - res.layer_saved_net), "compute_speedup": 1 / (1 - res.total_saved_net),
        "exited_fraction": float((depths < L).double().mean()), "mean_depth": float(depths.double().mean()),
    }
    return SettingResult(row, ffn / act.clamp_min(1), model.layer_capacities(capacity), depths, thresholds)


# The seed's claims on TinyLlama-1.1B (speedup, perplexity increase) per capacity, quoted beside ours.
SEED_CLAIMS = {0.9: ("1.1x", "<1 %"), 0.7: ("1.3x", "~3 %"), 0.55: ("1.6x", "~8 %"), 0.4: ("1.8x", "~12 %")}
CAPACITY_COLUMNS = ["capacity", "realized_capacity", "ppl", "ppl_increase_pct", "compute_speedup", "layer_speedup",
                    "seed_speedup_tinyllama", "seed_ppl_increase_tinyllama", "tokens"]
EXIT_COLUMNS = ["variant", "capacity", "realized_capacity", "exited_fraction", "mean_depth", "ppl", "ppl_increase_pct",
                "compute_speedup"]


def capacity_table(reference: SettingResult, results: dict[float, SettingResult]) -> pd.DataFrame:
    """One row per capacity (the reference, capacity 1.0, first): perplexity and its increase over
    the reference, realized capacity, compute speedups, and the seed's claims beside them."""
    rows = []
    for c, r in [(1.0, reference), *results.items()]:
        row = dict(r.row)
        row["ppl_increase_pct"] = 100 * (row["ppl"] / reference.row["ppl"] - 1)
        row["seed_speedup_tinyllama"], row["seed_ppl_increase_tinyllama"] = SEED_CLAIMS.get(
            c, ("1.0x", "0 %") if c == 1.0 else ("n/a", "n/a"))
        rows.append(row)
    return pd.DataFrame(rows)[CAPACITY_COLUMNS]


def exit_table(results: dict[str, SettingResult], reference_ppl: float) -> pd.DataFrame:
    """One row per exit variant: realized capacity, exits, depth, perplexity (and increase), speedup."""
    table = pd.DataFrame([dict(r.row, variant=k) for k, r in results.items()])
    table["ppl_increase_pct"] = 100 * (table.ppl / reference_ppl - 1)
    return table[EXIT_COLUMNS]


@torch.no_grad()
def timing_table(base: torch.nn.Module, model: HierarchicalModel, ids: torch.Tensor,
                 thresholds: dict[float, torch.Tensor],
                 rounds: int) -> pd.DataFrame:
    """Wall-clock of the sparse inference path on ids [B, T] at each capacity (its `thresholds`) and
    at capacity 1.0, against the plain HF forward, timed in interleaved rounds (minimum over rounds)."""
    fns = {"hf": lambda: base(ids), 1.0: lambda: model.sparse_forward(ids, None)}
    fns.update({c: (lambda t: lambda: model.sparse_forward(ids, t))(thr) for c, thr in thresholds.items()})
    best = interleaved_seconds(fns, rounds=rounds)
    table = pd.DataFrame([{"capacity": c, "seconds": best[c], "hf_seconds": best["hf"]} for c in [1.0, *thresholds]])
    table["wallclock_speedup_vs_hf"] = table.hf_seconds / table.seconds
    table["wallclock_speedup_vs_own_full"] = best[1.0] / table.seconds
    table["threads"] = torch.get_num_threads()
    return table


@torch.no_grad()
def causality_check(model: HierarchicalModel, ids: torch.Tensor, thresholds: torch.Tensor, length: int = 128) -> dict:
    """Replace the second half of a window of `length` tokens of ids [1, >= 1.5 length] with other
    text: with threshold routing and exits, no decision and no logit of the first half may change."""
    half = length // 2
    a_ids = ids[:, :length]
    b_ids = torch.cat([a_ids[:, :half], ids[:, length : length + half]], 1)
    a = model.sparse_forward(a_ids, thresholds, exits=True)
    b = model.sparse_forward(b_ids, thresholds, exits=True)
    return {
        "first_half_ffn_identical": bool(torch.equal(a.ffn[:, :half], b.ffn[:, :half])),
        "first_half_exits_identical": bool(torch.equal(a.exit_depth[:, :half], b.exit_depth[:, :half])),
        "first_half_max_logit_diff": float((a.logits[:, :half] - b.logits[:, :half]).abs().max()),
        "second_half_decisions_changed": bool(not torch.equal(a.ffn[:, half:], b.ffn[:, half:])),
    }
