"""Notebook 08's table and summary on fake scores."""

import math

import numpy as np
import pandas as pd
import pytest
from _anee_tiny import BANK, FULL_BYTES

from anee.evaluation.granularity.strategies import WindowScores
from anee.evaluation.granularity.table import cheapest_within, describe_best, granularity_summary, granularity_table


def scores(ppl: float, rel_macs: float, rel_bytes: float, windows: int = 2, tokens: int = 10) -> WindowScores:
    """Fake per-window scores with a given perplexity, relative MACs and relative bytes."""
    tok = np.full(windows, float(tokens))
    full = np.full(windows, 100.0)
    return WindowScores(nll=tok * math.log(ppl), tokens=tok, macs=full * rel_macs, full_macs=full,
                        bytes=tok * FULL_BYTES * rel_bytes)


def write_frontier06(path, rows):
    pd.DataFrame(rows, columns=["method", "setting", "ppl", "total_saved_net"]).to_csv(path, index=False)
    return path


FRONTIER06 = [
    ("full", "", 20.0, 0.0),
    ("block_influence", "k=2", 50.0, 0.2),  # a baseline 08 runs itself: not imported
    ("anee_rl", "budget=0.9", 30.0, 0.1),
    ("hierarchical", None, 25.0, 0.25),
]


def build_table(frontier06):
    pool_test = {"fp32": scores(40.0, 1.0, 1.0), "int4": scores(60.0, 1.0, 0.3)}
    sel_table = pd.DataFrame([{"selector": "fuzzy", "budget": 0.5, "ppl": 50.0, "rel_bytes": 0.45,
                               "max_window_rel_bytes": 1.0, "rel_macs": 1.0, "variants_used": "fp32,int4"}])
    bn_table = pd.DataFrame([{"threshold": 0.1, "accuracy": 0.9, "avg_macs": 5.0, "rel_macs": 0.5, "exit1_frac": 0.3}])
    return granularity_table(
        bank=BANK, pool_test=pool_test, sel_table=sel_table, exit_checks=[2, 3],
        exit_scores={0.1: scores(80.0, 1.2, 1.3)}, seg_scores={0.4: scores(42.0, 1.0, 0.38)},
        prog_scores={0.5: (scores(41.0, 1.4, 0.49), 0.25, 0.7)}, anee_scores={0.9: scores(100.0, 0.9, 0.92)},
        bn_table=bn_table, frontier06=frontier06)


def test_table_columns_rows_and_energy_unit(tmp_path):
    table = build_table(write_frontier06(tmp_path / "06_frontier.csv", FRONTIER06))
    assert list(table.columns) == ["granularity", "strategy", "setting", "energy_unit", "budget", "rel_energy",
                                   "rel_macs", "rel_bytes", "quality_metric", "quality", "quality_rel_fp32", "source"]
    assert list(table.strategy) == ["variant fp32", "variant int4", "select fuzzy", "LM entropy exit",
                                    "segment precision",
                                    "progressive INT4->INT8", "ANEE budget", "BranchyNet (digits)", "06 anee_rl",
                                    "06 hierarchical"]
    assert list(table.setting[:8]) == ["fp32", "int4", "budget=0.5", "checks=[2, 3],thr=0.1", "budget=0.4",
                                       "budget=0.5,refined=0.25", "budget=0.9", "thr=0.1"]
    t = table.set_index("strategy")
    assert (t.loc["variant int4", "rel_bytes"] == pytest.approx(0.3)
            and t.loc["variant int4", "rel_macs"] == pytest.approx(1.0))
    # rel_energy is the row's cost in its own budget unit: bytes for weight-byte rows, MACs otherwise
    bytes_rows = table.energy_unit == "weight bytes"
    assert bytes_rows.sum() == 5
    assert np.allclose(table.rel_energy[bytes_rows], table.rel_bytes[bytes_rows])
    assert np.allclose(table.rel_energy[~bytes_rows], table.rel_macs[~bytes_rows])
    assert t.loc["LM entropy exit", "rel_energy"] == pytest.approx(1.2)
    assert t.loc["ANEE budget", "rel_energy"] == pytest.approx(0.9)
    # 08's perplexities relative to the fp32 variant; accuracy rows have none
    assert t.loc["segment precision", "quality_rel_fp32"] == pytest.approx(42.0 / 40.0)
    assert t.loc["select fuzzy", "quality_rel_fp32"] == pytest.approx(50.0 / 40.0)
    assert math.isnan(t.loc["BranchyNet (digits)", "quality_rel_fp32"])
    assert math.isnan(t.loc["variant fp32", "budget"]) and t.loc["segment precision", "budget"] == 0.4


def test_frontier06_rows_use_06s_own_full_model(tmp_path):
    table = build_table(write_frontier06(tmp_path / "06_frontier.csv", FRONTIER06))
    r06 = table[table.granularity == "06"].set_index("strategy")
    assert list(r06.index) == ["06 anee_rl", "06 hierarchical"]
    assert r06.loc["06 anee_rl", "quality_rel_fp32"] == pytest.approx(30.0 / 20.0)  # 06's full ppl, not 08's fp32
    assert r06.loc["06 anee_rl", "rel_macs"] == pytest.approx(0.9) == r06.loc["06 anee_rl", "rel_energy"]
    assert r06.loc["06 hierarchical", "setting"] == ""  # missing setting
    assert (r06.energy_unit == "MACs").all() and r06.rel_bytes.isna().all()
    assert (r06.source == "06_frontier.csv (06's windows)").all()


def test_missing_or_unusable_06_file_gives_no_06_rows(tmp_path):
    assert not (build_table(tmp_path / "absent.csv").granularity == "06").any()
    no_full = write_frontier06(tmp_path / "no_full.csv", FRONTIER06[1:])
    table = build_table(no_full)
    assert not (table.granularity == "06").any() and len(table) == 8
    # quality_rel_fp32 still exists (created for 08's rows) and keeps its place
    assert table.columns[10] == "quality_rel_fp32" and table.quality_rel_fp32.iloc[1] == pytest.approx(1.5)


def test_summary_picks_cheapest_by_bytes_within_5_percent():
    rows = [  # granularity, strategy, rel_bytes, quality
        ("coarse", "a", 0.40, 41.0),
        ("coarse", "b", 0.30, 45.0),  # cheaper, but 12.5 % worse
        ("coarse", "c", 0.35, 42.0),  # exactly 5 % worse: still within
        ("fine", "d", 0.50, 40.0),
        ("fine", "e", 0.45, 40.5),
        ("medium", "f", 0.10, 90.0),
        ("06", "g", np.nan, 10.0),  # other windows: never part of the summary
    ]
    table = pd.DataFrame([{"granularity": g, "strategy": s, "setting": f"s-{s}", "rel_bytes": b, "rel_macs": 1.0,
                           "quality_metric": "ppl", "quality": q} for g, s, b, q in rows]
                         + [{"granularity": "medium", "strategy": "bn", "setting": "", "rel_bytes": 0.01,
                             "rel_macs": 0.1, "quality_metric": "accuracy", "quality": 0.9}])
    best = cheapest_within(table, fp32_ppl=40.0)
    assert list(best) == ["coarse", "medium", "fine", "anee"]
    assert best["coarse"]["strategy"] == "c" and best["fine"]["strategy"] == "e"
    assert best["medium"] is None and best["anee"] is None
    assert set(best["coarse"]) == {"strategy", "setting", "rel_bytes", "rel_macs", "quality"}
    assert cheapest_within(table, fp32_ppl=40.0, tol=0.2)["coarse"]["strategy"] == "b"
    summary = granularity_summary(table, 40.0, [0.1, 0.2], bn_epochs=3)
    assert summary == {"fp32_ppl": 40.0, "cheapest_within_5pct_of_fp32_by_bytes": best,
                       "segment_sensitivity": [0.1, 0.2], "bn_epochs": 3}
    lines = describe_best(best)
    assert lines[0].startswith("coarse  c s-c: bytes 0.350") and lines[1] == "medium  none within 5% of fp32"


def test_kernel_rows_and_decode_plan(tmp_path):
    from anee.evaluation.granularity.speed import Decode, Mix
    from anee.evaluation.granularity.table import decode_plan

    fp32, int4 = Decode(), Decode(budget=0.5)  # stand-ins: any two distinguishable decodes
    pool_test = {"fp32": scores(40.0, 1.0, 1.0), "int4": scores(60.0, 1.0, 0.3), "int8-kernel": scores(41.0, 1.0, 0.4)}
    pool_test["fp32"].decode, pool_test["int4"].decode = fp32, int4
    pool_test["int4"].tokens = np.array([10.0, 30.0])
    sel_table = pd.DataFrame([{"selector": "fuzzy", "budget": 0.5, "ppl": 50.0, "rel_bytes": 0.45,
                               "max_window_rel_bytes": 1.0, "rel_macs": 1.0, "variants_used": "fp32,int4"}])
    bn_table = pd.DataFrame([{"threshold": 0.1, "accuracy": 0.9, "avg_macs": 5.0, "rel_macs": 0.5, "exit1_frac": 0.3}])
    parts = dict(bank=BANK, pool_test=pool_test, sel_table=sel_table, exit_checks=[2], exit_scores={},
                 seg_scores={}, prog_scores={}, anee_scores={0.9: scores(100.0, 0.9, 0.92)}, bn_table=bn_table,
                 frontier06=tmp_path / "absent.csv", kernel_seg_scores={0.7: scores(41.0, 1.0, 0.7)},
                 anee_int8_scores={0.9: scores(101.0, 0.9, 0.36)}, choices={("fuzzy", 0.5): ["fp32", "int4"]})
    table = granularity_table(**parts)
    assert list(table.strategy) == ["variant fp32", "variant int4", "variant int8-kernel", "select fuzzy",
                                    "segment precision (INT8 kernels)", "ANEE budget", "ANEE budget + INT8 kernels",
                                    "BranchyNet (digits)"]
    plan = decode_plan(**parts)
    assert list(plan) == list(zip(table.strategy, table.setting))
    assert plan[("variant fp32", "fp32")] is fp32 and plan[("variant int8-kernel", "int8-kernel")] is None
    mix = plan[("select fuzzy", "budget=0.5")]  # window 0 (10 tokens) at fp32, window 1 (30 tokens) at int4
    assert isinstance(mix, Mix) and mix.parts == ((0.25, fp32), (0.75, int4))
    assert plan[("BranchyNet (digits)", "thr=0.1")] is None
