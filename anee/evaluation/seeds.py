"""Seed spread: every trained method is run with several seeds and reported as mean and spread, and
a comparison between two methods is a win only when their difference exceeds that spread.

The spread is the sample standard deviation over seeds (ddof = 1; 0 for a single seed or a
deterministic method). "A beats B" at a level means mean_A + margin < mean_B with
margin = max(std_A, std_B, 1e-3 x the means): a difference smaller than the larger spread is a tie,
since a rerun (or a machine whose float reductions differ, which perturbs training like another
seed) may reverse it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def spread(values: Sequence[float]) -> float:
    """Sample standard deviation over seeds (0 for one value)."""
    v = np.asarray(values, dtype=float)
    return float(v.std(ddof=1)) if v.size > 1 else 0.0


def summarize(table: pd.DataFrame, keys: Sequence[str], values: Sequence[str], seed: str = "seed") -> pd.DataFrame:
    """Mean of each value column per `keys` over the seed rows, with a `<value>_std` column beside it
    and `n_seeds`; rows without a seed column count as one seed. A value missing (NaN) for any seed
    is NaN in the summary, never a mean over fewer seeds than `n_seeds` says."""
    groups = table.groupby(list(keys), sort=False, dropna=False)
    out = groups[list(values)].agg(lambda s: s.mean(skipna=False))
    for v in values:
        out.insert(out.columns.get_loc(v) + 1, f"{v}_std", groups[v].agg(spread))
    out["n_seeds"] = groups[seed].nunique() if seed in table.columns else 1
    return out.reset_index()


def verdict(a: float, a_std: float, b: float, b_std: float, lower_is_better: bool = True, floor: float = 1e-3) -> str:
    """"a", "b" or "tie": which of two means is better by more than the larger of the two spreads
    (and than `floor` x the values, so two deterministic methods within float noise tie too)."""
    if any(np.isnan(x) for x in (a, a_std, b, b_std)):
        return "n/a"
    margin = max(a_std, b_std, floor * max(abs(a), abs(b)))
    diff = (b - a) if lower_is_better else (a - b)
    if diff > margin:
        return "a"
    if -diff > margin:
        return "b"
    return "tie"


def split_seed(table: pd.DataFrame, column: str = "controller") -> pd.DataFrame:
    """Labels such as "warmstart-s2" split into the label ("warmstart") and a `seed` column (2; -1
    for a label without a seed), so rows of one method over its seeds share a key."""
    parts = table[column].astype(str).str.extract(r"^(?P<label>.*?)(?:-s(?P<seed>\d+))?$")
    out = table.copy()
    out[column] = parts.label
    out.insert(out.columns.get_loc(column) + 1, "seed", parts.seed.fillna(-1).astype(int))
    return out
