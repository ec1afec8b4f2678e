"""Is a fresh `results/` the committed one, up to noise? File by file, column by column.

A rerun on another machine does not reproduce the committed numbers bit for bit: float reductions
differ between CPU kernels and thread schedules (evaluation-only numbers move in the 5th-6th digit),
and training amplifies that into a different trajectory. So every quantity is compared with a
tolerance that says what kind of number it is:

- `exact`: counts, shapes, MACs, settings, labels: must be equal;
- `eval`: a deterministic evaluation of fixed weights: relative 1e-4 (plus a tiny absolute floor);
- `trained`: depends on a trained model: `SPREAD_FACTOR` x its measured seed spread (the `<col>_std`
  column of the same row, or the spread over the file's seeds of the same setting), never tighter
  than `eval`;
- `decision`: depends on thresholded decisions of fixed weights (a controller, a quantile), where a
  last-digit change can flip a token: relative `DECISION_RTOL`;
- `skip`: wall-clock timings, which change from machine to machine: reported, never compared.

`RULES` assigns kinds by file and column (first match wins; unmatched numeric columns are `eval`,
unmatched text columns `exact`). A file that is missing on either side, or a table whose rows or
columns differ, fails outright.
"""

from __future__ import annotations

import fnmatch
import io
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

EVAL_RTOL, EVAL_ATOL = 1e-4, 1e-9
DECISION_RTOL = 0.02
SPREAD_FACTOR = 3.0
KINDS = ("exact", "eval", "decision", "trained", "skip")


@dataclass(frozen=True)
class Rule:
    """Kind of the columns of the files matching `file` (glob on the name without extension) and
    `columns` (globs); `keys` are the columns that identify a setting across seeds (trained files)."""

    file: str
    kind: str
    columns: tuple[str, ...] = ("*",)
    keys: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")

    def matches(self, file: str, column: str) -> bool:
        return fnmatch.fnmatch(file, self.file) and any(fnmatch.fnmatch(column, c) for c in self.columns)


@dataclass
class Check:
    file: str
    column: str
    row: str
    committed: object
    fresh: object
    tolerance: float | str
    kind: str
    ok: bool

    def as_row(self) -> dict:
        return {"file": self.file, "column": self.column, "row": self.row, "committed": self.committed,
                "fresh": self.fresh, "tolerance": self.tolerance, "kind": self.kind, "ok": self.ok}


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    @property
    def ok(self) -> bool:
        return not self.failures

    def table(self, only_failures: bool = False) -> pd.DataFrame:
        rows = [c.as_row() for c in (self.failures if only_failures else self.checks)]
        return pd.DataFrame(rows, columns=["file", "column", "row", "committed", "fresh", "tolerance", "kind", "ok"])


def kind_of(rules: Sequence[Rule], file: str, column: str, numeric: bool) -> Rule:
    for rule in rules:
        if rule.matches(file, column):
            return rule
    return Rule(file, "eval" if numeric else "exact", (column,))


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _within(committed, fresh, tol: float) -> bool:
    if isinstance(committed, float) and isinstance(fresh, float) and math.isnan(committed) and math.isnan(fresh):
        return True
    if isinstance(committed, float) and isinstance(fresh, float) and math.isinf(committed):
        return committed == fresh
    return abs(float(fresh) - float(committed)) <= tol


def _eval_tol(value: float) -> float:
    return EVAL_RTOL * abs(value) + EVAL_ATOL


def _seed_spread(df: pd.DataFrame, column: str, keys: Sequence[str]) -> pd.Series:
    """Per row: the standard deviation of `column` over the rows sharing the row's `keys` (its seeds)."""
    keys = [k for k in keys if k in df.columns]
    if not keys:
        return pd.Series(float(pd.to_numeric(df[column], errors="coerce").std(ddof=1) or 0.0), index=df.index)
    values = pd.to_numeric(df[column], errors="coerce")
    return values.groupby([df[k] for k in keys], dropna=False).transform(lambda s: s.std(ddof=1)).fillna(0.0)


def compare_tables(name: str, committed: pd.DataFrame, fresh: pd.DataFrame, rules: Sequence[Rule]) -> list[Check]:
    if list(committed.columns) != list(fresh.columns):
        return [Check(name, "(columns)", "", list(committed.columns), list(fresh.columns), "exact", "exact", False)]
    if len(committed) != len(fresh):
        return [Check(name, "(rows)", "", len(committed), len(fresh), "exact", "exact", False)]
    checks = []
    for column in committed.columns:
        numeric = pd.api.types.is_numeric_dtype(committed[column]) and pd.api.types.is_numeric_dtype(fresh[column])
        rule = kind_of(rules, name, column, numeric)
        spread = None
        if rule.kind == "trained":
            if f"{column}_std" in committed.columns:
                spread = pd.to_numeric(committed[f"{column}_std"], errors="coerce").fillna(0.0)
            elif column.endswith("_std"):
                spread = pd.to_numeric(committed[column], errors="coerce").abs()  # a spread may move by its own size
            else:
                spread = _seed_spread(committed, column, rule.keys)
        for i, (a, b) in enumerate(zip(committed[column].tolist(), fresh[column].tolist())):
            if rule.kind == "skip":
                checks.append(Check(name, column, str(i), a, b, "timing", "skip", True))
                continue
            if not (numeric and _is_number(a) and _is_number(b)) or rule.kind == "exact":
                same = (a == b) or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
                checks.append(Check(name, column, str(i), a, b, 0.0, "exact", bool(same)))
                continue
            tol = _eval_tol(float(a)) if math.isfinite(float(a)) else 0.0
            if rule.kind == "decision":
                tol = max(tol, DECISION_RTOL * abs(float(a)))
            elif rule.kind == "trained":
                tol = max(tol, SPREAD_FACTOR * float(spread.iloc[i]))
            checks.append(Check(name, column, str(i), a, b, tol, rule.kind, _within(a, b, tol)))
    return checks


def _flatten(obj, prefix: str = "") -> Iterator[tuple[str, object]]:
    if isinstance(obj, dict):
        for k in sorted(obj):
            yield from _flatten(obj[k], f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, obj


def compare_json(name: str, committed, fresh, rules: Sequence[Rule]) -> list[Check]:
    a, b = dict(_flatten(committed)), dict(_flatten(fresh))
    if set(a) != set(b):
        return [Check(name, "(keys)", "", sorted(set(a) - set(b))[:5], sorted(set(b) - set(a))[:5], "exact", "exact", False)]
    checks = []
    for key in sorted(a):
        x, y = a[key], b[key]
        numeric = _is_number(x) and _is_number(y)
        rule = kind_of(rules, name, key, numeric)
        if rule.kind == "skip":
            checks.append(Check(name, key, "", x, y, "timing", "skip", True))
        elif not numeric or rule.kind == "exact":
            checks.append(Check(name, key, "", x, y, 0.0, "exact", x == y))
        else:
            tol = _eval_tol(float(x))
            if rule.kind == "decision":
                tol = max(tol, DECISION_RTOL * abs(float(x)))
            elif rule.kind == "trained":
                std = a.get(f"{key}_std")
                tol = max(tol, SPREAD_FACTOR * float(std) if _is_number(std) else 0.0)
            checks.append(Check(name, key, "", x, y, tol, rule.kind, _within(x, y, tol)))
    return checks


def read_result(text: str, suffix: str):
    return pd.read_csv(io.StringIO(text), keep_default_na=True) if suffix == ".csv" else json.loads(text)


def compare_files(committed: dict[str, str], fresh: dict[str, str], rules: Sequence[Rule]) -> Report:
    """Compare results given as {file name with extension: text}."""
    report = Report()
    for fname in sorted(set(committed) | set(fresh)):
        stem, suffix = Path(fname).stem, Path(fname).suffix
        if fname not in fresh or fname not in committed:
            side = "fresh" if fname not in fresh else "committed"
            if any(r.kind == "skip" and fnmatch.fnmatch(stem, r.file) for r in rules):
                continue
            report.checks.append(Check(stem, "(file)", "", fname in committed, fname in fresh, f"missing in {side}", "exact", False))
            continue
        a, b = read_result(committed[fname], suffix), read_result(fresh[fname], suffix)
        if suffix == ".csv":
            report.checks += compare_tables(stem, a, b, rules)
        else:
            report.checks += compare_json(stem, a, b, rules)
    return report


def result_files(root: Path, names: Iterable[str] | None = None) -> dict[str, str]:
    """{name: text} of the CSV/JSON files directly in `root` (committed results live there)."""
    paths = sorted(p for p in root.glob("*") if p.suffix in (".csv", ".json"))
    return {p.name: p.read_text() for p in paths if names is None or p.name in names}
