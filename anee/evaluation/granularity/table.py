"""Notebook 08's one table: every strategy as a row with both cost units, plus its summary.

`rel_energy` is the row's cost in the unit its budget is expressed in (`energy_unit`): weight bytes
for quantised and precision-switching strategies, MACs otherwise. `quality_rel_fp32` divides a
perplexity by the fp32 model's on the same windows; rows imported from notebook 06 use 06's own
full-model row instead, since they were measured on 06's windows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ...granularity.quantize import WeightBank
from .strategies import WindowScores

COLUMNS = ["granularity", "strategy", "setting", "energy_unit", "budget", "rel_energy", "rel_macs", "rel_bytes",
           "quality_metric", "quality", "quality_rel_fp32", "source"]
GRANULARITIES = ("coarse", "medium", "fine", "anee")
BYTES = "weight bytes"
# 06 methods that notebook 08 runs itself on its own windows: not imported twice
BASELINES06 = frozenset({"full", "block_influence", "logit_lens", "anee_budget"})
SOURCE06 = "06_frontier.csv (06's windows)"


def lm_row(strategy: str, granularity: str, setting: str, unit: str, scores: WindowScores, bank: WeightBank, budget: float | None = None) -> dict:
    """One LM strategy row; `rel_energy` is its bytes if `unit` is weight bytes, else its MACs."""
    r = {"strategy": strategy, "granularity": granularity, "setting": setting, "energy_unit": unit,
         "budget": budget, "rel_macs": scores.rel_macs(), "rel_bytes": scores.rel_bytes(bank),
         "quality_metric": "ppl", "quality": scores.ppl, "source": "08"}
    r["rel_energy"] = r["rel_bytes"] if unit == BYTES else r["rel_macs"]
    return r


def selector_rows(sel_table: pd.DataFrame) -> list[dict]:
    """Rows of the coarse selectors (their budgets are in weight bytes)."""
    return [{"strategy": f"select {r.selector}", "granularity": "coarse", "setting": f"budget={r.budget}",
             "energy_unit": BYTES, "budget": r.budget, "rel_macs": r.rel_macs, "rel_bytes": r.rel_bytes,
             "quality_metric": "ppl", "quality": r.ppl, "source": "08", "rel_energy": r.rel_bytes}
            for _, r in sel_table.iterrows()]


def branchynet_rows(bn_table: pd.DataFrame) -> list[dict]:
    """Rows of the BranchyNet threshold sweep (accuracy, CNN MACs; no byte count)."""
    return [{"strategy": "BranchyNet (digits)", "granularity": "medium", "setting": f"thr={r.threshold}",
             "energy_unit": "MACs (CNN)", "budget": None, "rel_macs": r.rel_macs, "rel_bytes": np.nan,
             "quality_metric": "accuracy", "quality": r.accuracy, "source": "08", "rel_energy": r.rel_macs}
            for _, r in bn_table.iterrows()]


def frontier06_rows(path: Path) -> list[dict]:
    """Rows of `06_frontier.csv` beyond 08's own baselines; none if the file is missing or has no full-model row."""
    if not path.is_file():
        return []
    f06 = pd.read_csv(path)
    if not ({"method", "ppl", "total_saved_net"} <= set(f06.columns) and (f06.method == "full").any()):
        return []
    full06 = float(f06.loc[f06.method == "full", "ppl"].iloc[0])
    rows = []
    for _, r in f06[~f06.method.isin(BASELINES06)].iterrows():
        setting = "" if pd.isna(r.get("setting")) else str(r.get("setting"))
        rows.append({"strategy": f"06 {r['method']}", "granularity": "06", "setting": setting,
                     "energy_unit": "MACs", "budget": None, "rel_macs": 1 - r["total_saved_net"],
                     "rel_bytes": np.nan, "quality_metric": "ppl", "quality": r["ppl"],
                     "quality_rel_fp32": r["ppl"] / full06, "source": SOURCE06,
                     "rel_energy": 1 - r["total_saved_net"]})
    return rows


def granularity_table(
    *,
    bank: WeightBank,
    pool_test: Mapping[str, WindowScores],
    sel_table: pd.DataFrame,
    exit_checks: Sequence[int],
    exit_scores: Mapping[float, WindowScores],
    seg_scores: Mapping[float, WindowScores],
    prog_scores: Mapping[float, tuple[WindowScores, float, float]],
    anee_scores: Mapping[float, WindowScores],
    anee_name: str = "ANEE budget",
    bn_table: pd.DataFrame,
    frontier06: Path,
) -> pd.DataFrame:
    """All strategies in `COLUMNS` order: pool, selectors, LM exit, segment, progressive, ANEE, BranchyNet, 06.

    `pool_test` must hold an "fp32" variant: 08's perplexities are divided by its perplexity.
    `prog_scores` maps a budget to (scores, refined fraction, threshold).
    """
    rows = [lm_row(f"variant {n}", "coarse", n, BYTES, sc, bank) for n, sc in pool_test.items()]
    rows += selector_rows(sel_table)
    rows += [lm_row("LM entropy exit", "medium", f"checks={exit_checks},thr={thr}", "MACs", sc, bank)
             for thr, sc in exit_scores.items()]
    rows += [lm_row("segment precision", "fine", f"budget={b}", BYTES, sc, bank, budget=b) for b, sc in seg_scores.items()]
    rows += [lm_row("progressive INT4->INT8", "fine", f"budget={b},refined={frac:.2f}", BYTES, sc, bank, budget=b)
             for b, (sc, frac, _thr) in prog_scores.items()]
    rows += [lm_row(anee_name, "anee", f"budget={b}", "MACs (total; budget is layer compute)", sc, bank, budget=b)
             for b, sc in anee_scores.items()]
    rows += branchynet_rows(bn_table)
    rows += frontier06_rows(frontier06)
    table = pd.DataFrame(rows)
    own_ppl = (table.quality_metric == "ppl") & (table.source == "08")
    table.loc[own_ppl, "quality_rel_fp32"] = table.loc[own_ppl, "quality"] / pool_test["fp32"].ppl
    return table[COLUMNS]


def cheapest_within(table: pd.DataFrame, fp32_ppl: float, tol: float = 0.05) -> dict[str, dict | None]:
    """Per granularity, the LM row with the fewest weight bytes whose perplexity is within `tol` of fp32 (None if none)."""
    lm = table[table.quality_metric == "ppl"]
    best = {}
    for gran in GRANULARITIES:
        g = lm[(lm.granularity == gran) & (lm.quality <= fp32_ppl * (1 + tol))]
        best[gran] = None if g.empty else g.sort_values("rel_bytes").iloc[0][["strategy", "setting", "rel_bytes", "rel_macs", "quality"]].to_dict()
    return best


def granularity_summary(table: pd.DataFrame, fp32_ppl: float, segment_sensitivity: Sequence[float], bn_epochs: int) -> dict:
    """The `08_summary` record: fp32 perplexity, cheapest strategy within 5 % per granularity, run settings."""
    return {"fp32_ppl": fp32_ppl, "cheapest_within_5pct_of_fp32_by_bytes": cheapest_within(table, fp32_ppl, tol=0.05),
            "segment_sensitivity": segment_sensitivity, "bn_epochs": bn_epochs}


def describe_best(best: Mapping[str, dict | None], tol: float = 0.05) -> list[str]:
    """One printable line per granularity of a `cheapest_within` result."""
    return [f"{gran:7s} " + (f"none within {tol:.0%} of fp32" if b is None else
            f"{b['strategy']} {b['setting']}: bytes {b['rel_bytes']:.3f}, MACs {b['rel_macs']:.3f}, ppl {b['quality']:.1f}")
            for gran, b in best.items()]
