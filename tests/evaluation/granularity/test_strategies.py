"""The granularity strategies' cost units: bytes saved by precision, MACs by removal."""

import pytest
import torch
from _anee_tiny import quant_llama as tiny_llama

from anee import AdaptiveExecutor, adapter_for
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
    assert drop.rel_macs() < 1 and drop.rel_bytes(bank) == pytest.approx(1 - 2 * bank.layer_bytes(1, FP32) / bank.full_bytes)
    assert S.schedule(windows, [FP32] * adapter.num_layers).ppl == pytest.approx(full.ppl, rel=1e-5)
    cheap = bank.token_bytes([4] * adapter.num_layers) / bank.full_bytes
    prog, frac = S.progressive(windows, cheap + 0.1, threshold=0.0)
    assert prog.rel_bytes(bank) <= cheap + 0.1 + 1e-9 and 0 < frac < 1 and prog.rel_macs() > 1
