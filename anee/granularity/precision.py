"""Fine-grained, intra-inference precision: a bit width per token and per layer.

`mixed_precision_forward` runs a teacher-forced chunk where token t at layer l uses the INT-b weight
variant `bits[b, t, l]` of a `WeightBank`: its queries, keys/values, output projection and MLP are all
computed with that variant (only on that token's rows, so a mixed layer costs one pass of linear
work), and every token attends to the keys/values the others wrote at their own precision — what a
sequential decoder with one shared cache would see.

Cost unit: weight bytes read per decoded token at batch 1 (memory-bound decode), relative to the
fp32 model; the LM head is fp32 in every variant. MAC counts do not change with precision.

- `segment_schedule`: the layers are split into segments; walking the segments in a given order,
  the policy gives the next segment the highest precision the *remaining* byte budget affords while
  keeping enough for the rest at the cheapest precision. Costs are input-independent, so the
  schedule depends only on the budget and the order (front-to-back, or most sensitive first from
  calibration).
- `progressive_refinement`: a cheap all-INT4 pass; tokens whose prediction entropy is high are
  re-executed at fp32 while the running byte budget allows (checked online, token by token).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..core.adapters import ModelAdapter
from ..core.divergence import entropy, nll_sum
from ..core.layer_step import grouped_layer_step, layer_step
from .quantize import FP32, WeightBank


@torch.no_grad()
def mixed_precision_forward(adapter: ModelAdapter, bank: WeightBank, input_ids: torch.Tensor,
                            bits: torch.Tensor | Sequence[int] | int) -> torch.Tensor:
    """Logits [B, T, V] of a causal chunk with a bit width per token and layer (`bits` [B, T, L],
    a per-layer list, or one int). Weights are restored to fp32 afterwards."""
    B, T = input_ids.shape
    L = adapter.num_layers
    bits = torch.as_tensor(bits, dtype=torch.long)
    if bits.ndim == 0:
        bits = bits.expand(L)
    if bits.ndim == 1:
        bits = bits.expand(B, T, L)
    if bits.shape != (B, T, L):
        raise ValueError(f"bits must be [B, T, L] = {(B, T, L)}, got {tuple(bits.shape)}")
    dev = input_ids.device
    position_ids = torch.arange(T, device=dev).expand(B, T)
    h = adapter.embed(input_ids, position_ids)
    pos = adapter.position_state(h, position_ids)
    causal = torch.ones(T, T, dtype=torch.bool, device=dev).tril()
    try:
        for layer in range(L):
            levels = bits[:, :, layer].unique().tolist()
            if len(levels) == 1:
                bank.set_bits(layer, levels[0])
                h = layer_step(adapter, layer, h, pos, None, causal)
            else:
                groups = [(bits[:, :, layer] == lv, lambda lv=lv, layer=layer: bank.set_bits(layer, lv))
                          for lv in levels]
                h = grouped_layer_step(adapter, layer, h, pos, causal, groups)
    finally:
        bank.restore()
    return adapter.logits(h)


def token_bytes(bank: WeightBank, bits: torch.Tensor) -> torch.Tensor:
    """Weight bytes read per token [B, T] for a bit-width tensor [B, T, L] (plus the fp32 head)."""
    L = bits.shape[-1]
    out = torch.full(bits.shape[:-1], bank.head_bytes, dtype=torch.float64)
    for b in bank.bits:
        per_layer = torch.tensor([bank.layer_bytes(i, b) for i in range(L)], dtype=torch.float64)
        out += ((bits == b).double() * per_layer).sum(-1)
    return out


def segments(num_layers: int, num_segments: int) -> list[list[int]]:
    """Contiguous, near-equal segments of layer indices."""
    if not 1 <= num_segments <= num_layers:
        raise ValueError(f"need 1 <= num_segments <= {num_layers}")
    edges = [round(i * num_layers / num_segments) for i in range(num_segments + 1)]
    return [list(range(edges[i], edges[i + 1])) for i in range(num_segments)]


def segment_schedule(bank: WeightBank, segs: list[list[int]], budget: float, levels: Sequence[int] = (FP32, 8, 4),
                     order: Sequence[int] | None = None) -> list[int]:
    """Bit width per layer: each segment (in `order`) gets the highest precision in `levels` that the
    remaining budget affords with every later segment still payable at the cheapest level.

    `budget` is the allowed fraction of the fp32 model's bytes per token (LM head included). Raises
    if even the all-cheapest schedule does not fit.
    """
    levels = sorted(levels, reverse=True)
    cheapest = levels[-1]
    allowed = budget * bank.full_bytes * (1 + 1e-12)
    seg_bytes = {b: [sum(bank.layer_bytes(i, b) for i in s) for s in segs] for b in levels}
    order = list(range(len(segs))) if order is None else list(order)
    if sorted(order) != list(range(len(segs))):
        raise ValueError("order must be a permutation of the segment indices")
    spent = bank.head_bytes
    reserve = sum(seg_bytes[cheapest])
    if spent + reserve > allowed:
        raise ValueError(f"budget {budget:.3f} is below the cheapest schedule "
                         f"({(spent + reserve) / bank.full_bytes:.3f})")
    choice = {}
    for s in order:
        reserve -= seg_bytes[cheapest][s]  # what the later segments need at least
        for b in levels:
            if spent + seg_bytes[b][s] + reserve <= allowed:
                choice[s] = b
                spent += seg_bytes[b][s]
                break
    pattern = [FP32] * bank.adapter.num_layers
    for s, layers in enumerate(segs):
        for i in layers:
            pattern[i] = choice[s]
    return pattern


def segment_budget(bank: WeightBank, segs: list[list[int]], cheap_segments: int, cheap_bits: int = 8,
                   order: Sequence[int] | None = None) -> float:
    """The byte budget (rounded up to 3 decimals) at which `segment_schedule` with levels
    (fp32, `cheap_bits`) keeps the first segments in `order` at fp32 and runs the last
    `cheap_segments` at `cheap_bits`."""
    if not 0 <= cheap_segments <= len(segs):
        raise ValueError(f"cheap_segments must be between 0 and {len(segs)}, got {cheap_segments}")
    order = list(range(len(segs))) if order is None else list(order)
    cheap = {i for s in order[len(segs) - cheap_segments:] for i in segs[s]}
    pattern = [cheap_bits if i in cheap else FP32 for i in range(bank.adapter.num_layers)]
    return math.ceil(1000 * bank.token_bytes(pattern) / bank.full_bytes) / 1000


@torch.no_grad()
def segment_sensitivity(adapter: ModelAdapter, bank: WeightBank, windows: torch.Tensor, segs: list[list[int]],
                        bits: int = 4) -> list[float]:
    """Mean NLL increase on calibration windows [N, T] when only one segment runs at `bits`."""
    def nll(pattern):
        total, count = 0.0, 0
        for w in windows:
            logits = mixed_precision_forward(adapter, bank, w.unsqueeze(0), pattern)
            total += nll_sum(logits[0, :-1], w[1:])
            count += w.numel() - 1
        return total / count

    L = adapter.num_layers
    base = nll([FP32] * L)
    out = []
    for s in segs:
        pattern = [bits if i in set(s) else FP32 for i in range(L)]
        out.append(nll(pattern) - base)
    return out


@torch.no_grad()
def progressive_refinement(adapter: ModelAdapter, bank: WeightBank, input_ids: torch.Tensor, budget: float,
                           threshold: float, cheap_bits: int = 4, fine_bits: int = FP32,
                           cheap_logits: torch.Tensor | None = None, spent_before: float = 0.0, tokens_before: int = 0,
                           count_last: bool = True) -> dict:
    """Cheap pass, then re-execution at `fine_bits` of the tokens whose entropy exceeds `threshold`,
    in token order, while the running spend stays within `budget` x fp32 bytes x tokens so far.

    A refined token pays the cheap pass plus a full fine pass (its layers at `fine_bits` and the LM
    head again). `spent_before`/`tokens_before` carry the running account across windows so the budget
    holds over a whole evaluation set. `count_last=False` leaves the last position out of the
    account (teacher-forced scoring never uses its prediction; it is never refined). Returns logits,
    refined mask [B, T], bytes per token [B, T].
    """
    B, T = input_ids.shape
    L = adapter.num_layers
    if B != 1:
        raise ValueError("progressive_refinement runs one sequence at a time (batch 1)")
    if cheap_logits is None:
        cheap_logits = mixed_precision_forward(adapter, bank, input_ids, cheap_bits)
    unc = entropy(cheap_logits)[0]
    cheap = bank.token_bytes([cheap_bits] * L)
    extra = bank.token_bytes([fine_bits] * L)
    full = bank.full_bytes
    refined = torch.zeros(B, T, dtype=torch.bool)
    spent, n = spent_before, tokens_before
    T_acc = T if count_last else T - 1
    if spent + T_acc * cheap > budget * full * (n + T_acc) + 1e-6 * full:
        raise ValueError(f"budget {budget:.3f} is below the cheap pass ({cheap / full:.3f})")
    for t in range(T_acc):
        n += 1
        spent += cheap
        # refine only if the account stays within budget with every later token of this window at cheap cost
        later = (T_acc - 1 - t) * cheap
        if unc[t] > threshold and spent + extra + later <= budget * full * (n + T_acc - 1 - t) + 1e-6 * full:
            refined[0, t] = True
            spent += extra
    if refined.any():
        bits = torch.where(refined.unsqueeze(-1), fine_bits, cheap_bits).expand(B, T, L)
        logits = mixed_precision_forward(adapter, bank, input_ids, bits)
    else:
        logits = cheap_logits
    per_token = torch.where(refined, cheap + extra, torch.tensor(cheap, dtype=torch.float64))
    return {"logits": logits, "refined": refined, "bytes": per_token.double(), "spent": spent, "tokens": n}


@torch.no_grad()
def refinement_threshold(adapter: ModelAdapter, bank: WeightBank, windows: torch.Tensor, budget: float,
                         cheap_bits: int = 4, fine_bits: int = 8) -> float:
    """Entropy threshold for `progressive_refinement` from calibration windows [N, T]: the quantile
    that re-executes the fraction of tokens the budget pays for, (budget - cheap) / extra."""
    L = adapter.num_layers
    cheap = bank.token_bytes([cheap_bits] * L) / bank.full_bytes
    extra = bank.token_bytes([fine_bits] * L) / bank.full_bytes
    frac = min(max((budget - cheap) / extra, 0.0), 1.0)
    ent = torch.cat([entropy(mixed_precision_forward(adapter, bank, w.unsqueeze(0), cheap_bits))[0] for w in windows])
    if frac >= 1.0:
        return float("-inf")
    return float(torch.quantile(ent.double(), 1 - frac))
