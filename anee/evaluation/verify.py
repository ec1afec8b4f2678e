"""Is a fresh `results/` the committed one, up to noise? File by file, column by column.

A rerun on another machine does not reproduce the committed numbers bit for bit: float reductions
differ between CPU kernels and thread schedules (evaluation-only numbers move in the 5th-6th digit),
and training amplifies that into a different trajectory. So every quantity is compared with a
tolerance that says what kind of number it is:

- `exact`: counts, shapes, MACs, settings, labels: must be equal;
- `eval`: a deterministic evaluation of fixed weights: relative 1e-4 (plus a tiny absolute floor);
- `trained`: depends on a trained model: `SPREAD_FACTOR` x its measured seed spread (the `<col>_std`
  column of the same row, or the spread over the file's seeds of the same setting), never tighter
  than `eval`. A standard deviation of two or three seeds is itself noisy (two seeds that happen to
  agree give 0; a second machine moved such values by 4x their two-seed spread), so a row measured
  over two or more seeds is floored by its column's pooled spread: the median relative spread of
  the rows of that column whose seeds differ, times the row's value;
- `decision`: depends on thresholded decisions (a controller, a quantile, an argmax) or on a trained
  artifact the file has no seeds of (the deployed bypass), where a last-digit change can flip a
  token: the rule's relative `rtol`, stated with the reason in `RULES`; text in such a column (a
  greedy generation) is reported when it changes but does not fail;
- `bound`: a quantity that must stay below a bound (e.g. a max |logit difference| of 1e-4);
- `report`: shown when it changes, never failing: per-prompt numbers downstream of greedy tokens
  (a near-tie flips a token and the continuation goes elsewhere); their means over the prompts are
  checked in the summary files;
- `skip`: wall-clock timings, which change from machine to machine: reported, never compared.

Values that an instruction-set-specific kernel computes (the INT8 GEMMs: `Rule.cpu_kernel`) are
compared only when both runs' provenance names the same CPU capability (AVX2, AVX512, ...), and
reported otherwise (`rules_for`): another kernel is another measurement, not noise around this one.

`RULES` assigns kinds by file and column (first match wins; unmatched numeric columns are `eval`,
unmatched text columns `exact`); a rule with `where` covers only the rows it selects (08_pool mixes
fp32, fake-quant and INT8-kernel rows in one column). A file that is missing on either side, or a table whose rows or
columns differ, fails outright.
"""

from __future__ import annotations

import fnmatch
import io
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

EVAL_RTOL, EVAL_ATOL = 1e-4, 1e-9
DECISION_RTOL = 0.01
SPREAD_FACTOR = 3.0
KINDS = ("exact", "eval", "decision", "trained", "bound", "report", "skip")


@dataclass(frozen=True)
class Rule:
    """Kind of the columns of the files matching `file` (glob on the name without extension) and
    `columns` (globs); `keys` are the columns that identify a setting across seeds (trained files);
    `rtol` the relative tolerance of a `decision` rule (and the floor of a `trained` one); `atol` an
    absolute floor of either, for a quantity near zero whose scale is another's (a budget error is a
    fraction of the layers); `bound` the upper bound of a `bound` rule; `why` says where a tolerance
    that is not derived from seeds comes from."""

    file: str
    kind: str
    columns: tuple[str, ...] = ("*",)
    keys: tuple[str, ...] = ()
    rtol: float = 0.0
    atol: float = 0.0
    bound: float = 0.0
    reference: str = ""  # a relative seed spread measured elsewhere (`REFERENCES`) that floors the tolerance
    why: str = ""
    cpu_kernel: bool = False  # computed by an instruction-set-specific kernel: compared only on the same CPU kind
    # (column, text): only the table rows whose `column` reads `text` (one file mixes kinds of row)
    where: tuple[str, str] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.where and (len(self.where) != 2 or self.kind == "trained"):
            raise ValueError("where must be (column, text) on a rule that is not `trained` "
                             f"(its spread is per column), got {self.where!r}")

    def covers(self, file: str, column: str) -> bool:
        """Whether `column` of `file` is among the rule's, whatever its `where`."""
        return fnmatch.fnmatch(file, self.file) and any(fnmatch.fnmatch(column, c) for c in self.columns)

    def matches(self, file: str, column: str, row: Mapping[str, object] | None = None) -> bool:
        """Whether the rule applies to `column` of `file`; a `where` rule only in a `row` it selects."""
        selected = not self.where or (row is not None and str(row.get(self.where[0])) == self.where[1])
        return selected and self.covers(file, column)


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


def kind_of(rules: Sequence[Rule], file: str, column: str, numeric: bool,
            row: Mapping[str, object] | None = None) -> Rule:
    """The first rule that covers `column` of `file` (and `row`, for the row-scoped ones); an
    unlisted number is an evaluation, anything else must match exactly."""
    for rule in rules:
        if rule.matches(file, column, row):
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


def _tolerance(rule: Rule, value: float, spread: float = 0.0, references: dict[str, float] | None = None) -> float:
    tol = _eval_tol(value) if math.isfinite(value) else 0.0
    ref = SPREAD_FACTOR * (references or {}).get(rule.reference, 0.0) * abs(value) if rule.reference else 0.0
    if rule.kind == "decision":
        tol = max(tol, (rule.rtol or DECISION_RTOL) * abs(value), ref, rule.atol)
    elif rule.kind == "trained":
        tol = max(tol, SPREAD_FACTOR * spread, rule.rtol * abs(value), ref, rule.atol)
    return tol


def _check(name: str, column: str, row: str, a, b, rule: Rule, numeric: bool, spread: float = 0.0,
           references: dict[str, float] | None = None, floor: float = 0.0) -> Check:
    """One value against its rule (`floor`: a tolerance it may not go below)."""
    if rule.kind == "skip":
        return Check(name, column, row, a, b, "timing", "skip", True)
    if rule.kind == "report":
        return Check(name, column, row, a, b, "reported", "report", True)
    if rule.kind == "bound" and _is_number(b):
        return Check(name, column, row, a, b, f"<= {rule.bound:g}", "bound", float(b) <= rule.bound)
    if not (numeric and _is_number(a) and _is_number(b)) or rule.kind == "exact":
        same = (a == b) or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
        # a thresholded decision may flip a greedy token on another machine: report, do not fail
        return Check(name, column, row, a, b, 0.0, rule.kind if rule.kind == "decision" else "exact",
                     bool(same) or rule.kind == "decision")
    tol = max(_tolerance(rule, float(a), spread, references), floor)
    return Check(name, column, row, a, b, tol, rule.kind, _within(a, b, tol))


def _seed_spread(df: pd.DataFrame, column: str, keys: Sequence[str]) -> tuple[pd.Series, pd.Series]:
    """Per row: the standard deviation of `column` over the rows sharing the row's `keys` (its seeds),
    and how many rows (seeds) that is."""
    keys = [k for k in keys if k in df.columns]
    values = pd.to_numeric(df[column], errors="coerce")
    if not keys:
        return (pd.Series(float(values.std(ddof=1)), index=df.index).fillna(0.0),  # NaN for one row: no spread
                pd.Series(len(df), index=df.index))
    groups = values.groupby([df[k] for k in keys], dropna=False)
    return groups.transform(lambda s: s.std(ddof=1)).fillna(0.0), groups.transform("size")


def _pooled_spread(values: pd.Series, spread: pd.Series, seeds: pd.Series) -> pd.Series:
    """Per row: the larger of its own spread and, for a row measured over two or more seeds, the
    column's pooled relative spread (median over the rows whose seeds differ) times its value."""
    values, spread = values.abs(), spread.abs()
    measured = (seeds >= 2) & (spread > 0) & (values > 0)
    if not measured.any():
        return spread
    pooled = float((spread[measured] / values[measured]).median())
    return spread.where(seeds < 2, np.maximum(spread, pooled * values.fillna(0.0)))


def _mean_of(std_column: str, table: pd.DataFrame) -> str:
    """The numeric column a `<x>_std` column is the spread of: `<x>`, or the one column named
    `<x>_<y>` (06_comparisons pairs `a_ppl` with `a_std`, beside a text column `a`); "" if none."""
    stem = std_column[: -len("_std")]
    numeric = [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c]) and not c.endswith("_std")]
    if stem in numeric:
        return stem
    named = [c for c in numeric if c.startswith(f"{stem}_")]
    return named[0] if len(named) == 1 else ""


def compare_tables(name: str, committed: pd.DataFrame, fresh: pd.DataFrame, rules: Sequence[Rule],
                   references: dict[str, float] | None = None) -> list[Check]:
    if list(committed.columns) != list(fresh.columns):
        return [Check(name, "(columns)", "", list(committed.columns), list(fresh.columns), "exact", "exact", False)]
    if len(committed) != len(fresh):
        return [Check(name, "(rows)", "", len(committed), len(fresh), "exact", "exact", False)]
    checks, tolerances = [], {}
    seeds_column = (pd.to_numeric(committed["n_seeds"], errors="coerce").fillna(1) if "n_seeds" in committed.columns
                    else None)
    for column in committed.columns:
        numeric = pd.api.types.is_numeric_dtype(committed[column]) and pd.api.types.is_numeric_dtype(fresh[column])
        rule = kind_of(rules, name, column, numeric)
        values = pd.to_numeric(committed[column], errors="coerce") if numeric else None
        spread = None
        if rule.kind == "trained" and numeric:
            if column.endswith("_std"):
                spread = values.abs()  # a spread may move by its own size
            else:
                if f"{column}_std" in committed.columns:
                    spread = pd.to_numeric(committed[f"{column}_std"], errors="coerce").fillna(0.0)
                    seeds = seeds_column if seeds_column is not None else (spread > 0) + 1
                else:
                    spread, seeds = _seed_spread(committed, column, rule.keys)
                spread = _pooled_spread(values, spread, seeds)
        base = tolerances.get(_mean_of(column, committed), []) if column.endswith("_std") else []
        scoped = any(r.where and r.covers(name, column) for r in rules)  # else every row has the column's rule
        own = []
        for i, (a, b) in enumerate(zip(committed[column].tolist(), fresh[column].tolist())):
            row_rule = kind_of(rules, name, column, numeric, committed.iloc[i].to_dict()) if scoped else rule
            # a spread moves with the values it is the spread of: never tighter than their tolerance
            check = _check(name, column, str(i), a, b, row_rule, numeric,
                           0.0 if spread is None else float(spread.iloc[i]),
                           references, floor=base[i] if i < len(base) else 0.0)
            own.append(check.tolerance if isinstance(check.tolerance, float) else 0.0)
            checks.append(check)
        tolerances[column] = own
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


def compare_json(name: str, committed, fresh, rules: Sequence[Rule],
                 references: dict[str, float] | None = None) -> list[Check]:
    a, b = dict(_flatten(committed)), dict(_flatten(fresh))
    # a key on one side only fails, unless its rule skips it (a timing or provenance record gained a field)
    only = {k for k in set(a) ^ set(b) if kind_of(rules, name, k, False).kind != "skip"}
    if only:
        return [Check(name, "(keys)", "", sorted(only - set(b))[:5], sorted(only - set(a))[:5], "exact", "exact",
                      False)]
    checks = []
    for key in sorted(set(a) & set(b)):
        x, y = a[key], b[key]
        numeric = _is_number(x) and _is_number(y)
        rule = kind_of(rules, name, key, numeric)
        # a spread may move by its own size
        std = abs(x) if key.endswith("_std") and _is_number(x) else a.get(f"{key}_std")
        checks.append(_check(name, key, "", x, y, rule, numeric, float(std) if _is_number(std) else 0.0, references))
    return checks


def read_result(text: str, suffix: str):
    return pd.read_csv(io.StringIO(text), keep_default_na=True) if suffix == ".csv" else json.loads(text)


def compare_files(committed: dict[str, str], fresh: dict[str, str], rules: Sequence[Rule],
                  references: dict[str, float] | None = None) -> Report:
    """Compare results given as {file name with extension: text}; `references`: the relative seed
    spreads some rules are floored by (`reference_spreads` of the committed files)."""
    report = Report()
    for fname in sorted(set(committed) | set(fresh)):
        stem, suffix = Path(fname).stem, Path(fname).suffix
        if fname not in fresh or fname not in committed:
            side = "fresh" if fname not in fresh else "committed"
            if any(r.kind == "skip" and fnmatch.fnmatch(stem, r.file) for r in rules):
                continue
            report.checks.append(Check(stem, "(file)", "", fname in committed, fname in fresh, f"missing in {side}",
                                       "exact", False))
            continue
        a, b = read_result(committed[fname], suffix), read_result(fresh[fname], suffix)
        if suffix == ".csv":
            report.checks += compare_tables(stem, a, b, rules, references)
        else:
            report.checks += compare_json(stem, a, b, rules, references)
    return report


def result_files(root: Path, names: Iterable[str] | None = None) -> dict[str, str]:
    """{name: text} of the CSV/JSON files directly in `root` (committed results live there)."""
    paths = sorted(p for p in root.glob("*") if p.suffix in (".csv", ".json"))
    return {p.name: p.read_text() for p in paths if names is None or p.name in names}


@dataclass(frozen=True)
class Reference:
    """A relative seed spread measured in a committed file: max over its groups (`keys`) of the
    standard deviation over seeds divided by the mean, over `columns` (globs), for rows where
    `where` (column -> value) holds. For quantities downstream of a trained artifact that the file
    itself has no seeds of (everything run with the one deployed bypass, say)."""

    file: str
    columns: tuple[str, ...]
    keys: tuple[str, ...] = ()
    where: tuple[tuple[str, object], ...] = ()
    std_columns: bool = False  # the file has `<col>_std` columns beside the means (instead of seed rows)

    def measure(self, table: pd.DataFrame) -> float:
        for col, value in self.where:
            table = table[table[col].astype(str).str.startswith(str(value))]
        cols = [c for c in table.columns if any(fnmatch.fnmatch(c, g) for g in self.columns) and not c.endswith("_std")]
        worst = 0.0
        for c in cols:
            values = pd.to_numeric(table[c], errors="coerce")
            if self.std_columns:
                if f"{c}_std" not in table.columns:  # one seed (quick profile): no spread to read
                    continue
                rel = pd.to_numeric(table[f"{c}_std"], errors="coerce") / values.abs()
            else:
                # a file from before a key was added: its own groups
                keys = [k for k in self.keys if k in table.columns]
                grouped = values.groupby([table[k] for k in keys]) if keys else values.groupby(lambda _: 0)
                rel = grouped.std(ddof=1) / grouped.mean().abs()
            if rel.notna().any():
                worst = max(worst, float(rel.max()))
        return worst


REFERENCES = {
    # the layer bypass: static removal perplexity over its tuning seeds (notebook 02)
    "bypass": Reference("02_bypass_families", ("ppl_k*",), keys=("bypass", "removal_order", "split"),
                        where=(("tuned", True),)),
    # the learned ANEE controllers: perplexity at equal savings over their training seeds (notebook 06)
    "controllers": Reference("06_ppl_at_equal_savings", ("0.*",), where=(("method", "anee_"),), std_columns=True),
    # the hierarchical model: perplexity per capacity over its training seeds (notebook 05)
    "hierarchical": Reference("05_capacity_table", ("ppl",), std_columns=True),
}


def reference_spreads(files: dict[str, str]) -> dict[str, float]:
    """The relative spreads of `REFERENCES`, measured in the given (committed) result files."""
    out = {}
    for name, ref in REFERENCES.items():
        text = files.get(f"{ref.file}.csv")
        out[name] = ref.measure(read_result(text, ".csv")) if text is not None else 0.0
    return out


_GENERATIONS = ("greedy generations and teacher-forced top-1 of the shipped (seed-0) controllers; their seed spread "
                "is in 06")
_DOWNSTREAM = "run with the one deployed bypass (seed 0), whose own seed spread is measured in 02_bypass_families"
RULES: tuple[Rule, ...] = (
    # wall-clock, the run's provenance: reported, never compared
    Rule("timings_*", "skip"), Rule("*_timings", "skip"), Rule("bench_decode", "skip"), Rule("provenance", "skip"),
    # a verdict thresholds a difference against the seed spread: near it, another machine may say "a tie"
    # (the perplexities and spreads beside it are compared as trained numbers)
    Rule("06_comparisons", "decision", ("verdict",), why="better / worse / a tie: a threshold on the difference "
         "against the larger seed spread (another CPU turned one 'b' into 'tie')"),
    # labels and counts
    Rule("*", "exact", ("seed", "n_seeds", "tokens", "setting", "method", "policy", "controller", "split", "bypass",
                        "family", "rank", "macs", "tuned", "curve", "a", "b", "variant", "strategy", "granularity",
                        "energy_unit", "quality_metric", "source", "hindsight", "verdict", "params", "policy_macs",
                        "overhead_macs_per_call")),
    # 01, 09: the budget-1.0 executor is the HF model; the shipped controllers' greedy generations (trained,
    # seed 0) may flip a token on a near-tie, and the prefix and fractions after it move with it
    Rule("01_exactness", "bound", ("max_abs_logit_diff",), bound=1e-4),
    Rule("0[19]_*generations*", "decision", ("text",), why="greedy tokens: a near-tie between two logits can flip"),
    Rule("0[19]_*generations*", "report", ("layer_fraction*", "*_saved_net", "matching_prefix"),
         why="one prompt's numbers after a flipped greedy token (another machine moved them by up to 0.03 of the "
             "layers); their means over the prompts are checked in 09's summaries"),
    Rule("09_*summary", "decision", ("matching_prefix*",), atol=0.1, reference="controllers",
         why="a mean over 20 prompts of whole tokens moves in steps of 0.05: two prompts' flipped first tokens"),
    Rule("09_api_vs_06", "bound", ("rel_diff",), bound=1e-5),  # the public API and notebook 06 score the same windows
    Rule("01_budget_generations", "decision", reference="controllers", why=_GENERATIONS),
    Rule("09_*", "decision", reference="controllers", why=_GENERATIONS),
    # 02: the bypass over its tuning seeds; everything after it runs with the deployed one
    Rule("02_bypass_families", "trained", ("ppl_*",), keys=("bypass", "removal_order", "split")),
    Rule("02_bypass_training", "trained", ("kl",), keys=("bypass", "step")),
    Rule("02_entropy_estimator", "eval"), Rule("02_layer_importance", "eval"),
    Rule("02_*", "decision", reference="bypass",
         why=_DOWNSTREAM + "; heuristic and hindsight decisions are thresholds"),
    # 03-04: the learned controllers over their seeds (and the bypass they were trained with)
    Rule("03_kl_profile_*", "decision", reference="bypass",
         why=_DOWNSTREAM + "; each row is the calibrated choice (drops, price) for a budget (an AVX-512 run moved two "
             "valid perplexities by 2e-4 from an AVX2 one's)"),
    Rule("03_warmstart_history", "trained", keys=("policy", "epoch"), reference="bypass"),
    Rule("03_warmstart_runs", "trained", keys=("policy",), reference="bypass"),
    Rule("03_skip_calibration*", "trained", keys=("policy", "round", "budget"), reference="bypass"),
    Rule("03_confusion", "trained", keys=("policy", "hindsight"), reference="bypass"),
    Rule("0[34]_budget_adherence", "trained", keys=("controller", "budget"), reference="bypass"),
    Rule("03_warmstart_summary", "trained", ("val_accuracy*",), reference="bypass"),
    Rule("03_warmstart_summary", "decision", reference="bypass", why=_DOWNSTREAM + " (the labels)"),
    Rule("04_skip_calibration*", "trained", keys=("round", "budget"), reference="bypass"),
    Rule("04_rl_history", "report", ("loss",),
         why="the per-step REINFORCE loss, an advantage-weighted log-probability near zero (an AVX-512 run moved steps "
             "by up to 0.08); what training produced is checked in 04_budget_adherence, 04_skip_calibration* and 06"),
    Rule("04_rl_history", "trained", keys=("step",), reference="bypass"),
    # 05: the hierarchical model over its seeds; exits and per-layer usage are of the seed-0 model
    Rule("05_causality", "bound", ("first_half_max_logit_diff",), bound=1e-4),  # float rounding of gathered rows
    Rule("05_capacity_*", "trained", ("realized_capacity*", "*_speedup*"), keys=("capacity",), rtol=DECISION_RTOL,
         why="routing at calibrated thresholds: both seeds calibrate on the same windows and realize nearly the same "
             "capacity, so their spread understates a machine's (another CPU moved 0.4073 to 0.4088)"),
    Rule("05_capacity_runs", "trained", keys=("capacity",)),
    Rule("05_capacity_table", "trained"),
    Rule("05_training_history", "report", ("loss", "kl*", "lens_kl", "exited", "mean_depth"),
         why="per-step values of a training trajectory; the exit phase has seed 0 only and samples hard Gumbel "
             "gates, and another CPU moved its steps by up to half (loss by 15 %); what training produced is "
             "checked in 05_capacity_*, 05_exits and 05_exit_depths"),
    Rule("05_training_history", "trained", keys=("phase", "lens", "step"), reference="hierarchical"),
    Rule("05_layer_allocation", "eval"),
    Rule("05_*", "decision", reference="hierarchical",
         why="the seed-0 hierarchical model; its seed spread is in 05_capacity_table"),
    # 06: every method over its seeds, the bypass rows also over the bypass's
    # 06's test windows, code, last test tokens
    Rule("06_*frontier", "trained", keys=("method", "setting"), reference="bypass"),
    Rule("06_ppl_at_equal_savings_runs", "trained", keys=("method", "net_saved", "curve"), reference="bypass"),
    Rule("06_*ppl_at_equal_savings*", "trained", reference="bypass"),
    Rule("06_comparisons", "trained", ("a_*", "b_*"), reference="bypass"),
    Rule("06_bypass_ablation", "decision", ("ppl", "ppl_vs_identity"), reference="bypass",
         why="the deployed row is the tuned bypass (its seed spread floors the tolerance); identity and closed form "
             "are evaluation-only"),
    Rule("06_findings", "trained", ("ratio_to_full*", "best_anee_ratio_to_full*"), reference="controllers"),
    Rule("06_findings", "decision",
         why="verdict words and the best method: a difference near the seed spread may become a tie elsewhere"),
    Rule("06_headroom", "decision", reference="bypass", why=_DOWNSTREAM + "; the oracle picks by argmin"),
    # 07: the seed-0 RL controller's decisions, per token
    Rule("07_per_token_compute", "decision", ("layers_processed", "last_processed"), rtol=0.25,
         why="per-token integer decisions of the seed-0 RL controller: a near-threshold token may move a layer"),
    Rule("07_savings_vs_budget", "decision", ("abs_error",), atol=DECISION_RTOL, reference="controllers",
         why="|realized - budget| is near 0: its noise is the realized fraction's, 1 % of the layers"),
    Rule("07_layer_usage", "decision", atol=0.02, reference="controllers",
         why="the share of the test tokens that ran each layer: on a marginal layer about half do, and tokens near the "
             "controller's threshold flip (another CPU moved one share by 6 of 512 tokens, 0.012)"),
    Rule("07_*", "decision", reference="controllers", why="the seed-0 RL controller; its seed spread is in 06"),
    # 08: BranchyNet over its seeds; the ANEE rows are the seed-0 RL controller, the selectors decide per window
    Rule("08_branchynet_runs", "trained", keys=("threshold",)), Rule("08_branchynet", "trained"),
    Rule("int8_quality", "decision", ("int8_*.kl_*",), rtol=0.05, cpu_kernel=True,
         why="a KL of about 0.01 nats between INT8 and fp32 logits: a small difference of two close distributions "
             "(another CPU of the same kind moved it by 1.7 %); the INT8 perplexities beside it keep 1 %"),
    Rule("int8_quality", "decision", ("int8_*",), rtol=DECISION_RTOL, cpu_kernel=True,
         why="INT8 kernels round each activation to a code: a last-digit change upstream can move a code; across CPU "
             "kinds the kernels differ (an AVX2 instance gave smoothed INT8 +2.5 % perplexity and KL 0.027 where an "
             "AVX-512 one gave +1.1 % and 0.008), so there these are reported, not compared"),
    Rule("08_pool", "decision", ("ppl_*",), rtol=DECISION_RTOL, cpu_kernel=True, where=("weights", "INT8 kernels"),
         why="its INT8-kernel rows round activations as int8_quality's do (another CPU of the same kind moved them by "
             "0.1 %; an AVX-512 run and an AVX2 one differ by up to 2.8 %): compared on the same CPU kind only"),
    Rule("08_pool", "eval", why="its fp32 and fake-quant rows are plain evaluations (an AVX-512 run and an AVX2 one "
                                "agree to 1e-5 on them)"),
    Rule("08_*", "decision", reference="controllers",
         why="selectors' per-window choices, the seed-0 RL controller and 06's rows"),
)


def rules_for(committed_cpu: str | None, fresh_cpu: str | None, rules: Sequence[Rule] = RULES) -> tuple[Rule, ...]:
    """`rules`, with the `cpu_kernel` ones turned into `report` unless both runs name the same CPU
    capability (`torch.backends.cpu.get_cpu_capability()`, recorded in provenance.json): an INT8
    kernel on another instruction set is another measurement, not noise around this one."""
    if committed_cpu is not None and committed_cpu == fresh_cpu:
        return tuple(rules)
    return tuple(replace(r, kind="report") if r.cpu_kernel else r for r in rules)


# -- the repository: committed results, provenance, the command line -----------------------------

PROVENANCE = "provenance.json"  # written by tools/reproduce.py: the commit the results come from
CPU_KEY = "cpu_capability"  # its record of the instruction set the kernels ran with


def git(root: Path, *args: str) -> str:
    import subprocess

    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout


def committed_files(root: Path, rev: str = "HEAD") -> dict[str, str]:
    """{name: text} of the CSV/JSON files directly under results/ in commit `rev`."""
    names = [n for n in git(root, "ls-tree", "--name-only", f"{rev}:results").split() if n.endswith((".csv", ".json"))]
    return {n: git(root, "show", f"{rev}:results/{n}") for n in names}


# outputs of a run, not code: the shipped defaults are copied from the run's checkpoints (their
# manifest names the commit they come from), the executed notebooks from the run itself; and code no
# notebook runs: the command line (the top layer: nothing in the package imports it, tests/test_architecture.py)
# and this checker
NOT_CODE = (":(exclude)anee/defaults", ":(exclude)notebooks/*.ipynb", ":(exclude)anee/cli",
            ":(exclude)anee/__main__.py", ":(exclude)anee/evaluation/verify.py")


def stale_by_notebook(root: Path, provenance: dict,
                      paths: Sequence[str] = ("anee", "notebooks")) -> dict[str, list[str]]:
    """{notebook: files under `paths` (code and its notebook source, not `NOT_CODE`) that differ between the
    commit it ran at and the working tree}; notebooks whose results come from this code are left out.
    Without per-notebook records (`provenance["notebooks"]`), one entry "" for the whole run."""
    runs = {name: r.get("code_commit") for name, r in (provenance.get("notebooks") or {}).items()}
    if not runs:
        runs = {"": provenance.get("code_commit")}
    stale = {}
    for name, commit in runs.items():
        if not commit:
            return {name: [f"(results/provenance.json names no commit{f' for {name}' if name else ''})"]}
        own = [p for p in paths if p != "notebooks"] + ([f"notebooks/src/{name}.py"] if name else ["notebooks"])
        try:
            changed = git(root, "diff", "--name-only", commit, "--", *own, *NOT_CODE).split()
        except Exception:
            return {name: [f"(commit {commit} of results/provenance.json is not in this repository)"]}
        if changed:
            stale[name] = changed
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import sys

    from .results import repo_root

    parser = argparse.ArgumentParser(description="Compare a fresh results/ with the committed one, with a tolerance "
                                                 "per quantity.")
    parser.add_argument("--against", default="HEAD", help="the commit holding the reference results (default HEAD)")
    parser.add_argument("--all", action="store_true", help="print every compared value, not only the failures")
    args = parser.parse_args(argv)
    root = repo_root()
    fresh = result_files(root / "results")
    committed = committed_files(root, args.against)
    references = reference_spreads(committed)
    print("relative seed spreads used as tolerance floors:", {k: round(v, 4) for k, v in references.items()})
    cpus = [json.loads(files.get(PROVENANCE, "{}")).get(CPU_KEY) for files in (committed, fresh)]
    rules = rules_for(*cpus)
    if rules != RULES:
        print(f"CPU capability committed {cpus[0] or 'not recorded'}, fresh {cpus[1] or 'not recorded'}: "
              "values of instruction-set-specific kernels (INT8) are reported, not compared")
    report = compare_files(committed, fresh, rules, references)
    table = report.table(only_failures=not args.all)
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200):
        print(table.to_string(index=False) if len(table) else "(no differences beyond tolerance)")
    counts = report.table().groupby("kind").ok.agg(["count", "sum"])
    per_kind = ", ".join(f"{kind}: {int(row['sum'])}/{int(row['count'])} ok" for kind, row in counts.iterrows())
    print(f"\n{len(report.checks)} values compared in {len(set(committed) | set(fresh))} files ({per_kind})")
    prov = root / "results" / PROVENANCE
    if prov.is_file():
        for name, changed in stale_by_notebook(root, json.loads(prov.read_text())).items():
            print(f"WARNING: code changed since {name or 'the results'} ran ({len(changed)} files: "
                  f"{', '.join(changed[:6])}{' ...' if len(changed) > 6 else ''}); "
                  "rerun `make reproduce` and commit the results", file=sys.stderr)
    if not report.ok:
        print(f"FAILED: {len(report.failures)} values differ beyond their tolerance", file=sys.stderr)
        return 1
    print("OK: the fresh results match the committed ones within tolerance")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
