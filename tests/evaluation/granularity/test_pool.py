"""Notebook 08's pool and selectors on fake scores and a tiny LLaMA."""

import math

import numpy as np
import pytest
import torch
from _anee_tiny import BANK, FULL_BYTES, quant_llama

from anee import AdaptiveExecutor, adapter_for
from anee.core.actions import DROP, PROCESS
from anee.evaluation.context import EvalContext
from anee.evaluation.granularity.pool import (
    Pool,
    budget_violations,
    kernel_specs,
    make_selectors,
    measure_pool,
    pool_specs,
    quantisation_check,
    run_selectors,
    selector_budgets,
)
from anee.evaluation.granularity.strategies import Strategies, WindowScores
from anee.granularity.quantize import FP32, WeightBank
from anee.granularity.selection import Variant


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
    assert bank.restored


def test_measure_pool_on_a_tiny_model(tiny):
    model, adapter, executor, bank = tiny
    gen = torch.Generator().manual_seed(0)
    test, calib = torch.randint(0, 97, (2, 12), generator=gen), torch.randint(0, 97, (1, 12), generator=gen)
    S = Strategies(EvalContext(model, None, executor), bank)
    specs = {"fp32": (FP32, ()), "int4": (4, ()), "fp32-drop1": (FP32, (2,))}
    pool = measure_pool(S, specs, test, calib)
    table = pool.table()
    assert list(table.columns) == ["variant", "bits", "weights", "layers", "ppl_test", "ppl_valid", "rel_macs",
                                   "rel_bytes"]
    assert list(table.weights) == ["fp32", "fake-quant", "fp32"]
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
    # every variant says how it decodes: the bank's weights, removed layers DROPPED
    assert pool.test["fp32"].decode.weights is None and pool.test["fp32"].decode.controller is None
    assert pool.test["int4"].decode.weights.bits == (4,) * 4
    assert pool.test["fp32-drop1"].decode.controller.pattern.tolist() == [PROCESS, PROCESS, DROP, PROCESS]


def test_kernel_variants_run_int8_kernels(tiny):
    model, adapter, executor, _ = tiny
    kbank = WeightBank(adapter, bits=(8,), kernels=True)
    specs = kernel_specs([3, 1, 0, 2], 1)
    assert specs == {"int8-kernel": (8, ()), "int8-kernel-drop1": (8, (3,))}
    test = torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(1))
    pool = measure_pool(Strategies(EvalContext(model, None, executor), kbank), specs, test, test)
    table = pool.table()
    assert list(table.weights) == ["INT8 kernels"] * 2
    assert pool.test["int8-kernel"].decode.weights.bank is kbank and kbank.restored
