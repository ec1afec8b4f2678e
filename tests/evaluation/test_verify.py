"""`make verify`: a fresh results/ against the committed one, with a tolerance per kind of quantity."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from anee.evaluation.verify import (
    EVAL_RTOL,
    RULES,
    SPREAD_FACTOR,
    Reference,
    Rule,
    compare_files,
    kind_of,
    main,
    reference_spreads,
)


def csv(df: pd.DataFrame) -> str:
    return df.to_csv(index=False, float_format="%.6g", lineterminator="\n")


EVAL = csv(pd.DataFrame({"method": ["full", "bi"], "setting": ["", "n=3"], "ppl": [22.2, 30.0],
                         "tokens": [4095, 4095]}))
TRAINED = csv(pd.DataFrame({"method": ["rl"] * 3 + ["bi"], "seed": [0, 1, 2, -1], "ppl": [30.0, 31.0, 32.0, 40.0]}))


def perturbed(text: str, column: str, row: int, value) -> str:
    df = pd.read_csv(pd.io.common.StringIO(text))
    if isinstance(value, float):
        df[column] = df[column].astype(float)
    df.loc[row, column] = value
    return csv(df)


def failures(committed: dict, fresh: dict, rules=(), references=None) -> list[tuple[str, str]]:
    return [(c.file, c.column) for c in compare_files(committed, fresh, rules, references).failures]


def test_identical_results_pass_and_every_value_is_compared():
    files = {"06_frontier.csv": EVAL, "x.json": json.dumps({"a": 1.5, "b": {"c": "text"}})}
    report = compare_files(files, dict(files), ())
    assert report.ok and len(report.checks) == 2 * 4 + 2


def test_evaluation_numbers_get_a_tight_relative_tolerance():
    files = {"06_frontier.csv": EVAL}
    inside = perturbed(EVAL, "ppl", 1, 30.0 * (1 + 0.5 * EVAL_RTOL))
    outside = perturbed(EVAL, "ppl", 1, 30.0 * (1 + 3 * EVAL_RTOL))
    assert failures(files, {"06_frontier.csv": inside}) == []
    assert failures(files, {"06_frontier.csv": outside}) == [("06_frontier", "ppl")]


def test_counts_and_labels_are_exact():
    rules = (Rule("*", "exact", ("tokens", "method")),)
    assert failures({"f.csv": EVAL}, {"f.csv": perturbed(EVAL, "tokens", 0, 4096)}, rules) == [("f", "tokens")]
    assert failures({"f.csv": EVAL}, {"f.csv": perturbed(EVAL, "method", 1, "block")}, rules) == [("f", "method")]


def test_trained_numbers_get_their_measured_seed_spread():
    rules = (Rule("t", "trained", ("ppl",), keys=("method",)),)
    spread = pd.Series([30.0, 31.0, 32.0]).std(ddof=1)  # 1.0
    inside = perturbed(TRAINED, "ppl", 0, 30.0 + 0.9 * SPREAD_FACTOR * spread)
    outside = perturbed(TRAINED, "ppl", 0, 30.0 + 1.1 * SPREAD_FACTOR * spread)
    assert failures({"t.csv": TRAINED}, {"t.csv": inside}, rules) == []
    assert failures({"t.csv": TRAINED}, {"t.csv": outside}, rules) == [("t", "ppl")]
    # the deterministic row (one seed) keeps the tight tolerance
    assert failures({"t.csv": TRAINED}, {"t.csv": perturbed(TRAINED, "ppl", 3, 40.1)}, rules) == [("t", "ppl")]


def test_two_seeds_that_agree_get_the_pooled_spread_of_their_column():
    """A two-seed standard deviation is noisy: seeds that agree exactly (spread 0) are floored by the
    column's median relative spread; a one-seed (deterministic) row keeps the tight tolerance."""
    table = csv(pd.DataFrame({"threshold": [0, 0, 1, 1, 2, 2, 3], "seed": [0, 1, 0, 1, 0, 1, -1],
                              "accuracy": [0.90, 0.92, 0.80, 0.84, 0.95, 0.95, 0.50]}))
    rules = (Rule("b", "trained", ("accuracy",), keys=("threshold",)),)
    rel = pd.Series([pd.Series([0.90, 0.92]).std() / 0.91, pd.Series([0.80, 0.84]).std() / 0.82]).median()
    inside = perturbed(table, "accuracy", 4, 0.95 - 0.9 * SPREAD_FACTOR * rel * 0.95)
    outside = perturbed(table, "accuracy", 4, 0.95 - 1.1 * SPREAD_FACTOR * rel * 0.95)
    assert failures({"b.csv": table}, {"b.csv": inside}, rules) == []
    assert failures({"b.csv": table}, {"b.csv": outside}, rules) == [("b", "accuracy")]
    assert failures({"b.csv": table}, {"b.csv": perturbed(table, "accuracy", 6, 0.501)}, rules) == [("b", "accuracy")]
    # with a `<col>_std` column, `n_seeds` says which rows were measured over seeds
    summary = csv(pd.DataFrame({"method": ["a", "b", "full"], "ppl": [30.0, 40.0, 20.0], "ppl_std": [0.3, 0.0, 0.0],
                                "n_seeds": [2, 2, 1]}))
    rules = (Rule("s", "trained"),)
    assert failures({"s.csv": summary}, {"s.csv": perturbed(summary, "ppl", 1, 40.0 + 0.9 * SPREAD_FACTOR * 0.01 * 40)},
                    rules) == []
    assert failures({"s.csv": summary}, {"s.csv": perturbed(summary, "ppl", 2, 20.01)}, rules) == [("s", "ppl")]


def test_a_spread_is_never_checked_tighter_than_its_mean():
    table = csv(pd.DataFrame({"capacity": [0.4], "realized": [0.4073], "realized_std": [3.5e-5], "n_seeds": [2]}))
    rules = (Rule("c", "decision", ("realized*",), rtol=0.01),)
    moved = perturbed(perturbed(table, "realized", 0, 0.4088), "realized_std", 0, 1.6e-4)
    assert failures({"c.csv": table}, {"c.csv": moved}, rules) == []  # both within 1 % of the mean
    assert failures({"c.csv": table}, {"c.csv": perturbed(table, "realized_std", 0, 0.01)},
                    rules) == [("c", "realized_std")]


def test_reported_columns_never_fail_and_an_absolute_floor_covers_values_near_zero():
    table = csv(pd.DataFrame({"budget": [0.5], "abs_error": [0.0008], "matching_prefix": [3]}))
    rules = (Rule("g", "report", ("matching_prefix",)), Rule("g", "decision", ("abs_error",), atol=0.01))
    assert failures({"g.csv": table}, {"g.csv": perturbed(table, "matching_prefix", 0, 0)}, rules) == []
    report = compare_files({"g.csv": table}, {"g.csv": perturbed(table, "matching_prefix", 0, 0)}, rules)
    assert [(c.kind, c.committed, c.fresh) for c in report.checks
            if c.column == "matching_prefix"] == [("report", 3, 0)]
    assert failures({"g.csv": table}, {"g.csv": perturbed(table, "abs_error", 0, 0.0003)}, rules) == []
    assert failures({"g.csv": table}, {"g.csv": perturbed(table, "abs_error", 0, 0.02)}, rules) == [("g", "abs_error")]


def test_a_std_column_sets_the_tolerance_of_its_mean_and_a_reference_floors_it():
    table = csv(pd.DataFrame({"method": ["rl"], "0.2": [30.0], "0.2_std": [0.5]}))
    rules = (Rule("s", "trained"),)
    assert failures({"s.csv": table}, {"s.csv": perturbed(table, "0.2", 0, 31.4)}, rules) == []
    assert failures({"s.csv": table}, {"s.csv": perturbed(table, "0.2", 0, 31.6)}, rules) == [("s", "0.2")]
    floored = (Rule("s", "trained", reference="bypass"),)
    assert failures({"s.csv": table}, {"s.csv": perturbed(table, "0.2", 0, 31.6)}, floored, {"bypass": 0.02}) == []


def test_bounds_decisions_timings_and_missing_files():
    exact = csv(pd.DataFrame({"max_abs_logit_diff": [2e-5], "text": ["a b"]}))
    rules = (Rule("e", "bound", ("max_abs_logit_diff",), bound=1e-4), Rule("e", "decision", ("text",)),
             Rule("*_timings", "skip"))
    assert failures({"e.csv": exact}, {"e.csv": perturbed(exact, "max_abs_logit_diff", 0, 9e-5)}, rules) == []
    assert failures({"e.csv": exact}, {"e.csv": perturbed(exact, "max_abs_logit_diff", 0, 2e-4)},
                    rules) == [("e", "max_abs_logit_diff")]
    # reported, not failed
    assert failures({"e.csv": exact}, {"e.csv": perturbed(exact, "text", 0, "a c")}, rules) == []
    assert failures({"05_timings.csv": EVAL}, {"05_timings.csv": perturbed(EVAL, "ppl", 0, 99.0)}, rules) == []
    assert failures({"a.csv": EVAL}, {}, rules) == [("a", "(file)")]
    assert failures({"a.csv": EVAL}, {"a.csv": csv(pd.read_csv(pd.io.common.StringIO(EVAL)).iloc[:1])},
                    rules) == [("a", "(rows)")]


def test_every_timings_file_is_skipped_by_the_real_rules():
    # wall times change from run to run: reported, never compared (timings_malloc.json was once compared as numbers)
    for name in ("timings_malloc", "timings_reproduce", "timings_reproduce_cells", "05_timings", "int8_timings",
                 "bench_decode"):
        assert kind_of(RULES, name, "median.default.wall", numeric=True).kind == "skip", name
    assert kind_of(RULES, "06_frontier", "ppl", numeric=True).kind != "skip"


def test_reference_spreads_are_measured_in_the_committed_files():
    families = csv(pd.DataFrame({"bypass": ["lin tuned"] * 3 + ["lin"],
                                 "removal_order": ["greedy"] * 3 + ["block_influence"], "split": ["test"] * 4,
                                 "tuned": [True] * 3 + [False], "ppl_k3": [10.0, 11.0, 12.0, 50.0]}))
    ref = Reference("02_bypass_families", ("ppl_k*",), keys=("bypass", "removal_order", "split"),
                    where=(("tuned", True),))
    assert ref.measure(pd.read_csv(pd.io.common.StringIO(families))) == pytest.approx(1.0 / 11.0)
    spreads = reference_spreads({"02_bypass_families.csv": families})
    assert spreads["bypass"] == pytest.approx(1.0 / 11.0) and spreads["controllers"] == 0.0
    # committed before the key existed
    older = pd.read_csv(pd.io.common.StringIO(families)).drop(columns="removal_order")
    assert ref.measure(older) == pytest.approx(1.0 / 11.0)


def test_a_std_reference_skips_means_without_a_spread_column():
    """A one-seed file (quick profile) has no `<col>_std`: no spread is measured from it, not a KeyError."""
    table = pd.DataFrame({"method": ["anee_rl", "anee_heuristic"], "0.1": [30.0, 33.0], "0.2": [40.0, 44.0],
                          "0.2_std": [4.0, 0.0]})
    ref = Reference("06_ppl_at_equal_savings", ("0.*",), where=(("method", "anee_"),), std_columns=True)
    assert ref.measure(table) == pytest.approx(0.1)
    assert ref.measure(table.drop(columns="0.2_std")) == 0.0


def test_every_rule_names_a_known_kind_and_downstream_rules_say_why():
    assert all(r.kind in ("exact", "eval", "decision", "trained", "bound", "report", "skip") for r in RULES)
    assert all(r.why for r in RULES if (r.kind == "decision" and r.columns == ("*",)) or r.kind == "report" or r.atol)


def test_generation_files_are_decisions_and_the_api_must_match_06():
    """01 and 09 hold the shipped controllers' greedy generations: one prompt's numbers are reported (a
    flipped token sends the rest elsewhere), their means over prompts are decisions (floored by the
    controllers' seed spread), text is reported; the API's perplexity stays within 1e-5 of 06's."""
    assert kind_of(RULES, "09_generations_prefill_adaptive", "text", False).kind == "decision"
    for file, column in (("09_prefill_adaptive_summary", "layer_fraction"), ("09_quickstart_summary", "top1_agreement"),
                         ("09_api_vs_06", "ppl")):
        rule = kind_of(RULES, file, column, True)
        assert rule.kind == "decision" and rule.reference == "controllers", (file, column)
    assert kind_of(RULES, "09_quickstart_summary", "matching_prefix", True).atol == 0.1  # 20 prompts: steps of 0.05
    for file, column in (("01_budget_generations", "matching_prefix"), ("09_generations", "layer_fraction"),
                         ("09_generations", "layer_fraction_with_prompt")):
        assert kind_of(RULES, file, column, True).kind == "report", (file, column)
    assert kind_of(RULES, "09_api_vs_06", "rel_diff", True).bound == 1e-5
    assert kind_of(RULES, "01_exactness", "max_abs_logit_diff", True).kind == "bound"
    # the budget-1.0 exactness check stays as tight as before: evaluation-only numbers, exact flags
    assert kind_of(RULES, "01_exactness", "tokens_compared", True).kind == "eval"
    assert kind_of(RULES, "01_exactness", "greedy_tokens_identical", False).kind == "exact"
    assert kind_of(RULES, "09_generations", "controller", False).kind == "exact"
    api = csv(pd.DataFrame({"method": ["rl"], "ppl": [27.5], "rel_diff": [5e-7]}))
    assert failures({"09_api_vs_06.csv": api}, {"09_api_vs_06.csv": perturbed(api, "rel_diff", 0, 2e-5)},
                    RULES) == [("09_api_vs_06", "rel_diff")]


def test_command_line_fails_on_a_perturbed_number(tmp_path, monkeypatch, capsys):
    """The CLI compares results/ with a commit of a git repository and exits non-zero naming the file and column."""
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "06_frontier.csv").write_text(EVAL)
    for args in (["add", "-A"], ["-c", "user.email=a@b", "-c", "user.name=t", "commit", "-qm", "results"]):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True)
    monkeypatch.setenv("ANEE_OUTPUT_ROOT", str(tmp_path))
    assert main([]) == 0
    (tmp_path / "results" / "06_frontier.csv").write_text(perturbed(EVAL, "ppl", 1, 31.0))
    assert main([]) == 1
    out = capsys.readouterr()
    assert "06_frontier" in out.out and "ppl" in out.out and "FAILED" in out.err


def test_stale_by_notebook_lists_changed_code_but_not_run_outputs(tmp_path):
    import subprocess

    from anee.evaluation.verify import stale_by_notebook

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    for rel in ("anee/engine/x.py", "anee/defaults/m/manifest.json", "notebooks/src/01.py", "notebooks/01.ipynb",
                "README.md", "anee/cli/bench.py", "anee/evaluation/verify.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("a\n")
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "results")
    commit = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    assert stale_by_notebook(tmp_path, {"code_commit": commit}) == {}
    for rel in ("anee/defaults/m/manifest.json", "notebooks/01.ipynb", "README.md", "anee/cli/bench.py",
                "anee/evaluation/verify.py"):  # run outputs, prose, what no notebook runs
        (tmp_path / rel).write_text("b\n")
    assert stale_by_notebook(tmp_path, {"code_commit": commit}) == {}
    (tmp_path / "anee/engine/x.py").write_text("b\n")
    (tmp_path / "notebooks/src/01.py").write_text("b\n")
    assert stale_by_notebook(tmp_path, {"code_commit": commit}) == {"": ["anee/engine/x.py", "notebooks/src/01.py"]}
    assert stale_by_notebook(tmp_path, {})[""][0].startswith("(results/provenance.json names no commit")
    # per-notebook records (a partial rerun): a notebook is stale for the package and its own source only
    (tmp_path / "notebooks/src/02.py").write_text("a\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "rerun of 01")
    later = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"],
                           capture_output=True, text=True).stdout.strip()
    runs = {"notebooks": {"01": {"code_commit": later}, "02": {"code_commit": later}}}
    assert stale_by_notebook(tmp_path, runs) == {}
    (tmp_path / "notebooks/src/02.py").write_text("b\n")
    assert stale_by_notebook(tmp_path, runs) == {"02": ["notebooks/src/02.py"]}
    runs["notebooks"]["01"] = {"code_commit": commit}  # 01 ran before anee/engine/x.py and its own source changed
    assert stale_by_notebook(tmp_path, runs) == {"01": ["anee/engine/x.py", "notebooks/src/01.py"],
                                                 "02": ["notebooks/src/02.py"]}
    assert stale_by_notebook(tmp_path, {"notebooks": {"01": {}}}) == {
        "01": ["(results/provenance.json names no commit for 01)"]}


def test_a_std_beside_a_text_column_of_its_stem_is_floored_by_its_mean():
    """06_comparisons: `a` names the method, `a_ppl` / `a_std` its perplexity and seed spread. Two seeds
    that agreed (spread 0.0005) may disagree elsewhere: the spread may move as far as its mean may."""
    table = csv(pd.DataFrame({"a": ["rl"], "b": ["bi"], "a_ppl": [30.0], "a_std": [0.0005], "b_ppl": [31.0],
                              "b_std": [0.5], "verdict": ["a"]}))
    rules = (Rule("cmp", "decision", ("verdict",)), Rule("cmp", "trained", ("a_*", "b_*"), reference="bypass"),
             Rule("cmp", "exact", ("a", "b")))
    refs = {"bypass": 0.02}  # a_ppl may move 3 x 0.02 x 30 = 1.8
    assert failures({"cmp.csv": table}, {"cmp.csv": perturbed(table, "a_std", 0, 0.12)}, rules, refs) == []
    assert failures({"cmp.csv": table}, {"cmp.csv": perturbed(table, "a_std", 0, 2.0)},
                    rules, refs) == [("cmp", "a_std")]
    # reported
    assert failures({"cmp.csv": table}, {"cmp.csv": perturbed(table, "verdict", 0, "tie")}, rules, refs) == []
    assert failures({"cmp.csv": table}, {"cmp.csv": perturbed(table, "a", 0, "heuristic")},
                    rules, refs) == [("cmp", "a")]
    shipped = [c for c in compare_files({"06_comparisons.csv": table},
                                        {"06_comparisons.csv": perturbed(table, "verdict", 0, "tie")},
                                        RULES).checks if c.column == "verdict"]
    assert [(c.kind, c.ok) for c in shipped] == [("decision", True)]


def test_int8_kernel_values_are_compared_only_on_the_same_cpu_capability():
    from anee.evaluation.verify import CPU_KEY, PROVENANCE, rules_for

    assert rules_for("AVX2", "AVX2") == RULES
    for committed, fresh in (("AVX512", "AVX2"), (None, "AVX2"), ("AVX2", None)):
        rules = rules_for(committed, fresh)
        assert [r.kind for r in rules if r.cpu_kernel] == ["report", "report", "report"]
        assert [r for r in rules if not r.cpu_kernel] == [r for r in RULES if not r.cpu_kernel]
    int8 = {"int8_smoothed": {"ppl": 25.78, "kl_first_window": 0.008}, "fp32": {"ppl": 25.49}}
    moved = {"int8_smoothed": {"ppl": 26.14, "kl_first_window": 0.027}, "fp32": {"ppl": 25.49}}
    assert failures({"int8_quality.json": json.dumps(int8)}, {"int8_quality.json": json.dumps(moved)}, RULES) == [
        ("int8_quality", "int8_smoothed.kl_first_window"), ("int8_quality", "int8_smoothed.ppl")]
    assert failures({"int8_quality.json": json.dumps(int8)}, {"int8_quality.json": json.dumps(moved)},
                    rules_for("AVX512", "AVX2")) == []
    fp32_moved = {**int8, "fp32": {"ppl": 26.0}}  # fp32 is no INT8 kernel's: compared on any CPU
    assert failures({"int8_quality.json": json.dumps(int8)}, {"int8_quality.json": json.dumps(fp32_moved)},
                    rules_for("AVX512", "AVX2")) == [("int8_quality", "fp32.ppl")]
    assert PROVENANCE == "provenance.json" and CPU_KEY == "cpu_capability"


def test_a_row_scoped_rule_covers_only_the_rows_it_selects():
    from anee.evaluation.verify import rules_for

    pool = pd.DataFrame({"variant": ["fp32", "int8", "int8-kernel"], "weights": ["fp32", "fake-quant", "INT8 kernels"],
                         "ppl_test": [42.1853, 42.0395, 96.1163]})
    committed = {"08_pool.csv": csv(pool)}
    kernel_moved = {"08_pool.csv": perturbed(csv(pool), "ppl_test", 2, 93.4586)}  # what an AVX-512 run gave: -2.8 %
    assert failures(committed, kernel_moved, RULES) == [("08_pool", "ppl_test")]  # same CPU kind: beyond 1 %
    assert failures(committed, kernel_moved, rules_for("AVX512", "AVX2")) == []  # another kind: reported
    fp32_moved = {"08_pool.csv": perturbed(csv(pool), "ppl_test", 1, 42.0395 * 1.001)}
    for rules in (RULES, rules_for("AVX512", "AVX2")):  # the fake-quant row is an evaluation on any CPU
        assert failures(committed, fp32_moved, rules) == [("08_pool", "ppl_test")]
    kinds = [c.kind for c in compare_files(committed, kernel_moved, rules_for("AVX512", "AVX2")).checks
             if c.column == "ppl_test"]
    assert kinds == ["eval", "eval", "report"]
    assert kind_of(RULES, "08_pool", "ppl_test", True).kind == "eval"  # without a row, the row-scoped rule stays out
    with pytest.raises(ValueError, match="where must be"):
        Rule("x", "trained", where=("weights", "INT8 kernels"))


def test_command_line_reports_int8_values_across_cpu_kinds(tmp_path, monkeypatch, capsys):
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    results = tmp_path / "results"
    results.mkdir()
    (results / "int8_quality.json").write_text(json.dumps({"int8_smoothed": {"ppl": 25.78}}))
    (results / "provenance.json").write_text(json.dumps({"cpu_capability": "AVX512"}))
    for args in (["add", "-A"], ["-c", "user.email=a@b", "-c", "user.name=t", "commit", "-qm", "results"]):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True)
    monkeypatch.setenv("ANEE_OUTPUT_ROOT", str(tmp_path))
    (results / "int8_quality.json").write_text(json.dumps({"int8_smoothed": {"ppl": 26.14}}))
    assert main([]) == 1  # the same CPU capability (the committed provenance is the fresh one): compared
    (results / "provenance.json").write_text(json.dumps({"cpu_capability": "AVX2"}))
    assert main([]) == 0
    assert "committed AVX512, fresh AVX2" in capsys.readouterr().out


def test_a_key_on_one_side_fails_unless_its_rule_skips_it():
    old = {"code_commit": "abc", "machine": "x86_64"}
    new = {**old, "cpu_capability": "AVX2"}  # a run that records one field more than the committed one
    assert failures({"provenance.json": json.dumps(old)}, {"provenance.json": json.dumps(new)}, RULES) == []
    assert failures({"provenance.json": json.dumps(new)}, {"provenance.json": json.dumps(old)}, RULES) == []
    summary = {"ppl": 25.5}
    for committed, fresh in ((summary, {**summary, "kl": 0.01}), ({**summary, "kl": 0.01}, summary)):
        checks = compare_files({"06_findings.json": json.dumps(committed)}, {"06_findings.json": json.dumps(fresh)},
                               RULES).checks
        assert [(c.column, c.ok) for c in checks] == [("(keys)", False)]
        assert checks[0].committed + checks[0].fresh == ["kl"]


def test_the_kl_profile_files_run_with_the_tuned_bypass_and_the_rl_loss_is_per_step():
    table = kind_of(RULES, "03_kl_profile_table", "valid_ppl", True)
    assert (table.kind, table.reference) == ("decision", "bypass")
    assert kind_of(RULES, "03_kl_profile_summary", "bypass", False).kind == "exact"  # the bypass's label
    assert kind_of(RULES, "04_rl_history", "loss", True).kind == "report"
    assert kind_of(RULES, "04_rl_history", "kl", True).kind == "trained"
