"""Baselines: static removal equals skipping (the surgery check), costs and the removal order,
removal with the layer bypass (run in the bypass executor, charged), and removal in the profiler's order."""

from __future__ import annotations

import pytest
import torch
from _anee_tiny import random_bypass
from _surgery import removed_layers
from conftest import VOCAB, tiny_llama

from anee import DROP, PROCESS, AdaptiveExecutor, adapter_for
from anee.engine.defaults import PROFILER_FILE
from anee.engine.importance import block_influence, order_importance, removal_order
from anee.engine.profiler import calibrate_profiler
from anee.evaluation.context import EvalContext
from anee.evaluation.frontier import run_frontier
from anee.evaluation.methods import METHODS


def test_removal_surgery_equals_skipping_and_restores_the_model():
    model = tiny_llama(n_layer=6)
    adapter = adapter_for(model)
    ids = torch.randint(0, VOCAB, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(ids).logits
        with removed_layers(adapter, [1, 4]):
            assert len(model.model.layers) == 4
            shallow = model(ids, use_cache=False).logits
        decisions = torch.zeros(1, 20, 6, dtype=torch.int8)
        decisions[..., [1, 4]] = 1
        skipped = AdaptiveExecutor(adapter).forward(ids, decisions=decisions).logits
        assert (shallow - skipped).abs().max() <= 1e-4
        assert len(model.model.layers) == 6 and model.config.num_hidden_layers == 6
        with pytest.raises(RuntimeError), removed_layers(adapter, [0]):
            raise RuntimeError("boom")
        assert torch.equal(model(ids).logits, before)
    with pytest.raises(ValueError):
        with removed_layers(adapter, [6]):
            pass


def test_baselines_cost_and_order():
    model = tiny_llama(n_layer=6)
    ids = torch.randint(0, VOCAB, (1, 200), generator=torch.Generator().manual_seed(2))
    ex = AdaptiveExecutor(adapter_for(model))
    influence = block_influence(ex, ids, window=64)
    assert influence.shape == (6,) and ((influence >= 0) & (influence <= 2)).all()
    order = removal_order(influence)
    assert influence[order[0]] == influence.min()
    ctx = EvalContext(model, None, ex, calibration_ids=ids, extras={"block_influence": influence})
    results = run_frontier(ctx, [("full", {}), ("block_influence", {"n_removed": 2}), ("logit_lens", {"depth": 3}),
                                 ("anee_budget", {"budget": 0.5})], ids[:, :120], window=64, stride=32)
    assert results.method.tolist() == ["full", "block_influence", "logit_lens", "anee_budget"]
    full, bi, lens, budget = (row for _, row in results.iterrows())
    assert bi.layer_fraction == pytest.approx(4 / 6) and lens.layer_fraction == pytest.approx(3 / 6)
    assert budget.layer_fraction <= 0.5 + 1e-9
    assert full.ppl != bi.ppl


@torch.no_grad()
def test_block_influence_with_the_bypass_runs_it_and_pays_for_it():
    model = tiny_llama(n_layer=6)
    adapter = adapter_for(model)
    ex = AdaptiveExecutor(adapter)
    bx = AdaptiveExecutor(adapter, bypass=random_bypass("diag_lowrank", adapter.dims.hidden, 6, rank=4, seed=3))
    influence = torch.tensor([0.9, 0.2, 0.05, 0.3, 0.1, 0.8])  # removal order 2, 4, 1, ...
    ids = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(4))
    ctx = EvalContext(model, None, ex, ids, extras={"block_influence": influence}, bypass_executor=bx)
    pattern = torch.tensor([PROCESS, PROCESS, DROP, PROCESS, DROP, PROCESS], dtype=torch.int8).expand(1, 24, 6)
    out = METHODS["block_influence"](ctx, n_removed=2, bypass=True)(ids)
    assert torch.equal(out.logits, bx.forward(ids, decisions=pattern).logits)
    context = torch.arange(1, 25, dtype=torch.float64)[None]
    assert bx.cost.drop_path == 48 + 2 * 4 * 48
    assert torch.allclose(out.cost.layer_macs, 4 * bx.cost.layer(context) + 2 * bx.cost.drop_path, rtol=1e-12)
    plain = METHODS["block_influence"](ctx, n_removed=2)(ids)
    assert torch.equal(plain.logits, ex.forward(ids, decisions=pattern).logits)
    assert torch.allclose(plain.cost.layer_macs, 4 * ex.cost.layer(context), rtol=1e-12)
    assert not torch.allclose(plain.logits, out.logits, atol=1e-3)
    with pytest.raises(ValueError, match="set EvalContext.bypass_executor"):
        METHODS["block_influence"](EvalContext(model, None, ex, ids, extras={"block_influence": influence}),
                                   n_removed=2, bypass=True)


@torch.no_grad()
def test_profiler_removal_drops_the_profilers_order(tmp_path):
    model = tiny_llama(n_layer=6)
    adapter = adapter_for(model)
    ex = AdaptiveExecutor(adapter)
    bx = AdaptiveExecutor(adapter, bypass=random_bypass("diag_lowrank", adapter.dims.hidden, 6, rank=4, seed=3))
    ids = torch.randint(0, VOCAB, (1, 256), generator=torch.Generator().manual_seed(5))
    profiler = calibrate_profiler(bx, ids, k=16, window=64, max_windows=1,
                                  importance=order_importance([3, 0, 5, 1, 2, 4]))
    profiler.save(tmp_path / PROFILER_FILE)
    ctx = EvalContext(model, None, ex, ids, extras={"checkpoint_dir": tmp_path}, bypass_executor=bx)
    pattern = torch.tensor([DROP, PROCESS, PROCESS, DROP, PROCESS, PROCESS], dtype=torch.int8).expand(1, 24, 6)
    out = METHODS["profiler_removal"](ctx, n_removed=2, bypass=True)(ids[:, :24])
    assert torch.equal(out.logits, bx.forward(ids[:, :24], decisions=pattern).logits)
    context = torch.arange(1, 25, dtype=torch.float64)[None]
    assert torch.allclose(out.cost.layer_macs, 4 * bx.cost.layer(context) + 2 * bx.cost.drop_path, rtol=1e-12)
    influence = block_influence(ex, ids, window=64)
    bi = METHODS["block_influence"](EvalContext(model, None, ex, ids, extras={"block_influence": influence},
                                                bypass_executor=bx),
                                    n_removed=2, bypass=True)(ids[:, :24])
    assert removal_order(influence)[:2] != [3, 0] and not torch.equal(bi.logits, out.logits)
