"""The real INT8 path: smoothing is an exact re-parametrisation in fp32, the kernel quantises each
token's activations on their own, and the smoothing helps where activations have outlier channels."""

import pytest
import torch
from _anee_tiny import quant_llama
from conftest import tiny_gpt2

from anee import AdaptiveExecutor, adapter_for
from anee.granularity.int8 import (
    FOLDS,
    Int8Linear,
    Smoothing,
    activation_maxima,
    calibrate_smoothing,
    check_llama_blocks,
    kernel_reduce_range,
    smoothed,
    smoothing_scales,
)
from anee.granularity.quantize import quantize_per_channel


def calib_windows(vocab: int = 97, n: int = 3, T: int = 16) -> torch.Tensor:
    return torch.randint(0, vocab, (n, T), generator=torch.Generator().manual_seed(3))


@torch.no_grad()
def test_smoothing_is_an_exact_reparametrisation_and_always_restores():
    model = quant_llama(layers=3)
    adapter = adapter_for(model)
    ex = AdaptiveExecutor(adapter)
    ids = torch.randint(0, 97, (2, 12))
    ref = ex.forward(ids).logits
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    smoothing = calibrate_smoothing(adapter, calib_windows())
    with smoothed(adapter, smoothing):
        changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
        logits = ex.forward(ids).logits
    assert (logits - ref).abs().max() <= 1e-4  # in fact bit-identical: power-of-two scales
    assert torch.equal(logits, ref)
    assert any("input_layernorm" in n for n in changed) and any("up_proj" in n for n in changed)
    assert not any("o_proj" in n or "v_proj.bias" in n for n in changed)  # o_proj is not smoothed
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with pytest.raises(RuntimeError, match="boom"), smoothed(adapter, smoothing):
        raise RuntimeError("boom")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@torch.no_grad()
def test_smoothing_is_exact_on_smollm2(smollm2):
    model, tokenizer = smollm2
    adapter = adapter_for(model)
    ex = AdaptiveExecutor(adapter)
    ids = tokenizer("The history of the printing press begins in Mainz, where", return_tensors="pt").input_ids
    smoothing = calibrate_smoothing(adapter, torch.randint(0, adapter.dims.vocab, (1, 32),
                                                           generator=torch.Generator().manual_seed(0)))
    ref = ex.forward(ids).logits
    with smoothed(adapter, smoothing):
        logits = ex.forward(ids).logits
    assert (logits - ref).abs().max() <= 1e-4


def test_scales_are_powers_of_two_and_move_outliers():
    act = torch.tensor([1.0, 64.0, 0.0, 2.0])
    w = torch.tensor([1.0, 1.0, 1.0, 0.0])
    s = smoothing_scales(act, w, alpha=0.5)
    assert torch.equal(s, torch.tensor([1.0, 8.0, 1.0, 1.0]))  # sqrt(64) = 8; dead channels keep 1
    s = smoothing_scales(torch.tensor([3.0, 100.0]), torch.tensor([0.3, 0.01]), alpha=0.5)
    assert torch.equal(torch.exp2(torch.log2(s).round()), s)
    assert s[1] > s[0]
    with pytest.raises(ValueError, match="alpha"):
        smoothing_scales(act, w, alpha=1.5)


def test_activation_maxima_per_fold():
    model = quant_llama(layers=2)
    adapter = adapter_for(model)
    windows = calib_windows()
    maxima = activation_maxima(adapter, windows)
    assert len(maxima) == 2 and all(len(row) == len(FOLDS) for row in maxima)
    # the first fold's input is the attention norm's output: check against a direct computation
    h = model.model.embed_tokens(windows)
    x = adapter.attn_norm(0, h)
    assert torch.allclose(maxima[0][0], x.abs().reshape(-1, x.shape[-1]).amax(0))
    assert maxima[0][2].numel() == model.config.intermediate_size
    with pytest.raises(ValueError, match="no tokens"):
        activation_maxima(adapter, windows[:0])


@torch.no_grad()
def test_int8_linear_is_per_token_and_close_to_fp32():
    torch.manual_seed(0)
    w, b = torch.randn(24, 40) * 0.1, torch.randn(24)
    codes, scale = quantize_per_channel(w, 8)
    lin = Int8Linear(codes, scale, b)
    x = torch.randn(2, 5, 40)
    x[1, 3] *= 100  # one loud token must not coarsen the others' activation codes
    y = lin(x)
    assert y.shape == (2, 5, 24)
    rows = torch.stack([lin(x[i, t][None])[0] for i in range(2) for t in range(5)]).view(2, 5, 24)
    assert torch.equal(y, rows)  # a chunk computes exactly what token-by-token decoding does
    ref = x @ (codes.float() * scale).T + b
    err = (y - ref).abs().amax(-1) / ref.abs().amax(-1)
    assert err.max() < 0.03  # activation rounding only; per token, so the quiet tokens stay accurate
    with pytest.raises(ValueError, match="int8"):
        Int8Linear(codes.float(), scale)


def test_kernel_range_probe():
    assert isinstance(kernel_reduce_range(), bool)
    lin = Int8Linear(torch.full((1, 64), 127, dtype=torch.int8), torch.ones(1))
    # the worst case for 16-bit pair sums comes out exact with the probed range
    assert float(lin(torch.ones(1, 64))) == pytest.approx(64 * 127, rel=1e-2)


@torch.no_grad()
def test_smoothing_helps_with_an_outlier_channel():
    """Make one channel of the attention input 30x louder by an exact re-parametrisation (norm weight
    up, q/k/v columns down): INT8 kernels then lose accuracy, and smoothing wins it back."""
    from anee.granularity.quantize import WeightBank

    model = quant_llama(layers=2)
    adapter = adapter_for(model)
    for i in range(2):
        block = adapter.layer(i)
        block.input_layernorm.weight[5] *= 30
        for name in ("q_proj", "k_proj", "v_proj"):
            getattr(block.self_attn, name).weight[:, 5] /= 30
    ex = AdaptiveExecutor(adapter)
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(5))
    ref = ex.forward(ids).logits

    def err(smoothing):
        bank = WeightBank(adapter, bits=(8,), kernels=True, smoothing=smoothing)
        out = AdaptiveExecutor(adapter, weights=bank.at(8)).forward(ids).logits
        assert bank.restored
        return float((out - ref).abs().mean())

    smoothing = calibrate_smoothing(adapter, calib_windows())
    assert smoothing.scales[0][0][5] > 4 * smoothing.scales[0][0].median()
    assert err(smoothing) < 0.5 * err(None)


def test_checkpoint_round_trip_and_clear_errors(tmp_path):
    model = quant_llama(layers=2)
    adapter = adapter_for(model)
    smoothing = calibrate_smoothing(adapter, calib_windows(), alpha=0.4)
    path = smoothing.save(tmp_path / "int8_smoothing.safetensors")
    loaded = Smoothing.from_checkpoint(path)
    assert loaded.alpha == pytest.approx(0.4) and loaded.num_layers == 2
    assert all(torch.equal(a, b) for ra, rb in zip(smoothing.scales, loaded.scales) for a, b in zip(ra, rb))
    loaded.check(adapter)
    with pytest.raises(ValueError, match="recalibrate"):
        loaded.check(adapter_for(quant_llama(layers=3)))
    with pytest.raises(ValueError, match="recalibrate"):
        Smoothing.from_checkpoint(tmp_path / "missing.safetensors")


def test_other_families_are_refused_with_the_fix():
    adapter = adapter_for(tiny_gpt2())
    with pytest.raises(ValueError, match="LLaMA-style.*fake-quant WeightBank"):
        check_llama_blocks(adapter)
    with pytest.raises(ValueError, match="LLaMA-style"):
        calibrate_smoothing(adapter, calib_windows())
