"""Real weight quantisation of a decoder's layers: per-output-channel symmetric rounding.

A weight matrix W [out, in] at `bits` b is stored as integer codes q in [-(2^(b-1)-1), 2^(b-1)-1]
(at most 2^b - 1 levels per output channel) and one fp32 scale per output channel,
s = max|W_row| / (2^(b-1)-1), so |W - s*q| <= s/2 element-wise. On this CPU the codes are
de-quantised back to fp32 for the matmul ("fake quant"): the *multiply count does not change*, only
the bytes that a memory-bound batch-1 decoder would read per token do. `WeightBank` keeps the fp32
original and the de-quantised variants of every layer's linear weights and swaps them in per layer.

What is quantised: every `nn.Linear` (and GPT-2 `Conv1D`) weight inside the transformer blocks.
What is not: norms and biases (fp32, a few KB per layer) and the LM head, which is tied to the token
embedding in the models here and stays fp32 (its bytes are charged at fp32 in every variant).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from ..core.adapters import ModelAdapter

FP32 = 32
BITS = (4, 8, FP32)


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"  # transformers.pytorch_utils.Conv1D: weight [in, out]


def quantize_per_channel(weight: torch.Tensor, bits: int, channel_axis: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel quantisation: integer codes (int8 storage) and fp32 scales.

    `channel_axis` is the output-channel axis (0 for nn.Linear [out, in], 1 for Conv1D [in, out]);
    the scale tensor broadcasts against the weight.
    """
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be between 2 and 8 for integer codes, got {bits}")
    w = weight.detach().float()
    qmax = 2 ** (bits - 1) - 1
    reduce = 1 - channel_axis
    amax = w.abs().amax(dim=reduce, keepdim=True)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    codes = torch.clamp(torch.round(w / scale), -qmax, qmax).to(torch.int8)
    return codes, scale


def dequantize(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (codes.float() * scale).to(dtype)


def fake_quantize(weight: torch.Tensor, bits: int, channel_axis: int = 0) -> torch.Tensor:
    """The de-quantised weight (what the matmul sees); identity at 32 bits."""
    if bits >= FP32:
        return weight.detach().clone()
    codes, scale = quantize_per_channel(weight, bits, channel_axis)
    return dequantize(codes, scale, weight.dtype)


def weight_bytes(numel: int, out_channels: int, bits: int) -> float:
    """Bytes to read one weight matrix: packed codes plus one fp32 scale per output channel."""
    if bits >= FP32:
        return 4.0 * numel
    return numel * bits / 8 + 4.0 * out_channels


def layer_linears(adapter: ModelAdapter, layer: int) -> list[tuple[str, nn.Module, int]]:
    """(name, module, output-channel axis) of every linear map inside one block."""
    found = []
    for name, module in adapter.layer(layer).named_modules():
        if isinstance(module, nn.Linear):
            found.append((name, module, 0))
        elif _is_conv1d(module):
            found.append((name, module, 1))
    return found


class WeightBank:
    """fp32 and de-quantised INT-b copies of each block's linear weights, swapped in per layer.

    `set_bits(layer, bits)` points the modules of one block at the chosen variant (no copy);
    `restore()` puts every original fp32 tensor back. Byte counts per block and bit width are exact
    for the stored format (codes at b bits + fp32 scales; other block parameters at fp32).
    """

    def __init__(self, adapter: ModelAdapter, bits: Sequence[int] = BITS):
        self.adapter = adapter
        self.bits = tuple(sorted(set(bits) | {FP32}))
        L = adapter.num_layers
        self.linears = [layer_linears(adapter, i) for i in range(L)]
        self.original = [[m.weight.data for _, m, _ in lin] for lin in self.linears]
        self.variants: dict[int, list[list[torch.Tensor]]] = {FP32: self.original}
        for b in self.bits:
            if b < FP32:
                self.variants[b] = [
                    [fake_quantize(m.weight.data, b, axis) for _, m, axis in lin] for lin in self.linears
                ]
        self.current = [FP32] * L
        self._layer_bytes = {b: [self._bytes(i, b) for i in range(L)] for b in self.bits}
        self.head_bytes = 4.0 * adapter.lm_head().weight.numel()

    def _bytes(self, layer: int, bits: int) -> float:
        lin_ids = {id(m.weight) for _, m, _ in self.linears[layer]}
        total = 0.0
        for _, m, axis in self.linears[layer]:
            total += weight_bytes(m.weight.numel(), m.weight.shape[axis], bits)
        for p in self.adapter.layer(layer).parameters():
            if id(p) not in lin_ids:
                total += 4.0 * p.numel()  # norms, biases: fp32
        return total

    def layer_bytes(self, layer: int, bits: int) -> float:
        return self._layer_bytes[bits][layer]

    @property
    def full_bytes(self) -> float:
        """Bytes per token of the unmodified model: every block at fp32 plus the fp32 LM head."""
        return sum(self._layer_bytes[FP32]) + self.head_bytes

    def token_bytes(self, bits_per_layer: Sequence[int], removed: Sequence[int] = ()) -> float:
        """Bytes read for one decoded token (batch 1) with a precision per layer; removed layers read nothing."""
        drop = set(removed)
        return self.head_bytes + sum(self.layer_bytes(i, b) for i, b in enumerate(bits_per_layer) if i not in drop)

    def set_bits(self, layer: int, bits: int) -> None:
        if bits not in self.variants:
            raise ValueError(f"no {bits}-bit variant in this bank (have {sorted(self.variants)})")
        if self.current[layer] == bits:
            return
        for (_, m, _), w in zip(self.linears[layer], self.variants[bits][layer]):
            m.weight.data = w
        self.current[layer] = bits

    def restore(self) -> None:
        for layer in range(self.adapter.num_layers):
            self.set_bits(layer, FP32)

    @contextmanager
    def applied(self, bits_per_layer: int | Sequence[int]) -> Iterator[None]:
        """Run the model with the given precision per layer (or one for all); restored on exit."""
        L = self.adapter.num_layers
        pattern = [bits_per_layer] * L if isinstance(bits_per_layer, int) else list(bits_per_layer)
        if len(pattern) != L:
            raise ValueError(f"need one bit width per layer ({L}), got {len(pattern)}")
        try:
            for i, b in enumerate(pattern):
                self.set_bits(i, b)
            yield
        finally:
            self.restore()
