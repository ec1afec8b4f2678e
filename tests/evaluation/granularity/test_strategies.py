"""The granularity strategies' cost units: bytes saved by precision, MACs by removal, and the weight
bytes an executor trace reads (K/V projections at a SKIP / EXIT, nothing at a DROP, the bypass's
weights where it runs)."""

from types import SimpleNamespace

import pytest
import torch
from _anee_tiny import quant_llama as tiny_llama
from _anee_tiny import random_bypass

from anee import DROP, EXIT, PROCESS, SKIP, AdaptiveExecutor, BudgetController, CostModel, Trace, adapter_for
from anee.core.adapters.base import Dims
from anee.evaluation.context import EvalContext
from anee.evaluation.granularity.strategies import Strategies, trace_bytes
from anee.granularity.quantize import FP32, WeightBank


@pytest.fixture(scope="module")
def setup():
    model = tiny_llama(layers=6)
    adapter = adapter_for(model)
    return adapter, AdaptiveExecutor(adapter), WeightBank(adapter)


def test_strategies_cost_units(setup):
    from anee.evaluation.context import EvalContext
    from anee.evaluation.granularity.strategies import Strategies

    adapter, ex, bank = setup
    S = Strategies(EvalContext(adapter.model, None, ex), bank)
    windows = torch.randint(0, 97, (3, 12), generator=torch.Generator().manual_seed(3))
    full = S.variant(windows)
    assert full.rel_macs() == pytest.approx(1.0) and full.rel_bytes(bank) == pytest.approx(1.0)
    q4 = S.variant(windows, bits=4)
    assert q4.rel_macs() == pytest.approx(1.0) and q4.rel_bytes(bank) < 0.5  # bytes saved, not multiplies
    drop = S.variant(windows, removed=[1, 2])
    assert (drop.rel_macs() < 1
            and drop.rel_bytes(bank) == pytest.approx(1 - 2 * bank.layer_bytes(1, FP32) / bank.full_bytes))
    assert S.schedule(windows, [FP32] * adapter.num_layers).ppl == pytest.approx(full.ppl, rel=1e-5)
    cheap = bank.token_bytes([4] * adapter.num_layers) / bank.full_bytes
    prog, frac = S.progressive(windows, cheap + 0.1, threshold=0.0)
    assert prog.rel_bytes(bank) <= cheap + 0.1 + 1e-9 and 0 < frac < 1 and prog.rel_macs() > 1


def test_trace_bytes_by_hand():
    """Toy sizes: K+V projections 2 * 8 * 4 = 64 MACs (256 fp32 bytes), a bypass of 40 MACs (160 bytes),
    block i at `bits` reading (i + 1) * bits bytes, a 1000-byte head."""
    dims = Dims(hidden=8, num_heads=2, num_kv_heads=1, head_dim=4, intermediate=16, vocab=10, num_layers=4,
                mlp_matrices=3, max_positions=32)
    bank = SimpleNamespace(head_bytes=1000.0, layer_bytes=lambda i, bits: float((i + 1) * bits))
    ex = SimpleNamespace(cost=CostModel(dims, bypass=40))
    d = torch.tensor([[[PROCESS, SKIP, DROP, PROCESS], [SKIP, EXIT, DROP, EXIT], [DROP, PROCESS, DROP, DROP]]],
                     dtype=torch.int8)
    trace = Trace(d, torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[10.0, 0.0, 0.0]]))
    # token 0: blocks 0 and 3 (32 + 128), one K/V read, bypass at the SKIP and the DROP, 10 overhead MACs
    # token 1: three K/V reads (SKIP, EXIT, EXIT), the bypass at the SKIP only (its DROP comes after its EXIT)
    # token 2: block 1 (64), bypass at the three DROPs, no K/V read anywhere
    assert trace_bytes(trace, bank, ex).tolist() == [[1000 + 160 + 256 + 2 * 160 + 40, 1000 + 3 * 256 + 160,
                                                      1000 + 64 + 3 * 160]]
    assert trace_bytes(trace, bank, ex, bits=[8, 4, 8, 2]).tolist() == [[1000 + 8 + 8 + 256 + 320 + 40,
                                                                         1000 + 768 + 160, 1000 + 8 + 480]]
    plain = SimpleNamespace(cost=CostModel(dims))  # no bypass: SKIP and EXIT read K/V only, DROP nothing
    assert trace_bytes(trace, bank, plain).tolist() == [[1000 + 160 + 256 + 40, 1000 + 768, 1000 + 64]]


def test_anee_strategy_in_a_bypass_executor(setup):
    adapter, ex, bank = setup
    bx = AdaptiveExecutor(adapter, bypass=random_bypass("linear", adapter.dims.hidden, adapter.num_layers, seed=1))
    S = Strategies(EvalContext(adapter.model, None, ex), bank)
    windows = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(3))
    plain, bypassed = S.anee(windows, 0.6), S.anee(windows, 0.6, controller=BudgetController(), executor=bx)
    assert plain.ppl != bypassed.ppl and bypassed.rel_bytes(bank) > 0
    ids = windows[:1]
    out = bx.forward(ids, controller=BudgetController(), budget=0.6)
    expect = float(trace_bytes(out.trace, bank, bx).reshape(-1)[:11].sum())  # the 11 scored positions
    assert bypassed.bytes[0] == pytest.approx(expect, rel=1e-12)
