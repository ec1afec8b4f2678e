"""Seed spread: sample standard deviation, per-group summaries, and verdicts that call a difference
within the spread a tie."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from anee.evaluation.seeds import spread, summarize, verdict


def test_spread_is_the_sample_standard_deviation():
    assert spread([1.0, 2.0, 3.0]) == pytest.approx(1.0)  # ddof = 1
    assert spread([10.0, 14.0]) == pytest.approx(math.sqrt(8.0))
    assert spread([5.0]) == 0.0 and spread([]) == 0.0
    assert spread((2.0, 2.0, 2.0)) == 0.0


def test_summarize_gives_means_spreads_and_seed_counts():
    table = pd.DataFrame({"method": ["a", "a", "b", "a", "a", "b"], "level": [0.1, 0.1, 0.1, 0.2, 0.2, 0.2],
                          "seed": [0, 1, -1, 0, 1, -1], "ppl": [10.0, 14.0, 20.0, 30.0, 31.0, 40.0],
                          "saved": [0.1, 0.3, 0.2, 0.2, 0.2, 0.2]})
    out = summarize(table, ["method", "level"], ["ppl", "saved"])
    assert list(out.columns) == ["method", "level", "ppl", "ppl_std", "saved", "saved_std", "n_seeds"]
    # first-seen order
    assert out[["method", "level"]].values.tolist() == [["a", 0.1], ["b", 0.1], ["a", 0.2], ["b", 0.2]]
    assert out.ppl.tolist() == pytest.approx([12.0, 20.0, 30.5, 40.0])
    assert out.ppl_std.tolist() == pytest.approx([math.sqrt(8.0), 0.0, math.sqrt(0.5), 0.0])
    assert out.saved.tolist() == pytest.approx([0.2, 0.2, 0.2, 0.2])
    assert out.saved_std.tolist() == pytest.approx([math.sqrt(0.02), 0.0, 0.0, 0.0])
    assert out.n_seeds.tolist() == [2, 1, 2, 1]
    no_seed = summarize(table.drop(columns="seed"), ["method"], ["ppl"])
    assert no_seed.n_seeds.tolist() == [1, 1] and no_seed.ppl.tolist() == pytest.approx([21.25, 30.0])
    # another column names the runs
    assert summarize(table, ["method"], ["ppl"], seed="level").n_seeds.tolist() == [2, 2]


@pytest.mark.parametrize("a, a_std, b, b_std, lower, expect", [
    (10.0, 1.0, 12.0, 0.5, True, "a"),  # 2 apart, spreads at most 1
    (12.0, 0.5, 10.0, 1.0, True, "b"),
    (10.0, 1.0, 10.9, 0.2, True, "tie"),  # within the larger spread
    (10.0, 0.2, 11.0, 1.0, True, "tie"),  # exactly the larger spread: not more than it
    (10.0, 0.1, 12.0, 0.1, False, "b"),  # higher is better
    (100.0, 0.0, 100.05, 0.0, True, "tie"),  # deterministic methods within 1e-3 of the values
    (100.0, 0.0, 100.2, 0.0, True, "a"),
    (float("nan"), 0.0, 10.0, 0.0, True, "n/a"),
    (10.0, 0.0, float("nan"), 0.0, True, "n/a"),
])
def test_verdict(a, a_std, b, b_std, lower, expect):
    assert verdict(a, a_std, b, b_std, lower_is_better=lower) == expect


def test_verdict_floor():
    assert verdict(100.0, 0.0, 100.05, 0.0, floor=1e-4) == "a"
    assert verdict(100.0, 0.0, 100.5, 0.0, floor=1e-2) == "tie"


def test_verdict_is_symmetric_when_a_spread_is_nan():
    nan = float("nan")
    assert verdict(10.0, nan, 12.0, 0.1) == {"a": "b", "b": "a", "tie": "tie",
                                             "n/a": "n/a"}[verdict(12.0, 0.1, 10.0, nan)]


def test_split_seed_separates_the_label_and_the_seed():
    from anee.evaluation.seeds import split_seed

    table = pd.DataFrame({"controller": ["heuristic", "warmstart-s0", "warmstart-s12", "rl-s1"], "budget": [0.5] * 4})
    out = split_seed(table)
    assert out.controller.tolist() == ["heuristic", "warmstart", "warmstart", "rl"]
    assert out.seed.tolist() == [-1, 0, 12, 1] and list(out.columns) == ["controller", "seed", "budget"]
    assert table.controller.tolist()[1] == "warmstart-s0"  # the input is not modified
