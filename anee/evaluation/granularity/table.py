"""Notebook 08's one table: every strategy as a row with both cost units, plus its summary.

`rel_energy` is the row's cost in the unit its budget is expressed in (`energy_unit`): weight bytes
for quantised and precision-switching strategies, MACs otherwise. `quality_rel_fp32` divides a
perplexity by the fp32 model's on the same windows; rows imported from notebook 06 use 06's own
full-model row instead, since they were measured on 06's windows.

The quality table holds no timings (reruns compare it exactly); `decode_plan` says, for the same
rows, how each decodes, and `anee.evaluation.granularity.speed` measures that into its own file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ...granularity.quantize import WeightBank
from ..frontier import full_model_ppl
from .pool import Choices
from .speed import Decode, Mix, Plan
from .strategies import WindowScores

COLUMNS = ["granularity", "strategy", "setting", "energy_unit", "budget", "rel_energy", "rel_macs", "rel_bytes",
           "quality_metric", "quality", "quality_rel_fp32", "source"]
GRANULARITIES = ("coarse", "medium", "fine", "anee")
BYTES = "weight bytes"
# 06 methods that notebook 08 runs itself on its own windows: not imported twice
BASELINES06 = frozenset({"full", "block_influence", "logit_lens", "anee_budget"})
SOURCE06 = "06_frontier.csv (06's windows)"


def lm_row(strategy: str, granularity: str, setting: str, unit: str, scores: WindowScores, bank: WeightBank,
           budget: float | None = None) -> dict:
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
    full06 = full_model_ppl(f06)
    rows = []
    for _, r in f06[~f06.method.isin(BASELINES06)].iterrows():
        setting = "" if pd.isna(r.get("setting")) else str(r.get("setting"))
        rows.append({"strategy": f"06 {r['method']}", "granularity": "06", "setting": setting,
                     "energy_unit": "MACs", "budget": None, "rel_macs": 1 - r["total_saved_net"],
                     "rel_bytes": np.nan, "quality_metric": "ppl", "quality": r["ppl"],
                     "quality_rel_fp32": r["ppl"] / full06, "source": SOURCE06,
                     "rel_energy": 1 - r["total_saved_net"]})
    return rows


def selector_decode(chosen: Sequence[str], pool_test: Mapping[str, WindowScores]) -> Mix | None:
    """A selector's decode: the pool variants it chose, weighted by the tokens of their windows."""
    tokens = {}
    for w, name in enumerate(chosen):
        tokens[name] = tokens.get(name, 0.0) + float(pool_test[name].tokens[w])
    if any(pool_test[n].decode is None for n in tokens):
        return None
    total = sum(tokens.values())
    return Mix(tuple((t / total, pool_test[n].decode) for n, t in tokens.items()))


def _rows(
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
    kernel_seg_scores: Mapping[float, WindowScores] | None = None,
    anee_int8_scores: Mapping[float, WindowScores] | None = None,
    choices: Choices | None = None,
) -> list[tuple[dict, Decode | Mix | None]]:
    """Every row with its decode, in table order."""
    rows = [(lm_row(f"variant {n}", "coarse", n, BYTES, sc, bank), sc.decode) for n, sc in pool_test.items()]
    rows += [(r, None if choices is None
              else selector_decode(choices[(r["strategy"][len("select "):], r["budget"])], pool_test))
             for r in selector_rows(sel_table)]
    rows += [(lm_row("LM entropy exit", "medium", f"checks={exit_checks},thr={thr}", "MACs", sc, bank), sc.decode)
             for thr, sc in exit_scores.items()]
    rows += [(lm_row("segment precision", "fine", f"budget={b}", BYTES, sc, bank, budget=b), sc.decode)
             for b, sc in seg_scores.items()]
    rows += [(lm_row("segment precision (INT8 kernels)", "fine", f"budget={b}", BYTES, sc, bank, budget=b), sc.decode)
             for b, sc in (kernel_seg_scores or {}).items()]
    rows += [(lm_row("progressive INT4->INT8", "fine", f"budget={b},refined={frac:.2f}", BYTES, sc, bank, budget=b),
              sc.decode)
             for b, (sc, frac, _thr) in prog_scores.items()]
    for name, scores in ((anee_name, anee_scores), (f"{anee_name} + INT8 kernels", anee_int8_scores or {})):
        rows += [(lm_row(name, "anee", f"budget={b}", "MACs (total; budget is layer compute)", sc, bank, budget=b),
                  sc.decode)
                 for b, sc in scores.items()]
    rows += [(r, None) for r in branchynet_rows(bn_table) + frontier06_rows(frontier06)]
    return rows


def granularity_table(**parts) -> pd.DataFrame:
    """All strategies in `COLUMNS` order: pool, selectors, LM exit, segment (fake-quant, then INT8
    kernels), progressive, ANEE (fp32, then INT8 kernels: budget x precision), BranchyNet, 06.

    Keyword arguments: `bank`, `pool_test`, `sel_table`, `exit_checks`, `exit_scores`, `seg_scores`,
    `prog_scores`, `anee_scores`, `anee_name`, `bn_table`, `frontier06`, and optionally
    `kernel_seg_scores`, `anee_int8_scores`, `choices` (the selectors' picks, for `decode_plan`).
    `pool_test` must hold an "fp32" variant: 08's perplexities are divided by its perplexity.
    `prog_scores` maps a budget to (scores, refined fraction, threshold).
    """
    pool_test = parts["pool_test"]
    table = pd.DataFrame([row for row, _ in _rows(**parts)])
    own_ppl = (table.quality_metric == "ppl") & (table.source == "08")
    table.loc[own_ppl, "quality_rel_fp32"] = table.loc[own_ppl, "quality"] / pool_test["fp32"].ppl
    return table[COLUMNS]


def decode_plan(**parts) -> Plan:
    """How each row of `granularity_table(**parts)` decodes, keyed by (strategy, setting)."""
    return {(row["strategy"], row["setting"]): decode for row, decode in _rows(**parts)}


def cheapest_within(table: pd.DataFrame, fp32_ppl: float, tol: float = 0.05) -> dict[str, dict | None]:
    """Per granularity, the LM row with the fewest weight bytes whose perplexity is within `tol` of fp32
    (None if none)."""
    lm = table[table.quality_metric == "ppl"]
    best = {}
    for gran in GRANULARITIES:
        g = lm[(lm.granularity == gran) & (lm.quality <= fp32_ppl * (1 + tol))]
        best[gran] = None if g.empty else g.sort_values("rel_bytes").iloc[0][["strategy", "setting", "rel_bytes",
                                                                              "rel_macs", "quality"]].to_dict()
    return best


def granularity_summary(table: pd.DataFrame, fp32_ppl: float, segment_sensitivity: Sequence[float],
                        bn_epochs: int) -> dict:
    """The `08_summary` record: fp32 perplexity, cheapest strategy within 5 % per granularity, run settings."""
    return {"fp32_ppl": fp32_ppl, "cheapest_within_5pct_of_fp32_by_bytes": cheapest_within(table, fp32_ppl, tol=0.05),
            "segment_sensitivity": segment_sensitivity, "bn_epochs": bn_epochs}


def describe_best(best: Mapping[str, dict | None], tol: float = 0.05) -> list[str]:
    """One printable line per granularity of a `cheapest_within` result."""
    return [f"{gran:7s} " + (f"none within {tol:.0%} of fp32" if b is None else
            f"{b['strategy']} {b['setting']}: bytes {b['rel_bytes']:.3f}, MACs {b['rel_macs']:.3f}, "
            f"ppl {b['quality']:.1f}")
            for gran, b in best.items()]
