"""Notebook 08's pool, selector and table helpers on tiny inputs (fake scores, a tiny LLaMA)."""

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from _anee_tiny import quant_llama

from anee import AdaptiveExecutor, adapter_for
from anee.granularity import Strategies, WindowScores
from anee.granularity_pool import (
    Pool,
    budget_violations,
    make_selectors,
    measure_pool,
    pool_specs,
    pool_timings,
    quantisation_check,
    run_selectors,
    selector_budgets,
)
from anee.granularity_table import cheapest_within, describe_best, granularity_summary, granularity_table
from anee.perplexity import EvalContext
from anee.quantize import FP32, WeightBank
from anee.selection import Variant

FULL_BYTES = 1000.0
BANK = SimpleNamespace(full_bytes=FULL_BYTES)  # WindowScores.rel_bytes only reads full_bytes


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
    assert list(table.columns) == ["granularity", "strategy", "setting", "energy_unit", "budget", "rel_energy", "rel_macs",
                                   "rel_bytes", "quality_metric", "quality", "quality_rel_fp32", "source"]
    assert list(table.strategy) == ["variant fp32", "variant int4", "select fuzzy", "LM entropy exit", "segment precision",
                                    "progressive INT4->INT8", "ANEE budget", "BranchyNet (digits)", "06 anee_rl",
                                    "06 hierarchical"]
    assert list(table.setting[:8]) == ["fp32", "int4", "budget=0.5", "checks=[2, 3],thr=0.1", "budget=0.4",
                                       "budget=0.5,refined=0.25", "budget=0.9", "thr=0.1"]
    t = table.set_index("strategy")
    assert t.loc["variant int4", "rel_bytes"] == pytest.approx(0.3) and t.loc["variant int4", "rel_macs"] == pytest.approx(1.0)
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


def fake_pool() -> Pool:
    """Three variants over four windows; int4 is bad on windows 2 and 3."""
    tok = np.array([10.0, 10.0, 20.0, 20.0])
    full = np.full(4, 100.0)

    def ws(nll_per_tok, rel_bytes, rel_macs=1.0):
        return WindowScores(np.asarray(nll_per_tok) * tok, tok, full * rel_macs, full, tok * FULL_BYTES * rel_bytes)

    test = {"fp32": ws([3.0] * 4, 1.0), "int8": ws([3.1] * 4, 0.4), "int4": ws([3.5, 3.5, 5.0, 5.0], 0.3, 0.9)}
    cal = {"fp32": ws([3.0] * 4, 1.0), "int8": ws([3.05] * 4, 0.4), "int4": ws([3.4] * 4, 0.3)}
    specs = {"fp32": (FP32, ()), "int8": (8, ()), "int4": (4, ())}
    return Pool(specs, test, cal, BANK, num_layers=4)


class FixedSelector:
    def __init__(self, chosen):
        self.chosen = chosen

    def select(self, features, budget):
        return list(self.chosen)


def test_run_selectors_scores_the_chosen_windows():
    pool = fake_pool()
    f_test = np.zeros((4, 3))
    table, choices = run_selectors({"fixed": FixedSelector([2, 1, 2, 0])}, pool, f_test, [0.5, 1.0])
    assert list(table.columns) == ["selector", "budget", "ppl", "rel_bytes", "max_window_rel_bytes", "rel_macs",
                                   "variants_used"]
    assert list(table.budget) == [0.5, 1.0]
    r = table.iloc[0]
    nll = 3.5 * 10 + 3.1 * 10 + 5.0 * 20 + 3.0 * 20
    assert r.ppl == pytest.approx(math.exp(nll / 60))
    assert r.rel_bytes == pytest.approx((0.3 * 10 + 0.4 * 10 + 0.3 * 20 + 1.0 * 20) / 60)  # weighted by tokens
    assert r.max_window_rel_bytes == pytest.approx(1.0)
    assert r.rel_macs == pytest.approx((90 + 100 + 90 + 100) / 400)
    assert r.variants_used == "fp32,int4,int8"
    assert choices[("fixed", 0.5)] == ["int4", "int8", "int4", "fp32"]


def test_budget_violations_running_mean_and_per_input():
    variants = fake_pool().variants()
    assert [v.cost for v in variants] == pytest.approx([1.0, 0.4, 0.3])
    ok = {("fuzzy", 0.5): ["int4", "int4", "int8", "int4"]}
    assert budget_violations(ok, variants) == []
    late = {("fuzzy", 0.5): ["int4", "int4", "fp32", "int4"]}  # mean 0.53 after three windows
    assert budget_violations(late, variants) == [("fuzzy", 0.5)]
    early = {("moe-gate", 0.5): ["int8", "int8", "int8", "int4"]}  # fine on average ...
    assert budget_violations(early, variants) == []
    per_window = {("energy-aware", 0.35): ["int4", "int8", "int4", "int4"]}  # ... but not per window
    assert budget_violations(per_window, variants) == [("energy-aware", 0.35)]


def test_selector_budgets_and_real_selectors_honour_them():
    pool = fake_pool()
    variants = pool.variants()
    assert selector_budgets(variants) == [0.31, 0.35, 0.7, 1.0]
    # the Pareto front only: a dominated variant adds no midpoint
    assert selector_budgets(variants + [Variant("bad", 0.6, 9.0)]) == [0.31, 0.35, 0.7, 1.0]
    rng = np.random.default_rng(0)
    selectors = make_selectors(pool, rng.normal(size=(4, 3)))
    assert list(selectors) == ["energy-aware", "fuzzy", "moe-gate"]
    table, choices = run_selectors(selectors, pool, rng.normal(size=(4, 3)), [0.35, 0.7])
    assert len(table) == 6 and budget_violations(choices, variants) == []
    assert (table.rel_bytes <= table.budget + 1e-9).all()


def test_pool_specs_order_and_removed_layers():
    specs = pool_specs([3, 1, 0, 2], 1, 2)
    assert list(specs) == ["fp32", "int8", "int4", "fp32-drop1", "fp32-drop2", "int8-drop1"]
    assert specs["fp32-drop2"] == (FP32, (3, 1)) and specs["int8-drop1"] == (8, (3,)) and specs["int4"] == (4, ())


@pytest.fixture(scope="module")
def tiny():
    model = quant_llama(layers=4)
    adapter = adapter_for(model)
    executor = AdaptiveExecutor(adapter)
    bank = WeightBank(adapter, bits=(4, 8))
    return model, adapter, executor, bank


def test_quantisation_check_reads_the_live_weights(tiny):
    _, _, _, bank = tiny
    q = quantisation_check(bank, bits=(4, 8))
    assert list(q.columns) == ["bits", "max_levels_per_channel", "max_err_in_steps", "rel_bytes_per_token"]
    assert list(q.bits) == [4, 8]
    levels4, levels8 = q.max_levels_per_channel
    assert 2 < levels4 <= 2**4 - 1 < levels8  # fp32 weights would show ~48 distinct values per row
    assert (q.max_err_in_steps <= 0.5 + 1e-4).all() and (q.max_err_in_steps > 0.1).all()
    assert 0 < q.rel_bytes_per_token[0] < q.rel_bytes_per_token[1] < 1
    assert bank.current == [FP32] * 4  # restored


def test_measure_pool_and_timings_on_a_tiny_model(tiny):
    model, adapter, executor, bank = tiny
    gen = torch.Generator().manual_seed(0)
    test, calib = torch.randint(0, 97, (2, 12), generator=gen), torch.randint(0, 97, (1, 12), generator=gen)
    S = Strategies(EvalContext(model, None, executor), bank)
    specs = {"fp32": (FP32, ()), "int4": (4, ()), "fp32-drop1": (FP32, (2,))}
    pool = measure_pool(S, specs, test, calib)
    table = pool.table()
    assert list(table.columns) == ["variant", "bits", "layers", "ppl_test", "ppl_valid", "rel_macs", "rel_bytes"]
    assert list(table.variant) == list(specs) and list(table.layers) == [4, 4, 3]
    t = table.set_index("variant")
    with torch.no_grad():
        logits = model(test).logits[:, :-1]
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 97), test[:, 1:].reshape(-1)).exp().item()
    assert t.loc["fp32", "ppl_test"] == pytest.approx(ref, rel=1e-4)
    assert t.loc["fp32", "rel_bytes"] == pytest.approx(1.0) and t.loc["fp32", "rel_macs"] == pytest.approx(1.0)
    assert t.loc["int4", "rel_macs"] == pytest.approx(1.0) and t.loc["int4", "rel_bytes"] < 1
    assert t.loc["fp32-drop1", "rel_macs"] < 1 and t.loc["fp32-drop1", "rel_bytes"] < 1
    assert t.loc["int4", "ppl_test"] != t.loc["fp32", "ppl_test"]
    assert len(pool.cal["fp32"].nll) == 1 and len(pool.test["fp32"].nll) == 2
    timings = pool_timings(executor, bank, specs, probe=test[:1], repeats=1)
    assert list(timings.columns) == ["variant", "seconds_per_token", "threads"]
    assert list(timings.variant) == list(specs) and (timings.seconds_per_token > 0).all()
    assert (timings.threads == torch.get_num_threads()).all()
