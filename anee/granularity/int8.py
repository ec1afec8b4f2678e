"""Real INT8 execution of a LLaMA-style decoder's linear layers: SmoothQuant-style smoothing plus
torch's fbgemm/x86 dynamic INT8 kernel (`torch.ops.quantized.linear_dynamic`).

Why this recipe (measured on the reference CPU with SmolLM2-135M, batch 1; notebook 08 and
`python -m anee.evaluation.int8_bench` have the numbers):

- The kernel: INT8 weights (per output channel, the same codes as `quantize.quantize_per_channel`)
  times activations quantised to uint8 at run time. At batch 1 it runs the MLP matrices about 5x
  faster than fp32; torchao's weight-only INT8 and `torch._weight_int8pack_mm` are slower than fp32
  here, and bf16 is about as fast as fp32.
- Activations are quantised per token: `Int8Linear` calls the kernel once per row, so a
  teacher-forced window computes exactly what the decoder computes token by token. The kernel's own
  per-tensor scale over a whole window costs +42 % perplexity; per token, +1.2 %.
- The full 8-bit activation range (`reduce_range=False`) wherever the kernel does not saturate (CPUs
  with VNNI; probed once by `kernel_reduce_range`). torch.ao's default 7-bit range is much worse.
- SmoothQuant (Xiao et al., 2023) moves activation outliers into the weights with one scale per input
  channel, s_j = max|X_j|^a / max|W_j|^(1-a) (rounded to a power of two), calibrated on the valid
  split. X/s is folded into what produces X (the RMSNorm weight before q/k/v and before gate/up; the
  rows of up_proj before down_proj), W*s into the consuming weights: with power-of-two scales the
  smoothed fp32 model is bit-identical to the original (`smoothed`); only the INT8 rounding sees the
  smoother inputs. It halves the KL to the fp32 model.
- o_proj is not smoothed: its inputs have mild outliers (keeping every o_proj in fp32 changes the KL
  by 5 %), and folding 1/s into v_proj would put the K/V cache in a space that other precisions of the
  same layer do not share. With this choice every fold stays inside one block and off the cache, so a
  layer may switch precision between tokens.

torch marks its quantized-tensor API as deprecated (pytorch#184982) but ships and runs the kernel;
this module is the one place that touches it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from ..core.adapters import ModelAdapter
from ..core.checkpoints import Checkpointable


@dataclass(frozen=True)
class Fold:
    """One smoothing site of a block: the output channels of `source` (a norm's weight, or a linear's
    rows) absorb 1/s, the input columns of every `targets` linear absorb s."""

    source: str
    targets: tuple[str, ...]


# LLaMA-style blocks (SmolLM2, TinyLlama, Llama, Mistral, Qwen2); o_proj is left out on purpose (see above)
FOLDS = (
    Fold("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    Fold("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    Fold("mlp.up_proj", ("mlp.down_proj",)),
)
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
UNSUPPORTED = ("the real INT8 path supports LLaMA-style blocks (self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj, "
               "input/post_attention_layernorm; SmolLM2, TinyLlama, Llama, Mistral, Qwen2); for other families use "
               "the fake-quant WeightBank(adapter) without kernels")


def check_llama_blocks(adapter: ModelAdapter) -> None:
    """ValueError naming the fix unless every block has the LLaMA-style modules the folds need."""
    for i in range(adapter.num_layers):
        block = adapter.layer(i)
        for name in LINEARS:
            try:
                module = block.get_submodule(name)
            except AttributeError:
                raise ValueError(f"layer {i} has no {name}: {UNSUPPORTED}") from None
            if type(module) is not nn.Linear:
                raise ValueError(f"layer {i}: {name} is a {type(module).__name__}, not an nn.Linear: {UNSUPPORTED}")
        for fold in FOLDS[:2]:
            if not hasattr(block, fold.source) or getattr(block.get_submodule(fold.source), "weight", None) is None:
                raise ValueError(f"layer {i} has no {fold.source}.weight: {UNSUPPORTED}")


# -- calibration ------------------------------------------------------------------------------------
@torch.no_grad()
def activation_maxima(adapter: ModelAdapter, windows: torch.Tensor) -> list[list[torch.Tensor]]:
    """max |X_j| per input channel of every fold's targets, per layer ([L][len(FOLDS)] of [in]), over
    the calibration windows [N, T] (one plain forward each; the targets of a fold share their input)."""
    check_llama_blocks(adapter)
    L = adapter.num_layers
    maxima: list[list[torch.Tensor | None]] = [[None] * len(FOLDS) for _ in range(L)]
    hooks = []

    def record(layer: int, k: int):
        def hook(_module, args):
            x = args[0].detach().float()
            m = x.abs().reshape(-1, x.shape[-1]).amax(0)
            prev = maxima[layer][k]
            maxima[layer][k] = m if prev is None else torch.maximum(prev, m)
        return hook

    try:
        for i in range(L):
            for k, fold in enumerate(FOLDS):
                hooks.append(adapter.layer(i).get_submodule(fold.targets[0]).register_forward_pre_hook(record(i, k)))
        for w in windows:
            adapter.model(input_ids=w.unsqueeze(0), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    if any(m is None for row in maxima for m in row):
        raise ValueError("calibration saw no tokens: pass at least one window [N, T] with N, T >= 1")
    return maxima  # type: ignore[return-value]


def smoothing_scales(act_max: torch.Tensor, weight_max: torch.Tensor, alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^alpha / max|W_j|^(1-alpha), rounded to the nearest power of two: dividing and
    multiplying by a power of two is exact in floating point, so the smoothed fp32 model computes
    bit for bit what the original does. 1 where a channel never fires or has no weight."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (SmoothQuant's migration strength), got {alpha}")
    a, w = act_max.double(), weight_max.double()
    s = torch.exp2(torch.round(torch.log2(a.pow(alpha) / w.pow(1 - alpha))))
    return torch.where((a > 0) & (w > 0) & torch.isfinite(s), s, torch.ones_like(s)).float()


class Smoothing(Checkpointable):
    """Per-layer, per-fold smoothing scales ([L][len(FOLDS)] of [channels]) and the alpha they were
    calibrated with. Saved as safetensors with a JSON config (`save` / `from_checkpoint`)."""

    FORMAT = "anee.int8_smoothing/1"
    FIX = "recalibrate with anee.granularity.int8.calibrate_smoothing(adapter, valid_windows) and save it again"

    def __init__(self, scales: list[list[torch.Tensor]], alpha: float):
        if any(len(row) != len(FOLDS) for row in scales):
            raise ValueError(f"need {len(FOLDS)} scale vectors per layer (one per fold)")
        self.scales = [[s.float() for s in row] for row in scales]
        self.alpha = float(alpha)

    @property
    def num_layers(self) -> int:
        return len(self.scales)

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        return {f"layer{i}.{fold.source}": s.contiguous() for i, row in enumerate(self.scales)
                for fold, s in zip(FOLDS, row)}

    def checkpoint_config(self) -> dict:
        return {"alpha": self.alpha, "num_layers": self.num_layers, "folds": [f.source for f in FOLDS],
                "channels": [int(s.numel()) for s in self.scales[0]] if self.scales else []}

    @classmethod
    def from_config(cls, config: dict) -> Smoothing:
        if config["folds"] != [f.source for f in FOLDS]:
            raise ValueError(f"folds {config['folds']} differ from this version's {[f.source for f in FOLDS]}")
        return cls([[torch.ones(int(n)) for n in config["channels"]] for _ in range(int(config["num_layers"]))],
                   config["alpha"])

    def load_checkpoint_tensors_(self, tensors: dict[str, torch.Tensor]) -> None:
        if any(bool((t <= 0).any()) for t in tensors.values()):
            raise ValueError("smoothing scales must be positive")
        self.scales = [[tensors[f"layer{i}.{fold.source}"].float() for fold in FOLDS] for i in range(self.num_layers)]

    def check(self, adapter: ModelAdapter) -> None:
        """ValueError naming the fix unless these scales fit the model's blocks."""
        check_llama_blocks(adapter)
        if self.num_layers != adapter.num_layers:
            raise ValueError(f"the smoothing is for {self.num_layers} layers, the model has {adapter.num_layers}; "
                             f"{self.FIX}")
        block = adapter.layer(0)
        for fold, s in zip(FOLDS, self.scales[0]):
            width = block.get_submodule(fold.targets[0]).in_features
            if s.numel() != width:
                raise ValueError(f"{fold.source}: {s.numel()} scales for {width} channels; {self.FIX}")


@torch.no_grad()
def calibrate_smoothing(adapter: ModelAdapter, windows: torch.Tensor, alpha: float = 0.5) -> Smoothing:
    """SmoothQuant scales from calibration windows [N, T] (valid split, never test). alpha = 0.5
    (SmoothQuant's default) measured best of {0.3, 0.5, 0.65} on SmolLM2 (KL to fp32)."""
    maxima = activation_maxima(adapter, windows)
    scales = []
    for i, row in enumerate(maxima):
        block = adapter.layer(i)
        per_fold = []
        for fold, act in zip(FOLDS, row):
            w_max = torch.stack([block.get_submodule(t).weight.detach().abs().amax(0) for t in fold.targets]).amax(0)
            per_fold.append(smoothing_scales(act, w_max.float(), alpha))
        scales.append(per_fold)
    return Smoothing(scales, alpha)


# -- the exact re-parametrisation -------------------------------------------------------------------
def smoothed_tensors(adapter: ModelAdapter, layer: int, smoothing: Smoothing) -> dict[str, torch.Tensor]:
    """New values of the block's parameters that smoothing changes ({parameter path: tensor}); the
    model is not modified. Source outputs are divided by s, target input columns multiplied by it,
    so in exact arithmetic the block computes the same function (folds applied in `FOLDS` order:
    up_proj is both a target and a source)."""
    block = adapter.layer(layer)
    new: dict[str, torch.Tensor] = {}

    def value(path: str) -> torch.Tensor:
        return new.get(path, block.get_parameter(path).detach())

    for fold, s in zip(FOLDS, smoothing.scales[layer]):
        source = block.get_submodule(fold.source)
        for kind in ("weight", "bias"):
            if getattr(source, kind, None) is not None:
                path = f"{fold.source}.{kind}"
                v = value(path)
                new[path] = v / (s.view(-1, *([1] * (v.ndim - 1))))  # rows of a linear, entries of a norm
        for target in fold.targets:
            path = f"{target}.weight"
            new[path] = value(path) * s
    return new


@contextmanager
def smoothed(adapter: ModelAdapter, smoothing: Smoothing) -> Iterator[None]:
    """The model with every block smoothed in place (fp32 logits unchanged up to rounding); the
    original tensors are put back on exit, also after an error."""
    smoothing.check(adapter)
    saved: list[tuple[nn.Parameter, torch.Tensor]] = []
    try:
        for i in range(adapter.num_layers):
            block = adapter.layer(i)
            for path, tensor in smoothed_tensors(adapter, i, smoothing).items():
                p = block.get_parameter(path)
                saved.append((p, p.data))
                p.data = tensor
        yield
    finally:
        for p, original in reversed(saved):
            p.data = original


# -- the kernel -------------------------------------------------------------------------------------
def _packed(codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
    """fbgemm's packed weight from INT8 codes [out, in] and per-output-channel scales."""
    with warnings.catch_warnings():  # torch's quantized-tensor API is marked deprecated; the kernel is current
        warnings.simplefilter("ignore", UserWarning)
        q = torch._make_per_channel_quantized_tensor(codes.to(torch.int8).contiguous(), scale.double().flatten(),
                                                     torch.zeros(codes.shape[0], dtype=torch.long), 0)
        return torch.ops.quantized.linear_prepack(q, None if bias is None else bias.detach().float().contiguous())


@lru_cache(maxsize=1)
def kernel_reduce_range() -> bool:
    """Whether the dynamic kernel must use 7-bit activations here: True if full 8-bit codes saturate
    (CPUs without VNNI add pairs of uint8 x int8 products in int16), probed once with the worst case."""
    codes = torch.full((1, 64), 127, dtype=torch.int8)
    x = torch.full((1, 64), 1.0)  # quantised to the top uint8 code everywhere
    y = float(torch.ops.quantized.linear_dynamic(x, _packed(codes, torch.ones(1), None), False))
    return abs(y - 64 * 127) > 1e-3 * 64 * 127


class Int8Linear(nn.Module):
    """y = x W^T + b with W as INT8 codes times one fp32 scale per output channel, run by the
    fbgemm/x86 dynamic kernel: each token's activations are quantised to uint8 with their own range.
    Inference only (no autograd through the kernel)."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        if codes.dtype != torch.int8 or codes.ndim != 2:
            raise ValueError(f"codes must be an int8 [out, in] matrix, got {codes.dtype} {tuple(codes.shape)}")
        self.out_features, self.in_features = codes.shape
        self._weight = _packed(codes, scale, bias)
        self._reduce_range = kernel_reduce_range()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float().contiguous()
        if rows.shape[0] == 1:
            y = torch.ops.quantized.linear_dynamic(rows, self._weight, self._reduce_range)
        else:  # one activation range per token, exactly as in token-by-token decoding
            y = torch.cat([torch.ops.quantized.linear_dynamic(rows[i : i + 1], self._weight, self._reduce_range)
                           for i in range(rows.shape[0])])
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, per-token uint8 activations"
