"""Real weight quantisation of a decoder's layers: per-output-channel symmetric rounding.

A weight matrix W [out, in] at `bits` b is stored as integer codes q in [-(2^(b-1)-1), 2^(b-1)-1]
(at most 2^b - 1 levels per output channel) and one fp32 scale per output channel,
s = max|W_row| / (2^(b-1)-1), so |W - s*q| <= s/2 element-wise. By default the codes are
de-quantised back to fp32 for the matmul ("fake quant"): the *multiply count does not change*, only
the bytes that a memory-bound batch-1 decoder would read per token do, and nothing runs faster.
`WeightBank(..., kernels=True)` instead runs the 8-bit level with real INT8 kernels
(`anee.granularity.int8`: the same codes, activations quantised per token), optionally on
SmoothQuant-smoothed weights; that level saves measured time as well as counted bytes.

What is quantised: every `nn.Linear` (and GPT-2 `Conv1D`) weight inside the transformer blocks.
What is not: norms and biases (fp32, a few KB per layer) and the LM head, which is tied to the token
embedding in the models here and stays fp32 (its bytes are charged at fp32 in every variant).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..core.adapters import ModelAdapter
from .int8 import Int8Linear, Smoothing, check_llama_blocks, smoothed_tensors

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


def int8_linear(linear: nn.Linear, weight: torch.Tensor | None = None) -> Int8Linear:
    """The real-INT8 version of a linear map (of `weight` in its place when given): the 8-bit codes
    and scales of `quantize_per_channel`, run by the dynamic INT8 kernel."""
    codes, scale = quantize_per_channel(linear.weight if weight is None else weight, 8)
    return Int8Linear(codes, scale, linear.bias)


def _slot(block: nn.Module, name: str) -> tuple[nn.Module, str]:
    """(parent module, attribute) that holds the submodule `name` of a block."""
    parent, _, attr = name.rpartition(".")
    return (block.get_submodule(parent) if parent else block), attr


class WeightBank:
    """fp32 and quantised copies of each block's linear weights, swapped in per layer.

    `set_bits(layer, bits)` puts one block's chosen variant in place (pointers only, no copy);
    `restore()` puts the model's own tensors and modules back. Byte counts per block and bit width are
    exact for the stored format (codes at b bits + fp32 scales; other block parameters at fp32).

    `kernels=True`: the 8-bit level runs real INT8 kernels (`Int8Linear` modules swapped into the
    block) instead of de-quantised fp32. `smoothing`: every level of a layer runs on that layer's
    smoothed weights and norms (`anee.granularity.int8`, an exact re-parametrisation in fp32), so the
    levels of one layer share its norms and can mix between tokens.
    """

    def __init__(self, adapter: ModelAdapter, bits: Sequence[int] = BITS, kernels: bool = False,
                 smoothing: Smoothing | None = None):
        self.adapter = adapter
        self.bits = tuple(sorted(set(bits) | {FP32}))
        if kernels and 8 not in self.bits:
            raise ValueError("kernels=True runs the 8-bit level with INT8 kernels: include 8 in bits "
                             f"(got {tuple(bits)})")
        if kernels or smoothing is not None:
            check_llama_blocks(adapter)
        if smoothing is not None:
            smoothing.check(adapter)
        L = adapter.num_layers
        if any(isinstance(m, Int8Linear) for i in range(L) for m in adapter.layer(i).modules()):
            raise ValueError("the model runs another bank's INT8 kernels: build a bank "
                             "while every other bank is restored")
        self.kernel_bits = frozenset({8} if kernels else ())
        self.smoothing = smoothing
        self.linears = [layer_linears(adapter, i) for i in range(L)]
        self._slots = [[_slot(adapter.layer(i), name) for name, _, _ in lin] for i, lin in enumerate(self.linears)]
        self.original = [[m.weight.data for _, m, _ in lin] for lin in self.linears]
        # the smoothed block: new values of the norms (and biases) it changes, and of the linear weights
        self._extra: list[dict[str, torch.Tensor]] = [{} for _ in range(L)]
        base = self.original
        if smoothing is not None:
            base = []
            for i, lin in enumerate(self.linears):
                new = smoothed_tensors(adapter, i, smoothing)
                base.append([new.pop(f"{name}.weight", m.weight.data) for name, m, _ in lin])
                self._extra[i] = new
        self._extra_params = [{p: adapter.layer(i).get_parameter(p) for p in self._extra[i]} for i in range(L)]
        self._extra_original = [{p: param.data for p, param in params.items()} for params in self._extra_params]
        self.variants: dict[int, list[list[torch.Tensor]]] = {FP32: base}
        self.kernels: list[list[Int8Linear]] = []
        for b in self.bits:
            if b in self.kernel_bits:
                self.kernels = [[int8_linear(m, w) for (_, m, _), w in zip(lin, ws)]
                                for lin, ws in zip(self.linears, base)]
            elif b < FP32:
                self.variants[b] = [[fake_quantize(w, b, axis) for (_, _, axis), w in zip(lin, ws)]
                                    for lin, ws in zip(self.linears, base)]
        self.current: list[int | None] = [None] * L  # None: the model's own tensors and modules
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
        """Put the `bits` variant of one block in place (the INT8 kernel modules at a kernel level)."""
        if bits not in self.bits:
            raise ValueError(f"no {bits}-bit variant in this bank (have {list(self.bits)})")
        if self.current[layer] != bits:
            self._put(layer, bits)

    def _put(self, layer: int, bits: int | None) -> None:
        # called per layer and per decoded token: modules go straight into the parent's registry
        kernel = bits in self.kernel_bits
        tensors = None if kernel else (self.original if bits is None else self.variants[bits])[layer]
        for k, ((parent, attr), (_, m, _)) in enumerate(zip(self._slots[layer], self.linears[layer])):
            parent._modules[attr] = self.kernels[layer][k] if kernel else m
            if tensors is not None:
                m.weight.data = tensors[k]
        extra = self._extra_original[layer] if bits is None else self._extra[layer]
        for path, t in extra.items():
            self._extra_params[layer][path].data = t
        self.current[layer] = bits

    @property
    def restored(self) -> bool:
        """Whether every block runs the model's own tensors and modules."""
        return all(c is None for c in self.current)

    def restore(self) -> None:
        """Put the model's own tensors and modules back in every block."""
        for layer, c in enumerate(self.current):
            if c is not None:
                self._put(layer, None)

    def pattern(self, bits_per_layer: int | Sequence[int]) -> list[int]:
        """One bit width per layer from one for all or a per-layer list (checked)."""
        L = self.adapter.num_layers
        pattern = [bits_per_layer] * L if isinstance(bits_per_layer, int) else list(bits_per_layer)
        if len(pattern) != L:
            raise ValueError(f"need one bit width per layer ({L}), got {len(pattern)}")
        bad = sorted(set(pattern) - set(self.bits))
        if bad:
            raise ValueError(f"no {bad} variants in this bank (have {list(self.bits)})")
        return pattern

    @contextmanager
    def applied(self, bits_per_layer: int | Sequence[int]) -> Iterator[None]:
        """Run the model with the given precision per layer (or one for all); restored on exit.
        Re-entrant with the same pattern (the inner context changes nothing), so an executor holding
        this bank's weights can run inside a generation that already applied them."""
        pattern = self.pattern(bits_per_layer)
        if self.current == pattern:
            yield
            return
        if not self.restored:
            raise ValueError("this bank is already applied with another precision pattern; leave that context first")
        try:
            for i, b in enumerate(pattern):
                self.set_bits(i, b)
            yield
        finally:
            self.restore()

    def at(self, bits_per_layer: int | Sequence[int]) -> Precision:
        """This bank at one precision pattern, as an executor's `weights` (see `AdaptiveExecutor`)."""
        return Precision(self, tuple(self.pattern(bits_per_layer)))


@dataclass(frozen=True)
class Precision:
    """A bank at one precision per layer: weights an executor puts in place for each forward
    (`applied()`) and restores after; `bits` says what each layer reads, for byte counts."""

    bank: WeightBank
    bits: tuple[int, ...]

    @property
    def adapter(self) -> ModelAdapter:
        return self.bank.adapter

    @property
    def label(self) -> str:
        levels = sorted(set(self.bits), reverse=True)
        names = [f"INT{b}" + (" kernels" if b in self.bank.kernel_bits else "") if b < FP32 else "fp32" for b in levels]
        return names[0] if len(names) == 1 else "mixed " + "/".join(names)

    def applied(self):
        return self.bank.applied(list(self.bits))

    def token_bytes(self) -> float:
        """Weight bytes read per decoded token (batch 1) at this precision."""
        return self.bank.token_bytes(self.bits)
