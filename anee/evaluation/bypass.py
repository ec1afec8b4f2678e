"""Notebook 02's bypass study: every family fitted on valid, scored by static removal of the least
important layers at equal net compute, and the choice of the family the later notebooks use.

Net saving of removing k of L layers with a bypass of `f` (its MACs as a fraction of a layer):
k (1 - f) / L, so a dearer bypass has to remove more layers for the same saving; perplexities are
compared at equal net saving by interpolating log-perplexity in k.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..core.bypass import BypassBank, BypassConfig, BypassStats
from ..engine.executor import AdaptiveExecutor
from ..engine.importance import removal_ppl
from ..engine.prefix_memo import PrefixMemo, shared_prefixes
from ..engine.training.bypass import BypassTuneConfig, fit_layer_bypass, tune_bypass_


def net_saving(executor: AdaptiveExecutor, k: float) -> float:
    """Net layer compute saved by removing k layers with this executor's bypass (context-independent)."""
    return k * (1.0 - executor.cost.drop_fraction()) / executor.adapter.num_layers


def ppl_at_net_saving(executor: AdaptiveExecutor, ks: Sequence[int], ppls: Sequence[float], saving: float) -> float:
    """Log-linear interpolation of perplexity at a net saving from removal curves (NaN outside)."""
    x = np.array([net_saving(executor, k) for k in ks])
    if not x.min() - 1e-12 <= saving <= x.max() + 1e-12:
        return float("nan")
    return float(np.exp(np.interp(saving, x, np.log(np.asarray(ppls, dtype=float)))))


def family_rows(label: str, bank: BypassBank, executor: AdaptiveExecutor, splits: dict[str, torch.Tensor],
                order: list[int], ks: Sequence[int], levels: Sequence[float], full: dict[str, float],
                memo: PrefixMemo | None = None, **extra) -> list[dict]:
    """One row per split: the family, its MACs (and as a fraction of a layer), perplexity at each
    removal count and at each net-saving level (`full`: the full model's perplexity per split).
    `memo`: a prefix memo shared with other families' rows on the same windows (same numbers, less work)."""
    rows = []
    memo = memo if memo is not None else PrefixMemo()
    with shared_prefixes(executor, memo=memo):  # the layers before each count's first removed one run once per window
        for split, windows in splits.items():
            ppls = [removal_ppl(executor, windows, order, k) for k in ks]
            row = {"bypass": label, "family": bank.family, "rank": bank.config.rank, "macs": bank.macs,
                   "macs_fraction_of_layer": executor.cost.drop_fraction(), "split": split, **extra}
            row.update({f"ppl_k{k}": p for k, p in zip(ks, ppls)})
            row.update({f"ppl_at_{s:g}": ppl_at_net_saving(executor, [0, *ks], [full[split], *ppls], s)
                        for s in levels})
            rows.append(row)
    return rows


def choose_family(table: pd.DataFrame, level: float, split: str = "valid") -> str:
    """The `bypass` label with the lowest mean perplexity at net saving `level` on `split` (valid:
    the choice never looks at test)."""
    rows = table[table.split == split]
    return str(rows.groupby("bypass")[f"ppl_at_{level:g}"].mean().idxmin())


def tune_and_score(identity: AdaptiveExecutor, stats: list[BypassStats], config: BypassConfig, tune_ids: torch.Tensor,
                   order: list[int], tune: BypassTuneConfig, splits: dict[str, torch.Tensor], ks: Sequence[int],
                   levels: Sequence[float], full: dict[str, float], closed_form: BypassBank | None = None,
                   memo: PrefixMemo | None = None) -> tuple[BypassBank, list[dict], list[dict]]:
    """Fit `config` in closed form, tune it end to end with `tune` (its seed included) and score it
    like `family_rows`: (bank, per-step tuning log, rows labelled "<family> tuned"). `closed_form`:
    that fit already made from the same `stats` (a copy is tuned; the fit is deterministic, so this
    only saves its time, about 20 s for diag_lowrank-64 on the embedded model). `memo`: as in `family_rows`
    (the tuning itself never uses it)."""
    if closed_form is not None and closed_form.config != config:
        raise ValueError(f"closed_form is a {closed_form.config.label} bypass, config asks for {config.label}")
    bank = fit_layer_bypass(identity, None, config, stats) if closed_form is None else copy.deepcopy(closed_form)
    executor = AdaptiveExecutor(identity.adapter, bypass=bank)
    label = f"{bank.config.label} tuned"
    history = [dict(r, bypass=label, seed=tune.seed) for r in tune_bypass_(executor, tune_ids, order, tune)]
    return bank, history, family_rows(label, bank, executor, splits, order, ks, levels, full, memo, tuned=True,
                                      seed=tune.seed)
