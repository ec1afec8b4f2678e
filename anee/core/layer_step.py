"""One decoder block for a chunk of tokens: the only place that runs a block's attention and MLP.

Every family reduces to the same pre-norm block (see `adapters.base`), two residual lines:

    mid = h + attn_out(attention(q(norm(h)), K, V))    # attention half; every token's K/V written
    out = mid + mlp(mid)                               # FFN half (mlp applies its own pre-norm)

Shapes: h, mid, out [B, T, D]; q [B, H, T, hd]; K, V [B, Hkv, S, hd], S = cached + new positions.

Per-token actions (`anee.core.actions`) change which tokens run which half, never what a half
computes. Three execution styles share the pieces below:

- dense (`layer_step`, `attention_residual` + `mlp_update` + `mix`): every token runs both halves and
  a per-token mask picks the result, so the arithmetic does not depend on the mix of actions and it
  stays differentiable (the executor; the hierarchical model's training path);
- gathered rows (`attention_residual(queries=...)`, `mlp_rows`): only the selected tokens run Q,
  attention, O and the MLP; the others write K/V only (the hierarchical model's timed path);
- weight groups (`grouped_layer_step`): each group of tokens runs the block with its own weights,
  and every token attends to the K/V the others wrote with theirs (precision switching).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .adapters import ModelAdapter
from .bypass import BypassBank
from .kv_cache import KVCache

CAUSAL = "causal"  # attention mask: causal within the chunk, no cache (SDPA's is_causal)
Mask = torch.Tensor | str | None  # bool [.., T, S] (True = may attend), CAUSAL, or None (attend to all)


def attend(adapter: ModelAdapter, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
           mask: Mask) -> torch.Tensor:
    """Scaled dot-product attention of q [B, H, T, hd] over keys/values [B, Hkv, S, hd]; heads
    merged: [B, T, H*hd]. Grouped-query heads are shared, not copied."""
    causal = isinstance(mask, str)
    out = F.scaled_dot_product_attention(q, keys, values, attn_mask=None if causal else mask, is_causal=causal,
                                         scale=adapter.attn_scale, enable_gqa=q.shape[1] != keys.shape[1])
    B, _, T, _ = q.shape
    return out.transpose(1, 2).reshape(B, T, -1)


def rows(x, selected: torch.Tensor):
    """The tokens `selected` (bool [B, T]) of x [B, T, ...] as a batch of one [1, n, ...]; position
    states (tuples such as rotary cos/sin, or None for absolute positions) likewise."""
    if x is None:
        return None
    if isinstance(x, tuple):
        return tuple(rows(p, selected) for p in x)
    return x[selected].unsqueeze(0)


def _scatter_heads(parts: Sequence[tuple[torch.Tensor, torch.Tensor]], B: int, T: int) -> torch.Tensor:
    """Heads [1, n, hd]-per-group parts (selected [B, T], heads [1, Hx, n, hd]) -> [B, Hx, T, hd]."""
    first = parts[0][1]
    out = first.new_empty(B, first.shape[1], T, first.shape[3])
    for selected, heads in parts:
        out.transpose(1, 2)[selected] = heads[0].transpose(0, 1)
    return out


def write_kv(adapter: ModelAdapter, layer: int, x: torch.Tensor, pos, cache: KVCache) -> None:
    """The K/V-only path of a token that does not run the block: keys and values of the normed
    stream x [B, T, D] exactly as the full path would write them."""
    k, v = adapter.kv(layer, x, pos)
    cache.update(layer, k, v)


def attention_residual(adapter: ModelAdapter, layer: int, h: torch.Tensor, pos, cache: KVCache | None, mask: Mask,
                       queries: torch.Tensor | None = None) -> torch.Tensor:
    """mid = h + attn(norm(h)). Every token's K/V go to `cache` (None: attend within the chunk).

    `queries` (bool [1, T]) gathers: only those tokens compute queries, attention and the output
    projection, the others their K/V only, and mid comes back for the queries only, [1, n, D]."""
    x = adapter.attn_norm(layer, h)
    if queries is None:
        q, k, v = adapter.qkv(layer, x, pos)
        keys, values = (k, v) if cache is None else cache.update(layer, k, v)
        return h + adapter.attn_out(layer, attend(adapter, q, keys, values, mask))
    B, T = queries.shape
    if B != 1 or cache is not None:
        raise ValueError("gathered attention runs one sequence without a cache (batch 1)")
    q, k_q, v_q = adapter.qkv(layer, rows(x, queries), rows(pos, queries))
    k_o, v_o = adapter.kv(layer, rows(x, ~queries), rows(pos, ~queries))
    keys = _scatter_heads([(queries, k_q), (~queries, k_o)], B, T)
    values = _scatter_heads([(queries, v_q), (~queries, v_o)], B, T)
    if isinstance(mask, str):
        mask = torch.ones(T, T, dtype=torch.bool, device=h.device).tril()
    return rows(h, queries) + adapter.attn_out(layer, attend(adapter, q, keys, values, mask[queries[0]]))


def mlp_update(adapter: ModelAdapter, layer: int, mid: torch.Tensor) -> torch.Tensor:
    """The FFN half's residual update mlp(norm(mid)) [.., D]."""
    return adapter.mlp(layer, mid)


def mix(mid: torch.Tensor, update: torch.Tensor, run: torch.Tensor | None = None, gate: torch.Tensor | None = None,
        skip_update: torch.Tensor | None = None) -> torch.Tensor:
    """mid + update where `run` [B, T] (everywhere when None), mid (+ `skip_update`, the FFN bypass)
    elsewhere; a float `gate` [B, T] weighs the two instead (a straight-through estimator's hard
    value carrying a soft gradient)."""
    if gate is not None:
        g = gate.unsqueeze(-1)
        return mid + g * update if skip_update is None else mid + g * update + (1 - g) * skip_update
    if run is None:
        return mid + update
    return torch.where(run.unsqueeze(-1), mid + update, mid if skip_update is None else mid + skip_update)


def mlp_rows(adapter: ModelAdapter, layer: int, mid: torch.Tensor, run: torch.Tensor | None,
             bypass: BypassBank | None = None) -> torch.Tensor:
    """Gathered FFN half on a batch of one, mid [1, n, D]: the MLP runs only where `run` [1, n]; the
    other rows get the FFN bypass (computed on those rows only), or nothing with the identity."""
    if run is None:
        return mid + adapter.mlp(layer, mid)
    selected = run[0].nonzero().squeeze(1)
    out = mid[0].index_add(0, selected, adapter.mlp(layer, mid[0][selected][None])[0])
    if bypass is not None and not bypass.is_identity:
        others = (~run[0]).nonzero().squeeze(1)
        out = out.index_add(0, others, bypass.update(layer, mid[0][others]))
    return out.unsqueeze(0)


def bypass_step(bypass: BypassBank | None, layer: int, h: torch.Tensor,
                bypassed: torch.Tensor | None = None) -> torch.Tensor:
    """h + bypass(h) where `bypassed` [B, T] (everywhere when None); h itself with the identity."""
    if bypass is None or bypass.is_identity:
        return h
    update = bypass.update(layer, h)
    return h + update if bypassed is None else torch.where(bypassed.unsqueeze(-1), h + update, h)


def layer_step(adapter: ModelAdapter, layer: int, h: torch.Tensor, pos, cache: KVCache | None, mask: Mask,
               process: torch.Tensor | None = None, n_process: int | None = None, drop: bool = False,
               bypass: BypassBank | None = None, bypassed: torch.Tensor | None = None) -> torch.Tensor:
    """The executor's block: tokens where `process` [B, T] run both halves; the others write their
    K/V only (SKIP, EXIT) and keep h, or get h + bypass(h) where `bypassed` [B, T] (every token not
    processing when None). `process=None` with `n_process=0` means no token processes (K/V-only for
    all), otherwise all do. `drop`: no K/V at all (DROP); the bypassed tokens still get the bypass."""
    if drop:
        if cache is not None:
            cache.drop(layer)
        return bypass_step(bypass, layer, h, bypassed)
    if n_process == 0:
        write_kv(adapter, layer, adapter.attn_norm(layer, h), pos, cache)
        return bypass_step(bypass, layer, h, bypassed)
    mid = attention_residual(adapter, layer, h, pos, cache, mask)
    out = mid + mlp_update(adapter, layer, mid)
    return out if process is None else torch.where(process.unsqueeze(-1), out, bypass_step(bypass, layer, h, bypassed))


def grouped_layer_step(adapter: ModelAdapter, layer: int, h: torch.Tensor, pos, mask: Mask,
                       groups: Sequence[tuple[torch.Tensor, Callable[[], None]]]) -> torch.Tensor:
    """A block where each group (selected [B, T], apply) runs with the weights `apply()` puts in
    place: its tokens' Q/K/V, output projection and MLP use them, and attention runs once over the
    K/V all groups wrote. The groups share the block's norms (computed once, with the first group's
    weights in place, e.g. a smoothed block). No cache (a teacher-forced chunk)."""
    B, T = h.shape[:2]
    groups[0][1]()
    x = adapter.attn_norm(layer, h)
    q_parts, k_parts, v_parts = [], [], []
    for selected, apply in groups:
        apply()
        q, k, v = adapter.qkv(layer, rows(x, selected), rows(pos, selected))
        q_parts.append((selected, q))
        k_parts.append((selected, k))
        v_parts.append((selected, v))
    q, k, v = (_scatter_heads(p, B, T) for p in (q_parts, k_parts, v_parts))
    attn = attend(adapter, q, k, v, mask)
    out = torch.empty_like(h)
    for selected, apply in groups:
        apply()
        mid = rows(h, selected) + adapter.attn_out(layer, rows(attn, selected))
        out[selected] = (mid + adapter.mlp(layer, mid))[0]
    return out
