"""Notebook 02's bypass study: removal perplexity, net savings that charge the bypass, interpolation at
equal net saving, one row per split, and a choice that looks at the valid split only."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from _anee_tiny import removal_setup
from conftest import VOCAB

from anee import AdaptiveExecutor
from anee.core.bypass import BypassBank, BypassConfig
from anee.engine.importance import removal_ppl
from anee.engine.prefix_memo import PrefixMemo, shared_prefixes
from anee.engine.training.bypass import BypassTuneConfig, fit_layer_bypass, layer_bypass_stats
from anee.evaluation.bypass import (
    choose_family,
    family_rows,
    net_saving,
    ppl_at_net_saving,
    tune_and_score,
)

ORDER = [2, 1, 3, 0]  # the removal order the rows are scored in


setup = pytest.fixture(scope="module")(removal_setup)


def test_net_saving_charges_the_bypass(setup):
    _, ex, bx, bank, _ = setup
    assert net_saving(ex, 2) == 2 / 4
    f = bank.macs / bx.cost.layer_static  # 48 * 48 MACs of a layer's static 48*48*2 + 2*48*16 + 3*48*80 MACs
    assert f == pytest.approx(2304 / (2 * 2304 + 1536 + 11520))
    assert net_saving(bx, 2) == pytest.approx(2 * (1 - f) / 4)
    assert net_saving(bx, 0) == 0.0


def test_ppl_at_net_saving_interpolates_log_ppl(setup):
    _, ex, bx, _, _ = setup
    ks, ppls = [0, 1, 2], [10.0, 20.0, 40.0]  # savings 0, 1/4, 1/2 without a bypass
    assert ppl_at_net_saving(ex, ks, ppls, 0.375) == pytest.approx(math.sqrt(800))
    assert ppl_at_net_saving(ex, ks, ppls, 0.25) == pytest.approx(20.0)
    assert math.isnan(ppl_at_net_saving(ex, ks, ppls, 0.6)) and math.isnan(ppl_at_net_saving(ex, ks, ppls, -0.1))
    # with the bypass each removed layer saves less: 0.5 is out of reach of two removals
    assert math.isnan(ppl_at_net_saving(bx, ks, ppls, 0.5))
    s = net_saving(bx, 1)
    assert ppl_at_net_saving(bx, ks, ppls, s) == pytest.approx(20.0)


def test_family_rows_one_row_per_split(setup):
    _, ex, bx, bank, windows = setup
    splits = {"valid": windows[:2], "test": windows[2:]}
    full = {split: removal_ppl(ex, w, ORDER, 0) for split, w in splits.items()}
    rows = family_rows("linear fit", bank, bx, splits, ORDER, [1, 2], [0.1, 0.3], full, note="x")
    assert [r["split"] for r in rows] == ["valid", "test"]
    for row, (split, w) in zip(rows, splits.items()):
        assert (row["bypass"], row["family"], row["rank"], row["macs"],
                row["note"]) == ("linear fit", "linear", 0, 2304, "x")
        assert row["macs_fraction_of_layer"] == bx.cost.drop_fraction()
        assert row["ppl_k1"] == removal_ppl(bx, w, ORDER, 1) and row["ppl_k2"] == removal_ppl(bx, w, ORDER, 2)
        curve = [full[split], row["ppl_k1"], row["ppl_k2"]]
        assert row["ppl_at_0.1"] == pytest.approx(ppl_at_net_saving(bx, [0, 1, 2], curve, 0.1))
        assert row["ppl_at_0.3"] == pytest.approx(ppl_at_net_saving(bx, [0, 1, 2], curve, 0.3))
    # the full model's perplexity anchors the curve at 0 saved: 0.1 lies between 0 and one removal
    other = family_rows("linear fit", bank, bx, splits, ORDER, [1, 2], [0.1, 0.3], {"valid": 1.0, "test": 1.0})
    assert other[0]["ppl_at_0.1"] < rows[0]["ppl_at_0.1"] and other[0]["ppl_at_0.3"] == rows[0]["ppl_at_0.3"]
    identity = BypassBank(BypassConfig("identity"), bank.hidden, 4)
    plain = family_rows("identity", identity, AdaptiveExecutor(bx.adapter, bypass=identity), {"valid": windows},
                        ORDER, [1], [0.2], {"valid": 10.0})
    assert plain[0]["macs"] == 0 and plain[0]["macs_fraction_of_layer"] == 0.0


def test_family_rows_share_one_memo_across_families(setup, monkeypatch):
    """Rows of several families on one memo are the same numbers; a family after the first runs no
    layer before its first removed one (ORDER[:1] = [2]: layers 0-1 come from the memo)."""
    _, ex, bx, bank, windows = setup
    splits = {"valid": windows[:2], "test": windows[2:]}
    full = {split: removal_ppl(ex, w, ORDER, 0) for split, w in splits.items()}
    plain = family_rows("linear fit", bank, bx, splits, ORDER, [1, 2], [0.1], full)
    memo, calls = PrefixMemo(), []
    with shared_prefixes(ex, memo=memo):
        assert {split: removal_ppl(ex, w, ORDER, 0) for split, w in splits.items()} == full
    mlp = ex.adapter.mlp
    monkeypatch.setattr(ex.adapter, "mlp", lambda layer, x: calls.append(layer) or mlp(layer, x))
    shared = family_rows("linear fit", bank, AdaptiveExecutor(ex.adapter, bypass=bank), splits, ORDER, [1, 2], [0.1],
                         full, memo=memo)
    assert shared == plain
    assert calls and min(calls) == 3  # k=1 drops layer 2, k=2 layers 2 and 1: only layer 3 runs its FFN
    assert bx.prefix_memo is None and ex.prefix_memo is None  # the memo is released after the rows


def test_tune_and_score_fits_tunes_and_labels(setup):
    _, ex, _, _, windows = setup
    stats = layer_bypass_stats(ex, torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(9)))
    splits = {"valid": windows[:2]}
    tune = BypassTuneConfig(steps=2, batch=1, seq_len=8, lr=1e-3, max_removed=2, seed=3)
    ids = windows.reshape(1, -1)
    bank, history, rows = tune_and_score(ex, stats, BypassConfig("diag_lowrank", 2), ids, ORDER, tune, splits, [1],
                                         [0.1], {"valid": 20.0})
    fitted = fit_layer_bypass(ex, None, BypassConfig("diag_lowrank", 2), stats)
    assert bank.info["fit_tokens"] == 128 and bank.info["tune_steps"] == 2
    assert any(not torch.equal(v, fitted.state_dict()[k]) for k, v in bank.state_dict().items())  # tuned after the fit
    assert [(h["step"], h["bypass"], h["seed"]) for h in history] == [(0, "diag_lowrank-2 tuned", 3),
                                                                      (1, "diag_lowrank-2 tuned", 3)]
    assert (len(rows) == 1
            and (rows[0]["bypass"], rows[0]["tuned"], rows[0]["seed"]) == ("diag_lowrank-2 tuned", True, 3))
    assert rows[0]["ppl_k1"] == removal_ppl(AdaptiveExecutor(ex.adapter, bypass=bank), windows[:2], ORDER, 1)
    # starting from a closed form fitted beforehand gives the same bank, and leaves that fit untouched
    again, history_again, rows_again = tune_and_score(ex, stats, BypassConfig("diag_lowrank", 2), ids, ORDER, tune,
                                                      splits, [1], [0.1], {"valid": 20.0}, closed_form=fitted)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in bank.state_dict().items())
    assert history_again == history and rows_again == rows
    assert all(torch.equal(v, fit_layer_bypass(ex, None, BypassConfig("diag_lowrank", 2), stats).state_dict()[k])
               for k, v in fitted.state_dict().items())
    with pytest.raises(ValueError, match="closed_form is a diag_lowrank-2 bypass"):
        tune_and_score(ex, stats, BypassConfig("mlp", 2), ids, ORDER, tune, splits, [1], [0.1], {"valid": 20.0},
                       closed_form=fitted)


def test_choose_family_looks_at_the_valid_split_only():
    table = pd.DataFrame({"bypass": ["identity", "linear", "mlp-8", "identity", "linear", "mlp-8", "linear"],
                          "split": ["valid", "valid", "valid", "test", "test", "test", "valid"],
                          "ppl_at_0.2": [30.0, 25.0, 26.0, 30.0, 29.0, 20.0, 28.0]})
    assert choose_family(table, 0.2) == "mlp-8"  # linear's two valid rows average 26.5; test would pick mlp-8 too...
    assert choose_family(table, 0.2, split="test") == "mlp-8"
    table.loc[5, "ppl_at_0.2"] = 50.0  # ...but the choice does not move when only test does
    assert choose_family(table, 0.2) == "mlp-8" and choose_family(table, 0.2, split="test") == "linear"
    table.loc[2, "ppl_at_0.2"] = 27.0
    assert choose_family(table, 0.2) == "linear"
