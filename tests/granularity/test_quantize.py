"""Per-channel quantisation and the weight bank."""

import pytest
import torch
from _anee_tiny import quant_llama as tiny_llama

from anee import AdaptiveExecutor, adapter_for
from anee.granularity.quantize import FP32, WeightBank, dequantize, fake_quantize, quantize_per_channel, weight_bytes


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_levels_and_error_bound(bits):
    w = torch.randn(16, 40) * torch.logspace(-2, 1, 16).unsqueeze(1)  # very different channel ranges
    codes, scale = quantize_per_channel(w, bits)
    qmax = 2 ** (bits - 1) - 1
    assert codes.abs().max() <= qmax and scale.shape == (16, 1)
    deq = dequantize(codes, scale)
    for row in range(16):
        assert deq[row].unique().numel() <= 2**bits
        # symmetric rounding: error at most half a step of that channel
        assert (w[row] - deq[row]).abs().max() <= scale[row, 0] / 2 + 1e-6
        # the channel's largest magnitude is represented exactly (up to float rounding)
        assert torch.isclose(deq[row].abs().max(), w[row].abs().max(), rtol=1e-5)


def test_conv1d_axis_and_fp32_identity():
    w = torch.randn(40, 16)  # Conv1D layout [in, out]
    deq = fake_quantize(w, 4, channel_axis=1)
    assert all(deq[:, c].unique().numel() <= 16 for c in range(16))
    assert torch.equal(fake_quantize(w, FP32), w)
    assert weight_bytes(100, 10, 4) == 50 + 40 and weight_bytes(100, 10, 32) == 400


def test_bank_swaps_and_restores_and_counts_bytes():
    model = tiny_llama()
    adapter = adapter_for(model)
    ex = AdaptiveExecutor(adapter)
    ids = torch.randint(0, 97, (1, 12))
    ref = ex.forward(ids).logits
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bank = WeightBank(adapter)
    with bank.applied(4):
        q4 = ex.forward(ids).logits
        w = adapter.layer(0).self_attn.q_proj.weight
        assert all(w[r].unique().numel() <= 16 for r in range(w.shape[0]))
    with bank.applied(8):
        q8 = ex.forward(ids).logits
    assert torch.allclose(ex.forward(ids).logits, ref)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    e4, e8 = (q4 - ref).abs().mean(), (q8 - ref).abs().mean()
    assert 0 < e8 < e4
    # bytes: INT8 reads ~1/4 and INT4 ~1/8 of the fp32 linear weights, plus scales and fp32 norms
    L = adapter.num_layers
    lin = sum(m.weight.numel() for _, m, _ in bank.linears[0])
    assert bank.layer_bytes(0, FP32) == pytest.approx(4 * sum(p.numel() for p in adapter.layer(0).parameters()))
    assert bank.layer_bytes(0, FP32) - bank.layer_bytes(0, 8) == pytest.approx(
        3 * lin - 4 * sum(m.weight.shape[0] for _, m, _ in bank.linears[0]))
    assert bank.token_bytes([4] * L) < bank.token_bytes([8] * L) < bank.token_bytes([FP32] * L) == bank.full_bytes
    assert bank.token_bytes([FP32] * L, removed=[0]) == pytest.approx(bank.full_bytes - bank.layer_bytes(0, FP32))


@torch.no_grad()
def test_kernel_bank_swaps_int8_modules_and_restores_the_model():
    from anee.granularity.int8 import Int8Linear, calibrate_smoothing

    model = tiny_llama()
    adapter = adapter_for(model)
    ex = AdaptiveExecutor(adapter)
    ids = torch.randint(0, 97, (1, 12))
    ref = ex.forward(ids).logits
    modules = {n: m for n, m in model.named_modules()}
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    smoothing = calibrate_smoothing(adapter, torch.randint(0, 97, (2, 16)))
    fake = WeightBank(adapter, bits=(8,))
    bank = WeightBank(adapter, bits=(8,), kernels=True, smoothing=smoothing)
    with bank.applied(FP32):  # the smoothed fp32 block is the model's function, bit for bit
        assert torch.equal(ex.forward(ids).logits, ref)
        assert not torch.equal(adapter.layer(0).input_layernorm.weight, params["model.layers.0.input_layernorm.weight"])
    with bank.applied(8):
        assert (isinstance(adapter.layer(0).self_attn.q_proj, Int8Linear)
                and isinstance(adapter.layer(3).mlp.down_proj, Int8Linear))
        with bank.applied(8):  # re-entrant with the same pattern
            q8 = ex.forward(ids).logits
        assert isinstance(adapter.layer(0).mlp.up_proj, Int8Linear)
        with pytest.raises(ValueError, match="already applied"), bank.applied(FP32):
            pass
        with pytest.raises(ValueError, match="another bank"):
            WeightBank(adapter)
    assert bank.restored and dict(model.named_modules()).keys() == modules.keys()
    assert all(m is modules[n] for n, m in model.named_modules())
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())
    assert 0 < (q8 - ref).abs().max() < 0.05
    # real INT8 reads what fake INT8 is charged for
    assert bank.token_bytes([8] * 4) == fake.token_bytes([8] * 4)
    precision = bank.at([8, 8, FP32, FP32])
    assert precision.bits == (8, 8, FP32, FP32) and precision.label == "mixed fp32/INT8 kernels"
    assert fake.at(8).label == "INT8" and precision.token_bytes() == bank.token_bytes([8, 8, FP32, FP32])
    with pytest.raises(ValueError, match="include 8"):
        WeightBank(adapter, bits=(4,), kernels=True)
    with pytest.raises(ValueError, match=r"no \[4\] variants"):
        bank.at(4)
