"""Notebook 06's frontier helpers on hand-made frontiers with known answers: interpolation and hulls per
(method, seed), anchoring at the full model, mean and spread over seeds, verdicts, the method grid."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from _anee_tiny import random_bypass, tiny_setup
from conftest import VOCAB, tiny_llama

from anee import AdaptiveExecutor, adapter_for
from anee.engine.defaults import PROFILER_FILE
from anee.evaluation import methods
from anee.evaluation.context import EvalContext
from anee.evaluation.frontier import (
    BYPASS_FILE,
    anchored,
    comparisons,
    controller_overhead,
    equal_saving_tables,
    extra_specs,
    findings,
    frontier_windows,
    full_model_ppl,
    headroom_table,
    levels_on_text,
    load_bypass,
    lower_hull,
    method_label,
    ppl_at_saving,
    ratio_to_full,
    run_frontier,
    trained_engine,
)
from anee.evaluation.methods import baselines

LEVELS = [0.1, 0.2, 0.3, 0.4, 0.5]
COLUMNS = ["0.1", "0.1_std", "0.2", "0.2_std", "0.3", "0.3_std", "0.4", "0.4_std", "0.5", "0.5_std", "n_seeds"]


def test_ppl_at_saving_interpolates_and_hull_removes_bumps():
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


def test_ppl_at_saving_keeps_each_seed_apart():
    df = pd.DataFrame({"method": ["a"] * 4, "seed": [0, 0, 1, 1], "layer_saved_net": [0.0, 0.2, 0.0, 0.4],
                       "ppl": [10.0, 40.0, 10.0, 20.0]})
    out = ppl_at_saving(df, [0.1, 0.3])
    assert list(out.columns) == ["method", "seed", "net_saved", "ppl"]
    by = out.set_index(["seed", "net_saved"]).ppl
    assert by[0, 0.1] == pytest.approx(20.0) and math.isnan(by[0, 0.3])  # seed 0 stops at 0.2
    assert by[1, 0.1] == pytest.approx(10 * 2**0.25) and by[1, 0.3] == pytest.approx(10 * 2**0.75)


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


def seeded() -> pd.DataFrame:
    """`frontier()` as `run_frontier` writes it (a `seed` column, -1 for untrained methods), with a second
    anee_rl seed whose curve has a bump at 0.2: (0.2, 40), (0.4, 40)."""
    table = frontier().assign(seed=-1)
    table.loc[table.method == "anee_rl", "seed"] = 0
    extra = pd.DataFrame([("anee_rl", "budget=0.8", 0.8, 0.2, 40.0, 1), ("anee_rl", "budget=0.6", 0.6, 0.4, 40.0, 1)],
                         columns=list(table.columns))
    return pd.concat([table, extra], ignore_index=True)


def test_anchored_copies_the_full_row_to_every_method():
    table = anchored(frontier())
    assert "full" not in set(table.method)
    assert sorted(table.method.unique()) == ["anee_heuristic", "anee_heuristic_every_layer", "anee_rl",
                                             "block_influence"]
    assert len(table) == 8 + 4  # every method's own rows plus the full model's, once per method
    at_zero = table[table.layer_saved_net == 0.0]
    assert sorted(at_zero.method) == sorted(table.method.unique()) and (at_zero.ppl == 10.0).all()
    assert (at_zero.setting == "").all() and (at_zero.layer_fraction == 1.0).all()
    assert len(anchored(frontier()[frontier().method != "full"])) == 8  # no full row: nothing to anchor with


def test_anchored_anchors_each_seed():
    table = anchored(seeded())
    assert len(table) == 10 + 5  # one anchor per (method, seed): anee_rl twice
    at_zero = table[table.layer_saved_net == 0.0]
    assert sorted(zip(at_zero.method, at_zero.seed)) == [("anee_heuristic", -1), ("anee_heuristic_every_layer", -1),
                                                         ("anee_rl", 0), ("anee_rl", 1), ("block_influence", -1)]
    assert (at_zero.ppl == 10.0).all()


def test_equal_saving_tables_interpolate_and_use_the_hull():
    at_levels, on_hull, runs = equal_saving_tables(frontier(), LEVELS)
    assert list(at_levels.columns) == COLUMNS and list(on_hull.columns) == COLUMNS
    assert sorted(at_levels.index) == ["anee_heuristic", "anee_heuristic_every_layer", "anee_rl", "block_influence"]
    assert at_levels.index.name == "method" and (at_levels.n_seeds == 1).all()
    means = at_levels[["0.1", "0.2", "0.3", "0.4"]]
    rl, heur, bi = means.loc["anee_rl"], means.loc["anee_heuristic"], means.loc["block_influence"]
    # log-ppl linear between the anchor (0, 10) and each method's points; NaN past the last point
    assert rl.tolist() == pytest.approx([math.sqrt(200), 20.0, math.sqrt(800), 40.0])
    assert heur.tolist() == pytest.approx([math.sqrt(300), 30.0, math.sqrt(1050), 35.0])
    assert bi.tolist() == pytest.approx([math.sqrt(150), 15.0, math.sqrt(1200), 80.0])
    assert (np.isnan(at_levels["0.5"]).all() and np.isnan(on_hull["0.5"]).all()
            and at_levels.loc["anee_heuristic_every_layer", "0.4"] == pytest.approx(
                math.exp(math.log(50) + (0.4 - 0.25) / (0.44 - 0.25) * (math.log(90) - math.log(50)))))
    assert (at_levels[["0.1_std", "0.2_std", "0.3_std", "0.4_std"]] == 0.0).all().all()  # one seed: no spread
    # the hull drops the heuristic's bump (time-sharing 0 and 0.4 is better) and keeps the others' points
    hull = on_hull[["0.1", "0.2", "0.3", "0.4"]]
    assert hull.loc["anee_heuristic"].tolist() == pytest.approx([10 * 3.5 ** 0.25, math.sqrt(350),
                                                                 10 * 3.5 ** 0.75, 35.0])
    assert hull.loc["anee_rl"].tolist() == pytest.approx(rl.tolist())
    assert hull.loc["block_influence"].tolist() == pytest.approx(bi.tolist())
    # every (method, level, curve) in the long table: 4 methods x 5 levels x 2 curves
    assert (len(runs) == 40 and set(runs.curve) == {"interpolated", "hull"}
            and list(runs.columns) == ["method", "net_saved", "ppl", "curve"])


def test_equal_saving_tables_average_over_seeds():
    at_levels, on_hull, runs = equal_saving_tables(seeded(), LEVELS)
    assert at_levels.loc["anee_rl", "n_seeds"] == 2 and at_levels.loc["block_influence", "n_seeds"] == 1
    # seed 0: sqrt(200), 20, sqrt(800), 40; seed 1 (log-linear from (0, 10) to (0.2, 40), then flat): 20, 40, 40, 40
    seed0, seed1 = [math.sqrt(200), 20.0, math.sqrt(800), 40.0], [20.0, 40.0, 40.0, 40.0]
    rl = at_levels.loc["anee_rl"]
    for level, a, b in zip(("0.1", "0.2", "0.3", "0.4"), seed0, seed1):
        assert rl[level] == pytest.approx((a + b) / 2)
        assert rl[f"{level}_std"] == pytest.approx(abs(a - b) / math.sqrt(2))  # two seeds: |a - b| / sqrt(2)
    assert rl["0.1"] == pytest.approx(17.0710678) and rl["0.2_std"] == pytest.approx(14.1421356)
    assert math.isnan(rl["0.5"]) and math.isnan(rl["0.5_std"])
    # seed 1's bump at 0.2 is off its hull (the chord (0, 10)-(0.4, 40) passes at 20): both seeds agree there
    hull = on_hull.loc["anee_rl"]
    assert [hull[c] for c in ("0.1", "0.2", "0.3", "0.4")] == pytest.approx(seed0)
    assert [hull[f"{c}_std"] for c in ("0.1", "0.2", "0.3", "0.4")] == pytest.approx([0.0] * 4, abs=1e-9)
    # the other methods are as without the second seed
    alone, _, _ = equal_saving_tables(frontier(), LEVELS)
    assert at_levels.drop(index="anee_rl").equals(
        alone.drop(index="anee_rl").loc[at_levels.drop(index="anee_rl").index])
    assert list(runs.columns) == ["method", "seed", "net_saved", "ppl", "curve"] and len(runs) == 5 * 5 * 2
    per_seed = runs[(runs.method == "anee_rl") & (runs.curve == "interpolated") & (runs.net_saved == 0.2)]
    assert sorted(zip(per_seed.seed, per_seed.ppl)) == [(0, pytest.approx(20.0)), (1, pytest.approx(40.0))]


def test_comparisons_call_differences_within_the_spread_a_tie():
    at_levels, _, _ = equal_saving_tables(seeded(), LEVELS)
    table = comparisons(at_levels, [("anee_rl", "anee_heuristic"), ("anee_rl", "block_influence"),
                                    ("anee_rl", "logit_lens")],
                        LEVELS)
    assert list(table.columns) == ["a", "b", "net_saved", "a_ppl", "a_std", "b_ppl", "b_std", "verdict"]
    assert set(table.b) == {"anee_heuristic", "block_influence"}  # logit_lens is not in the table: no rows, no KeyError
    v = table.set_index(["b", "net_saved"]).verdict
    # anee_rl 17.07 +- 4.14, 30 +- 14.1, 34.1 +- 8.28, 40 +- 0; heuristic 17.3, 30, 32.4, 35 (one seed)
    assert [v["anee_heuristic", s] for s in LEVELS] == ["tie", "tie", "tie", "b", "n/a"]
    # block_influence 12.2, 15, 34.6, 80: better by more than the spread at 0.1 and 0.2, worse at 0.4
    assert [v["block_influence", s] for s in LEVELS] == ["b", "b", "tie", "a", "n/a"]
    row = table[(table.b == "block_influence") & (table.net_saved == 0.2)].iloc[0]
    assert (row.a_ppl, row.a_std, row.b_ppl, row.b_std) == pytest.approx((30.0, math.sqrt(200), 15.0, 0.0))
    assert comparisons(at_levels, [("anee_warmstart", "anee_rl")], LEVELS).empty


def test_findings_word_the_verdicts_and_divide_by_the_full_model():
    at_levels = pd.DataFrame({"0.1": [20.0, 30.0, 25.0], "0.2": [40.0, 35.0, 50.0]},
                             index=pd.Index(["anee_rl", "anee_heuristic", "block_influence"], name="method"))
    ratios = ratio_to_full(at_levels, 10.0, [0.1, 0.2])
    assert ratios.loc["anee_rl"].tolist() == [2.0, 4.0] and list(ratios.columns) == ["0.1", "0.2"]
    verdicts = pd.DataFrame({"a": ["anee_rl"] * 4, "b": ["block_influence"] * 4, "net_saved": [0.2, 0.1, 0.1, 0.2],
                             "verdict": ["a", "tie", "b", "b"],
                             "curve": ["interpolated", "interpolated", "hull", "hull"]})
    out = findings(verdicts, at_levels, 10.0, [0.1, 0.2])
    assert out["anee_rl_vs_block_influence"] == "a tie / better"  # sorted by level, the hull rows left out
    assert out["ratio_to_full"]["block_influence"] == [2.5, 5.0]
    # the best ANEE method per level, among anee_* rows only (block_influence is lower at 0.1)
    assert out["best_anee_method"] == {"0.1": "anee_rl", "0.2": "anee_heuristic"}
    assert out["best_anee_ratio_to_full"] == {"0.1": 2.0, "0.2": 3.5}


def test_controller_overhead_is_fraction_minus_saving():
    assert controller_overhead(frontier()) == pytest.approx(((0.3 - 0.25) + (0.5 - 0.44)) / 2)
    assert controller_overhead(frontier(), "anee_rl") == pytest.approx(0.0)  # no overhead recorded
    assert controller_overhead(frontier(), "full") == pytest.approx(0.0)


def test_method_label_marks_the_bypass():
    assert method_label("anee_rl", {"budget": 0.5, "bypass": True}) == "anee_rl+bypass"
    assert method_label("anee_rl", {"budget": 0.5, "bypass": False}) == "anee_rl"
    assert method_label("block_influence", {"n_removed": 2}) == "block_influence"


def test_extra_specs_list_every_seed_and_the_bypass_variants():
    ctx = EvalContext(None, None, None)
    specs = extra_specs(ctx, budgets=(0.9, 0.7), planned_budgets=(0.8,), seeds=(0, 3))
    assert specs == [
        ("anee_heuristic", {"budget": 0.8}),
        ("anee_warmstart", {"budget": 0.8, "seed": 0, "bypass": False}),
        ("anee_warmstart", {"budget": 0.8, "seed": 3, "bypass": False}),
        ("anee_warmstart_profiler_only", {"budget": 0.8, "seed": 0, "bypass": False}),
        ("anee_warmstart_profiler_only", {"budget": 0.8, "seed": 3, "bypass": False}),
        ("anee_rl", {"budget": 0.8, "seed": 0, "bypass": False}),
        ("anee_rl", {"budget": 0.8, "seed": 3, "bypass": False}),
        ("anee_kl_profile", {"budget": 0.8, "bypass": False}),
        ("anee_heuristic_every_layer", {"budget": 0.9}), ("anee_heuristic_every_layer", {"budget": 0.7}),
        ("hierarchical", {"capacity": 0.9, "exits": False, "seed": 0}),
        ("hierarchical", {"capacity": 0.7, "exits": False, "seed": 0}),
        ("hierarchical", {"capacity": 0.9, "exits": False, "seed": 3}),
        ("hierarchical", {"capacity": 0.7, "exits": False, "seed": 3}),
        ("hierarchical", {"capacity": 0.9, "exits": True, "seed": 0}),
    ]
    with_bypass = extra_specs(EvalContext(None, None, None, bypass_executor=object()), budgets=(0.9, 0.7), seeds=(1,))
    assert with_bypass[:4] == [("anee_heuristic", {"budget": 0.9}), ("anee_heuristic", {"budget": 0.7}),
                               ("anee_heuristic", {"budget": 0.9, "bypass": True}),
                               ("anee_heuristic", {"budget": 0.7, "bypass": True})]
    learned = [s for n, s in with_bypass if n in ("anee_warmstart", "anee_warmstart_profiler_only", "anee_rl")]
    assert len(learned) == 6 and all(s["bypass"] is True and s["seed"] == 1 for s in learned)
    assert ("hierarchical", {"capacity": 0.9, "exits": True, "seed": 1}) == with_bypass[-1]
    assert len(extra_specs(ctx)) == 4 + 3 * 4 + 4 + 4 + 2 + 1  # the defaults: four budgets, seed 0


def _four_layer_context(seed: int) -> tuple[EvalContext, torch.Tensor]:
    """A 4-layer model's context (Block Influence order 1, 2, 3, 0; a linear bypass) and 40 token ids."""
    model = tiny_llama(n_layer=4)
    adapter = adapter_for(model)
    ex = AdaptiveExecutor(adapter)
    bx = AdaptiveExecutor(adapter, bypass=random_bypass("linear", adapter.dims.hidden, 4, seed=2))
    ids = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(seed))
    return EvalContext(model, None, ex, ids, extras={"block_influence": torch.tensor([0.5, 0.1, 0.2, 0.4])},
                       bypass_executor=bx), ids


def test_run_frontier_labels_methods_and_records_seeds(monkeypatch):
    ctx, ids = _four_layer_context(0)

    def seeded_full(ctx, seed):  # a trained method stand-in: its seed only names the run
        return methods.METHODS["full"](ctx)

    monkeypatch.setitem(methods.METHODS, "seeded_full", seeded_full)
    specs = [("full", {}), ("block_influence", {"n_removed": 2}), ("block_influence", {"n_removed": 2, "bypass": True}),
             ("seeded_full", {"seed": 4})]
    table = run_frontier(ctx, specs, ids, window=20, stride=20)
    assert list(table.columns[:3]) == ["method", "setting", "seed"]
    assert table.method.tolist() == ["full", "block_influence", "block_influence+bypass", "seeded_full"]
    # seed and bypass are not part of the setting
    assert table.setting.tolist() == ["", "n_removed=2", "n_removed=2", ""]
    assert table.seed.tolist() == [-1, -1, -1, 4]
    full, plain, bypassed = table.iloc[0], table.iloc[1], table.iloc[2]
    assert table.iloc[3].ppl == full.ppl and plain.ppl != bypassed.ppl
    assert plain.layer_fraction == pytest.approx(2 / 4)
    assert bypassed.layer_fraction > plain.layer_fraction  # the bypass is charged


def test_levels_on_text_runs_the_specs_and_interpolates_against_the_full_model():
    model = tiny_llama(n_layer=4)
    adapter = adapter_for(model)
    ids = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(1))
    ctx = EvalContext(model, None, AdaptiveExecutor(adapter), ids,
                      extras={"block_influence": torch.tensor([0.5, 0.1, 0.2, 0.4])})
    specs = [("full", {})] + [("block_influence", {"n_removed": n}) for n in (1, 2, 3)]
    table, at_levels, full = levels_on_text(ctx, specs, ids, 20, 20, [0.3, 0.5])
    assert table.equals(run_frontier(ctx, specs, ids, 20, 20))
    assert at_levels.equals(equal_saving_tables(table, [0.3, 0.5])[0])
    assert full == table.ppl.iloc[0] and table.method.iloc[0] == "full"
    with pytest.raises(ValueError, match="full"):
        levels_on_text(ctx, specs[1:], ids, 20, 20, [0.3])


def test_full_model_ppl_is_the_one_full_row():
    table = pd.DataFrame({"method": ["block_influence", "full", "logit_lens"], "ppl": [30.0, 22.5, 90.0]})
    assert full_model_ppl(table) == 22.5
    for bad in (table[table.method != "full"], pd.concat([table, table])):
        with pytest.raises(ValueError, match='exactly one row of method "full"'):
            full_model_ppl(bad)


def test_load_bypass(tmp_path):
    adapter = adapter_for(tiny_llama(n_layer=4))
    assert load_bypass(tmp_path, adapter) is None  # notebook 02 has not run
    bank = random_bypass("linear", adapter.dims.hidden, 4, seed=1)
    bank.save(tmp_path / BYPASS_FILE)
    loaded = load_bypass(tmp_path, adapter)
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in bank.state_dict().items())
    with pytest.raises(ValueError, match="num_layers=4 does not match the model's 6.*notebook 02"):
        load_bypass(tmp_path, adapter_for(tiny_llama(n_layer=6)))


def test_trained_engine_loads_the_bypass_and_the_profiler_notebook_02_wrote(tmp_path):
    _, ex, prof, _ = tiny_setup(layers=4)
    adapter = ex.adapter
    prof.save(tmp_path / PROFILER_FILE)
    executor, profiler = trained_engine(tmp_path, adapter)
    assert executor.bypass is None  # no bypass written: a skipped layer is the identity
    saved, loaded = prof.checkpoint_tensors(), profiler.checkpoint_tensors()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    bank = random_bypass("linear", adapter.dims.hidden, 4, seed=1)
    bank.save(tmp_path / BYPASS_FILE)
    executor, profiler = trained_engine(tmp_path, adapter)
    assert all(torch.equal(v, executor.bypass.state_dict()[k]) for k, v in bank.state_dict().items())
    assert profiler.executor is executor  # the profiler reads the executor that runs the bypass
    (tmp_path / PROFILER_FILE).unlink()
    with pytest.raises(ValueError, match="profiler.safetensors not found; re-run notebook 02"):
        trained_engine(tmp_path, adapter)


def test_frontier_windows_per_profile():
    assert frontier_windows("quick") == (512, 256, 128)
    assert frontier_windows("full") == (2048, 512, 512)  # 06's full profile: non-overlapping 512-token windows
    with pytest.raises(ValueError, match="PROFILE must be one of"):
        frontier_windows("fast")


def test_comparisons_do_not_depend_on_the_order_of_a_pair():
    table = pd.DataFrame([("full", "", 1.0, 0.0, 10.0, -1), ("a", "b=.8", 0.8, 0.2, 20.0, 0),
                          ("a", "b=.6", 0.6, 0.4, 40.0, 0),
                          ("a", "b=.8", 0.8, 0.2, 30.0, 1), ("a", "b=.7", 0.7, 0.3, 35.0, 1),  # seed 1 stops at 0.3
                          ("c", "", 0.6, 0.4, 35.0, -1)],
                         columns=["method", "setting", "layer_fraction", "layer_saved_net", "ppl", "seed"])
    wide, _, _ = equal_saving_tables(table, [0.2, 0.35])
    forward, backward = comparisons(wide, [("a", "c"), ("c", "a")], [0.35]).verdict.tolist()
    assert {"a": "b", "b": "a", "tie": "tie", "n/a": "n/a"}[forward] == backward


def test_headroom_skips_nested_prefixes_of_the_profilers_order():
    from anee.core.actions import PROCESS, SKIP, pattern_decisions
    from anee.core.divergence import nll_sum
    from anee.engine.importance import order_importance
    from anee.engine.profiler import Profiler

    model, ex, prof, ids = tiny_setup(layers=6)
    order = [3, 0, 5, 1, 4, 2]  # not the tiny model's Block-Influence order: the table must use this one
    ctx = EvalContext(model, None, ex, calibration_ids=ids)
    ctx.extras[("anee_profiler", id(ex))] = Profiler(prof.entropy, order_importance(order), ex, prof.entropy_median)
    test_ids = torch.randint(0, VOCAB, (1, 128), generator=torch.Generator().manual_seed(7))
    table = headroom_table(ctx, test_ids, window=64, tokens=128, levels=[1 / 6, 0.25],
                           overhead=0.0).set_index("net_saved")
    assert table.tokens.tolist() == [126, 126]  # two windows of 64, 63 scored positions each
    nll = {}
    for k in (1, 2):
        pattern = [SKIP if i in order[:k] else PROCESS for i in range(6)]
        nll[k] = sum(nll_sum(ex.forward(w, decisions=pattern_decisions(pattern, 64)).logits[0, :-1], w[0, 1:])
                     for w in (test_ids[:, :64], test_ids[:, 64:])) / 126
    # free static skipping: 1 / 6 saved = one layer; 0.25 = 1.5 layers, log-linear between 1 and 2
    assert table.loc[1 / 6, "static_ppl"] == pytest.approx(math.exp(nll[1]), rel=1e-5)
    assert table.loc[0.25, "static_ppl"] == pytest.approx(math.exp((nll[1] + nll[2]) / 2), rel=1e-5)


def test_run_frontier_scores_a_method_once_per_signature(monkeypatch):
    """Static removal of the same layers in the same executor, asked for under two names (the profiler's
    order equals Block Influence's here), runs once and both rows carry its numbers; another layer set,
    or the same set in the bypass executor, runs again."""
    ctx, ids = _four_layer_context(3)
    calls = []

    def counted(builder):
        def build(ctx, **kw):
            method = builder(ctx, **kw)

            def run(chunk):
                calls.append(kw)
                return method(chunk)

            run.signature = method.signature
            return run
        return build

    class SameOrder:  # the profiler_removal method reads only the order
        removal_order = [1, 2, 3, 0]

    monkeypatch.setattr(baselines, "get_profiler", lambda ctx, executor: SameOrder())
    monkeypatch.setitem(methods.METHODS, "block_influence", counted(methods.METHODS["block_influence"]))
    monkeypatch.setitem(methods.METHODS, "profiler_removal", counted(methods.METHODS["profiler_removal"]))
    two, two_bypassed = {"n_removed": 2}, {"n_removed": 2, "bypass": True}
    specs = [("block_influence", two), ("profiler_removal", two), ("block_influence", two_bypassed),
             ("profiler_removal", two_bypassed), ("profiler_removal", {"n_removed": 3})]
    table = run_frontier(ctx, specs, ids, window=20, stride=20)
    assert calls == [two] * 2 + [two_bypassed] * 2 + [{"n_removed": 3}] * 2  # each on 2 windows
    assert table.method.tolist() == ["block_influence", "profiler_removal", "block_influence+bypass",
                                     "profiler_removal+bypass", "profiler_removal"]
    numbers = ["ppl", "nll_sum", "layer_fraction", "layer_saved_net"]
    assert table.iloc[0][numbers].equals(table.iloc[1][numbers])
    assert table.iloc[2][numbers].equals(table.iloc[3][numbers])
    assert table.iloc[0].ppl != table.iloc[2].ppl != table.iloc[4].ppl
    unshared = run_frontier(ctx, specs[1:2], ids, window=20, stride=20)  # alone, it runs and gives the same row
    assert unshared.iloc[0].equals(table.iloc[1])
