"""Precision switching: uniform bits match the executor, mixed tokens are causal, segment schedules
and progressive refinement honour the byte budget."""

import pytest
import torch
from _anee_tiny import quant_llama as tiny_llama

from anee import AdaptiveExecutor, adapter_for
from anee.granularity.precision import (
    mixed_precision_forward,
    progressive_refinement,
    segment_schedule,
    segments,
    token_bytes,
)
from anee.granularity.quantize import FP32, WeightBank


@pytest.fixture(scope="module")
def setup():
    model = tiny_llama(layers=6)
    adapter = adapter_for(model)
    return adapter, AdaptiveExecutor(adapter), WeightBank(adapter)


def test_uniform_bits_match_executor(setup):
    adapter, ex, bank = setup
    ids = torch.randint(0, 97, (2, 10))
    assert torch.allclose(mixed_precision_forward(adapter, bank, ids, FP32), ex.forward(ids).logits, atol=1e-5)
    with bank.applied(4):
        ref4 = ex.forward(ids).logits
    assert torch.allclose(mixed_precision_forward(adapter, bank, ids, 4), ref4, atol=1e-5)
    assert bank.restored


def test_mixed_tokens_are_causal(setup):
    adapter, ex, bank = setup
    ids = torch.randint(0, 97, (1, 10))
    L = adapter.num_layers
    bits = torch.full((1, 10, L), FP32)
    bits[0, 6:] = 4  # the last four tokens run at INT4
    mixed = mixed_precision_forward(adapter, bank, ids, bits)
    full = ex.forward(ids).logits
    with bank.applied(4):
        q4 = ex.forward(ids).logits
    assert torch.allclose(mixed[0, :6], full[0, :6], atol=1e-5)  # earlier tokens unaffected
    assert not torch.allclose(mixed[0, 6:], full[0, 6:], atol=1e-4)
    assert not torch.allclose(mixed[0, 6:], q4[0, 6:], atol=1e-4)  # they see fp32 context K/V
    # a token whose own bits differ only at one layer uses exactly the variant it was given
    bits2 = torch.full((1, 10, L), FP32)
    bits2[0, 9, 2] = 4
    m2 = mixed_precision_forward(adapter, bank, ids, bits2)
    assert torch.allclose(m2[0, :9], full[0, :9], atol=1e-5) and not torch.allclose(m2[0, 9], full[0, 9], atol=1e-5)
    tb = token_bytes(bank, bits)
    assert tb[0, 0] == pytest.approx(bank.full_bytes) and tb[0, 9] == pytest.approx(bank.token_bytes([4] * L))


@pytest.mark.parametrize("budget", [0.3, 0.45, 0.6, 0.8, 1.0])
def test_segment_schedule_honours_budget(setup, budget):
    adapter, _, bank = setup
    segs = segments(adapter.num_layers, 3)
    cheapest = bank.token_bytes([4] * adapter.num_layers) / bank.full_bytes
    if budget < cheapest:
        with pytest.raises(ValueError):
            segment_schedule(bank, segs, budget)
        return
    for order in (None, [2, 0, 1]):
        pattern = segment_schedule(bank, segs, budget, order=order)
        assert bank.token_bytes(pattern) <= budget * bank.full_bytes * (1 + 1e-9)
        for s in segs:  # one precision per segment
            assert len({pattern[i] for i in s}) == 1
    if budget == 1.0:
        assert segment_schedule(bank, segs, 1.0) == [FP32] * adapter.num_layers
    # front-to-back gives earlier segments at least the precision of later ones
    p = segment_schedule(bank, segs, budget)
    assert all(p[i] >= p[j] for i in range(len(p)) for j in range(i, len(p)))


def test_progressive_refinement_budget(setup):
    adapter, ex, bank = setup
    torch.manual_seed(1)
    L = adapter.num_layers
    cheap = bank.token_bytes([4] * L) / bank.full_bytes
    spent, n, refined_total = 0.0, 0, 0
    budget = cheap + 0.5
    for _ in range(3):
        ids = torch.randint(0, 97, (1, 16))
        r = progressive_refinement(adapter, bank, ids, budget, threshold=0.0, spent_before=spent, tokens_before=n)
        assert float(r["bytes"].sum()) == pytest.approx(r["spent"] - spent)  # per-token bytes add up
        spent, n = r["spent"], r["tokens"]
        refined_total += int(r["refined"].sum())
        assert spent <= budget * bank.full_bytes * n * (1 + 1e-9)
    assert 0 < refined_total < n  # threshold 0 asks for every token; the budget stops some
    # no budget beyond the cheap pass: nothing refined, logits are the INT4 pass
    ids = torch.randint(0, 97, (1, 8))
    r = progressive_refinement(adapter, bank, ids, cheap, threshold=0.0)
    assert not r["refined"].any()
    assert torch.allclose(r["logits"], mixed_precision_forward(adapter, bank, ids, 4))
    with pytest.raises(ValueError):
        progressive_refinement(adapter, bank, ids, cheap * 0.9, threshold=0.0)


def test_kernel_bank_mixes_precisions_between_tokens():
    """With real INT8 kernels on smoothed blocks, uniform bits match the executor running those
    weights, and tokens before the switch see exactly the fp32 model (smoothing is exact)."""
    from anee.granularity.int8 import calibrate_smoothing

    model = tiny_llama(layers=4)
    adapter = adapter_for(model)
    ex = AdaptiveExecutor(adapter)
    bank = WeightBank(adapter, bits=(8,), kernels=True,
                      smoothing=calibrate_smoothing(adapter, torch.randint(0, 97, (2, 16))))
    ids = torch.randint(0, 97, (1, 10))
    q8 = AdaptiveExecutor(adapter, weights=bank.at(8)).forward(ids).logits
    assert torch.allclose(mixed_precision_forward(adapter, bank, ids, 8), q8, atol=1e-5)
    bits = torch.full((1, 10, 4), FP32)
    bits[0, 6:] = 8
    mixed = mixed_precision_forward(adapter, bank, ids, bits)
    full = ex.forward(ids).logits
    assert torch.allclose(mixed[0, :6], full[0, :6], atol=1e-5)
    assert not torch.allclose(mixed[0, 6:], full[0, 6:], atol=1e-4)
    assert bank.restored


def test_segment_budget_gives_that_many_cheap_segments(setup):
    from anee.granularity.precision import segment_budget

    adapter, _, bank = setup
    segs = segments(adapter.num_layers, 3)
    for k in range(4):
        for order in (None, [2, 0, 1]):
            budget = segment_budget(bank, segs, k, cheap_bits=8, order=order)
            pattern = segment_schedule(bank, segs, budget, levels=(FP32, 8), order=order)
            assert sum(pattern[s[0]] == 8 for s in segs) == k
            assert bank.token_bytes(pattern) <= budget * bank.full_bytes * (1 + 1e-9)
    with pytest.raises(ValueError, match="cheap_segments"):
        segment_budget(bank, segs, 4)
