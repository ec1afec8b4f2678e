"""Notebook 06's frontier helpers on hand-made frontiers with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from anee.evaluation.frontier import anchored, controller_overhead, equal_saving_tables, wins


def test_ppl_at_saving_interpolates_and_hull_removes_bumps():
    import numpy as np
    import pandas as pd

    from anee.evaluation.frontier import lower_hull, ppl_at_saving

    # method a: a bump at 0.2 (above the chord from 0.1 to 0.3); method b: a straight line in log-ppl
    df = pd.DataFrame({"method": ["a"] * 4 + ["b"] * 2, "layer_saved_net": [0.0, 0.1, 0.2, 0.3, 0.0, 0.4],
                       "ppl": [10.0, 15.0, 60.0, 40.0, 10.0, 10.0 * 2**4]})
    exact = ppl_at_saving(df, [0.2, 0.35]).set_index(["method", "net_saved"]).ppl
    assert exact["a", 0.2] == pytest.approx(60.0) and math.isnan(exact["a", 0.35])
    assert exact["b", 0.2] == pytest.approx(40.0)  # 10 * 2 ** (0.2 / 0.1)
    hull = ppl_at_saving(df, [0.2], hull=True).set_index("method").ppl
    assert hull["a"] == pytest.approx(math.sqrt(15.0 * 40.0))  # time-sharing 0.1 and 0.3
    assert hull["b"] == pytest.approx(40.0)
    x, y = np.array([0.0, 0.1, 0.1, 0.2, 0.3]), np.log([10.0, 14.0, 12.0, 60.0, 40.0])
    assert lower_hull(x, y).tolist() == [0, 2, 4]  # of two points at one saving, the lower; the bump dropped


def frontier() -> pd.DataFrame:
    """A 06-style frontier: the full model, two learned-vs-other methods and the every-layer heuristic.
    In log-ppl, anee_rl is a straight line, anee_heuristic has a bump at 0.2 (above the chord from 0
    to 0.4) and block_influence a dip there (below the chord)."""
    rows = [("full", "", 1.0, 0.0, 10.0),
            ("anee_rl", "budget=0.8", 0.8, 0.2, 20.0), ("anee_rl", "budget=0.6", 0.6, 0.4, 40.0),
            ("anee_heuristic", "budget=0.8", 0.8, 0.2, 30.0), ("anee_heuristic", "budget=0.6", 0.6, 0.4, 35.0),
            ("block_influence", "n_removed=1", 0.8, 0.2, 15.0), ("block_influence", "n_removed=2", 0.6, 0.4, 80.0),
            ("anee_heuristic_every_layer", "budget=0.7", 0.7, 0.25, 50.0),
            ("anee_heuristic_every_layer", "budget=0.5", 0.5, 0.44, 90.0)]
    return pd.DataFrame(rows, columns=["method", "setting", "layer_fraction", "layer_saved_net", "ppl"])


def test_anchored_copies_the_full_row_to_every_method():
    table = anchored(frontier())
    assert "full" not in set(table.method)
    assert sorted(table.method.unique()) == ["anee_heuristic", "anee_heuristic_every_layer", "anee_rl", "block_influence"]
    assert len(table) == 8 + 4  # every method's own rows plus the full model's, once per method
    at_zero = table[table.layer_saved_net == 0.0]
    assert sorted(at_zero.method) == sorted(table.method.unique()) and (at_zero.ppl == 10.0).all()
    assert (at_zero.setting == "").all() and (at_zero.layer_fraction == 1.0).all()
    assert len(anchored(frontier()[frontier().method != "full"])) == 8  # no full row: nothing to anchor with


def test_equal_saving_tables_interpolate_and_use_the_hull():
    levels = [0.1, 0.2, 0.3, 0.4, 0.5]
    at_levels, on_hull = equal_saving_tables(frontier(), levels)
    assert list(at_levels.columns) == levels and list(on_hull.columns) == levels
    assert sorted(at_levels.index) == ["anee_heuristic", "anee_heuristic_every_layer", "anee_rl", "block_influence"]
    rl, heur, bi = at_levels.loc["anee_rl"], at_levels.loc["anee_heuristic"], at_levels.loc["block_influence"]
    # log-ppl linear between the anchor (0, 10) and each method's points; NaN past the last point
    assert rl.tolist()[:4] == pytest.approx([math.sqrt(200), 20.0, math.sqrt(800), 40.0])
    assert heur.tolist()[:4] == pytest.approx([math.sqrt(300), 30.0, math.sqrt(1050), 35.0])
    assert bi.tolist()[:4] == pytest.approx([math.sqrt(150), 15.0, math.sqrt(1200), 80.0])
    assert np.isnan(at_levels[0.5]).all() and np.isnan(on_hull[0.5]).all() and at_levels.loc["anee_heuristic_every_layer", 0.4] == pytest.approx(
        math.exp(math.log(50) + (0.4 - 0.25) / (0.44 - 0.25) * (math.log(90) - math.log(50))))
    # the hull drops the heuristic's bump (time-sharing 0 and 0.4 is better) and keeps the others' points
    assert on_hull.loc["anee_heuristic"].tolist()[:4] == pytest.approx([10 * 3.5 ** 0.25, math.sqrt(350), 10 * 3.5 ** 0.75, 35.0])
    assert on_hull.loc["anee_rl"].tolist()[:4] == pytest.approx(rl.tolist()[:4])
    assert on_hull.loc["block_influence"].tolist()[:4] == pytest.approx(bi.tolist()[:4])


def test_wins_count_levels_where_learned_is_lower():
    at_levels, on_hull = equal_saving_tables(frontier(), [0.1, 0.2, 0.3, 0.4, 0.5])
    assert wins(at_levels, on_hull) == {  # anee_warmstart is not in the tables: no keys for it
        "anee_rl_beats_anee_heuristic_levels": 3, "anee_rl_beats_block_influence_levels": 2,
        "anee_rl_beats_anee_heuristic_levels_hull": 0, "anee_rl_beats_block_influence_levels_hull": 2}
    assert wins(at_levels, on_hull, learned=("block_influence",), others=("anee_rl",)) == {
        "block_influence_beats_anee_rl_levels": 2, "block_influence_beats_anee_rl_levels_hull": 2}
    # a method missing from the tables (e.g. its notebook has not run) gives no key, not a KeyError
    assert wins(at_levels, on_hull, others=("anee_heuristic", "logit_lens")) == {
        "anee_rl_beats_anee_heuristic_levels": 3, "anee_rl_beats_anee_heuristic_levels_hull": 0}


def test_controller_overhead_is_fraction_minus_saving():
    assert controller_overhead(frontier()) == pytest.approx(((0.3 - 0.25) + (0.5 - 0.44)) / 2)
    assert controller_overhead(frontier(), "anee_rl") == pytest.approx(0.0)  # no overhead recorded
    assert controller_overhead(frontier(), "full") == pytest.approx(0.0)
