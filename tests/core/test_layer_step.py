"""The one layer step: the gathered and the weight-group paths compute what the dense path computes on
their rows, the K/V-only and DROP paths write exactly what they should, the straight-through
mix has the hard value forward and the soft gradient backward, and a SKIPPED / DROPPED token gets the
bypass (the K/V it writes still come from its un-updated stream)."""

from __future__ import annotations

import pytest
import torch
from _anee_tiny import random_bypass
from conftest import VOCAB, tiny_llama

from anee import adapter_for
from anee.core.bypass import BypassBank, BypassConfig
from anee.core.kv_cache import KVCache
from anee.core.layer_step import (
    CAUSAL,
    attention_residual,
    bypass_step,
    grouped_layer_step,
    layer_step,
    mix,
    mlp_rows,
    mlp_update,
)

LAYER = 1
ATOL = 1e-5


def stream(adapter, B: int, T: int, seed: int = 0):
    """A residual stream [B, T, D] (the embeddings of random tokens) and its position state."""
    ids = torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))
    position_ids = torch.arange(T).expand(B, T)
    h = adapter.embed(ids, position_ids)
    return h, adapter.position_state(h, position_ids)


def block_weights(adapter, layer: int) -> dict[str, torch.nn.Parameter]:
    """The block's projection weights and biases (its norms excluded: a weight group swaps linears)."""
    return {n: p for n, p in adapter.layer(layer).named_parameters() if "norm" not in n and not n.startswith("ln_")}


def load(params: dict[str, torch.nn.Parameter], values: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(values[n])


def by_hand_attention(adapter, q, k, v):
    """Causal softmax attention written out: GQA heads repeated, scores masked, heads merged."""
    B, H, T, _ = q.shape
    rep = H // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = (q @ k.transpose(-1, -2)) * adapter.attn_scale
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1)


@torch.no_grad()
def test_gathered_rows_equal_the_dense_rows(tiny_model):
    """Only the queried tokens run Q, attention, O (and the MLP where `run`); the others write K/V only,
    and the queried rows come out as the dense path's rows."""
    adapter = adapter_for(tiny_model)
    T, D = 12, adapter.dims.hidden
    h, pos = stream(adapter, 1, T)
    assert (pos is None) == (tiny_model.config.model_type == "gpt2")  # GPT-2: absolute positions, no state
    queries = torch.tensor([[t % 3 != 0 for t in range(T)]])  # token 0 (that everyone attends to) is not queried
    n = int(queries.sum())
    dense_mid = attention_residual(adapter, LAYER, h, pos, None, CAUSAL)
    mid = attention_residual(adapter, LAYER, h, pos, None, CAUSAL, queries=queries)
    assert mid.shape == (1, n, D)
    assert torch.allclose(mid, dense_mid[queries].unsqueeze(0), atol=ATOL)
    causal = torch.ones(T, T, dtype=torch.bool).tril()  # an explicit mask is restricted to the query rows
    assert torch.allclose(attention_residual(adapter, LAYER, h, pos, None, causal, queries=queries), mid, atol=ATOL)

    run = torch.tensor([[i % 2 == 0 for i in range(n)]])  # the FFN for every other queried token
    run_dense = torch.zeros(1, T, dtype=torch.bool)
    run_dense[queries] = run[0]
    dense_out = mix(dense_mid, mlp_update(adapter, LAYER, dense_mid), run_dense)
    out = mlp_rows(adapter, LAYER, mid, run)
    assert out.shape == (1, n, D)
    assert torch.allclose(out, dense_out[queries].unsqueeze(0), atol=ATOL)
    assert torch.equal(out[0, ~run[0]], mid[0, ~run[0]])  # no FFN: the row is left exactly as it was
    everyone = mlp_rows(adapter, LAYER, mid, None)
    assert torch.allclose(everyone, (dense_mid + mlp_update(adapter, LAYER, dense_mid))[queries].unsqueeze(0),
                          atol=ATOL)
    # the non-queried tokens' K/V matter: without them the queried rows would differ
    alone = attention_residual(adapter, LAYER, h[:, queries[0]],
                               pos if pos is None else tuple(p[:, queries[0]] for p in pos),
                               None, CAUSAL)
    assert not torch.allclose(alone, mid, atol=1e-3)


def test_gathered_attention_needs_one_sequence_and_no_cache(tiny_model):
    adapter = adapter_for(tiny_model)
    h, pos = stream(adapter, 2, 6)
    queries = torch.ones(2, 6, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"gathered attention runs one sequence without a cache \(batch 1\)"):
        attention_residual(adapter, LAYER, h, pos, None, CAUSAL, queries=queries)
    h1, pos1 = stream(adapter, 1, 6)
    with pytest.raises(ValueError, match="without a cache"):
        attention_residual(adapter, LAYER, h1, pos1, KVCache(adapter.num_layers), CAUSAL, queries=queries[:1])


@torch.no_grad()
def test_one_weight_group_equals_layer_step(tiny_model):
    adapter = adapter_for(tiny_model)
    h, pos = stream(adapter, 2, 10)
    calls = []
    out = grouped_layer_step(adapter, LAYER, h, pos, CAUSAL,
                             [(torch.ones(2, 10, dtype=torch.bool), lambda: calls.append("apply"))])
    ref = layer_step(adapter, LAYER, h, pos, None, CAUSAL)
    assert torch.allclose(out, ref, atol=ATOL)
    assert calls == ["apply"] * 3  # before the shared norm, before the group's Q/K/V, before its O and MLP
    causal = torch.ones(10, 10, dtype=torch.bool).tril()
    assert torch.allclose(grouped_layer_step(adapter, LAYER, h, pos, causal,
                                             [(torch.ones(2, 10, dtype=torch.bool), lambda: None)]),
                          ref, atol=ATOL)


@torch.no_grad()
def test_two_weight_groups_equal_the_hand_built_block(tiny_model):
    """Group A runs with the model's weights, group B with perturbed ones: each token's Q, O and MLP use
    its group's weights, and every token attends to the K/V each token wrote with its own weights."""
    adapter = adapter_for(tiny_model)
    B, T = 2, 10
    h, pos = stream(adapter, B, T, seed=1)
    params = block_weights(adapter, LAYER)
    g = torch.Generator().manual_seed(2)
    weights_a = {n: p.detach().clone() for n, p in params.items()}
    weights_b = {n: w * 1.5 + 0.05 * torch.randn(w.shape, generator=g) for n, w in weights_a.items()}
    in_a = torch.tensor([[t % 2 == 0 for t in range(T)], [t >= 4 for t in range(T)]])

    def qkv(weights):
        load(params, weights)
        return adapter.qkv(LAYER, adapter.attn_norm(LAYER, h), pos)

    def tail(weights, attn):  # output projection and FFN half with these weights
        load(params, weights)
        mid = h + adapter.attn_out(LAYER, attn)
        return mid + adapter.mlp(LAYER, mid)

    (qa, ka, va), (qb, kb, vb) = qkv(weights_a), qkv(weights_b)
    own = in_a[:, None, :, None]  # [B, 1, T, 1]: each token's heads from its own group's weights
    attn = by_hand_attention(adapter, torch.where(own, qa, qb), torch.where(own, ka, kb), torch.where(own, va, vb))
    ref = torch.where(in_a.unsqueeze(-1), tail(weights_a, attn), tail(weights_b, attn))

    out = grouped_layer_step(adapter, LAYER, h, pos, CAUSAL,
                             [(in_a, lambda: load(params, weights_a)), (~in_a, lambda: load(params, weights_b))])
    assert torch.allclose(out, ref, atol=ATOL)
    # neither set of weights alone gives this block
    load(params, weights_a)
    only_a = layer_step(adapter, LAYER, h, pos, None, CAUSAL)
    load(params, weights_b)
    only_b = layer_step(adapter, LAYER, h, pos, None, CAUSAL)
    assert not torch.allclose(out[in_a], only_a[in_a], atol=1e-3)  # group A's tokens saw group B's K/V
    assert not torch.allclose(out[~in_a], only_b[~in_a], atol=1e-3)
    load(params, weights_a)


@torch.no_grad()
def test_no_processing_token_writes_only_its_kv(tiny_model):
    adapter = adapter_for(tiny_model)
    h, pos = stream(adapter, 2, 7)
    cache = KVCache(adapter.num_layers)
    out = layer_step(adapter, LAYER, h, pos, cache, CAUSAL, None, n_process=0)
    assert out is h
    k, v = adapter.kv(LAYER, adapter.attn_norm(LAYER, h), pos)
    assert torch.equal(cache.keys[LAYER], k) and torch.equal(cache.values[LAYER], v)
    assert cache.dropped[LAYER] is False and cache.keys[0] is None and cache.length == 0
    _, k_full, v_full = adapter.qkv(LAYER, adapter.attn_norm(LAYER, h), pos)  # what a processing token writes
    assert torch.allclose(k, k_full, atol=ATOL) and torch.allclose(v, v_full, atol=ATOL)


@torch.no_grad()
def test_process_mask_keeps_the_others_stream_and_writes_every_kv(tiny_model):
    adapter = adapter_for(tiny_model)
    h, pos = stream(adapter, 2, 7)
    process = torch.tensor([[True, False, True, True, False, False, True], [False] * 6 + [True]])
    full_cache, cache = KVCache(adapter.num_layers), KVCache(adapter.num_layers)
    full = layer_step(adapter, LAYER, h, pos, full_cache, CAUSAL)
    out = layer_step(adapter, LAYER, h, pos, cache, CAUSAL, process, int(process.sum()))
    assert torch.equal(out[process], full[process]) and torch.equal(out[~process], h[~process])
    assert (torch.equal(cache.keys[LAYER], full_cache.keys[LAYER])
            and torch.equal(cache.values[LAYER], full_cache.values[LAYER]))


@torch.no_grad()
def test_drop_writes_nothing_and_marks_the_cache(tiny_model):
    adapter = adapter_for(tiny_model)
    h, pos = stream(adapter, 1, 5)
    cache = KVCache(adapter.num_layers)
    assert layer_step(adapter, LAYER, h, pos, cache, CAUSAL, drop=True) is h
    assert cache.keys[LAYER] is None and cache.values[LAYER] is None
    assert cache.dropped[LAYER] is True and cache.dropped[0] is None
    assert layer_step(adapter, LAYER, h, pos, None, CAUSAL, drop=True) is h  # no cache: nothing to mark
    with pytest.raises(ValueError, match=f"layer {LAYER} was dropped for earlier tokens of this sequence"):
        layer_step(adapter, LAYER, h, pos, cache, CAUSAL)


def test_mix_straight_through_gate():
    """gate = hard + p - p.detach(): the forward value is the hard mask, the gradient the soft one's."""
    g = torch.Generator().manual_seed(0)
    mid = torch.randn(2, 5, 8, generator=g).requires_grad_()
    update = torch.randn(2, 5, 8, generator=g).requires_grad_()
    logit = torch.randn(2, 5, generator=g).requires_grad_()
    weight = torch.randn(2, 5, 8, generator=g)  # a loss that weighs every output coordinate differently
    run = torch.tensor([[True, False, True, False, True], [False, False, True, True, False]])
    p = torch.sigmoid(logit)
    gate = run.float() + p - p.detach()
    out = mix(mid, update, run, gate)
    hard = mix(mid.detach(), update.detach(), run)
    assert torch.equal(hard, torch.where(run.unsqueeze(-1), mid + update, mid).detach())
    assert torch.allclose(out.detach(), hard, atol=1e-6)
    (out * weight).sum().backward()
    p = p.detach()
    assert torch.allclose(logit.grad, p * (1 - p) * (weight * update.detach()).sum(-1), atol=1e-6)
    assert torch.allclose(update.grad, weight * run.unsqueeze(-1).float(), atol=1e-6)
    assert torch.equal(mid.grad, weight)
    assert torch.equal(mix(mid, update).detach(), (mid + update).detach())  # no mask: everyone


# -- the bypass: what a SKIPPED / DROPPED token gets instead of the block -----------------------------
def _bank(adapter, family: str = "linear", target: str = "layer"):
    return random_bypass(family, adapter.dims.hidden, adapter.num_layers,
                         rank=3 if family in ("diag_lowrank", "mlp") else 0,
                         target=target, seed=11)


@torch.no_grad()
def test_bypass_step_adds_the_update_where_bypassed():
    adapter = adapter_for(tiny_llama())
    h, _ = stream(adapter, 2, 5)
    bank = _bank(adapter, "diag_lowrank")
    update = bank.update(LAYER, h)
    assert update.abs().min() > 0  # a bypass that really moves every token
    assert torch.equal(bypass_step(bank, LAYER, h), h + update)
    where = torch.tensor([[True, False, False, True, False], [False] * 5])
    out = bypass_step(bank, LAYER, h, where)
    assert torch.equal(out[where], (h + update)[where]) and torch.equal(out[~where], h[~where])
    assert bypass_step(None, LAYER, h, where) is h
    assert bypass_step(BypassBank(BypassConfig("identity"), adapter.dims.hidden, adapter.num_layers), LAYER, h) is h


@torch.no_grad()
def test_skip_gets_the_bypass_and_still_writes_its_kv(tiny_model):
    """PROCESS tokens run the block; a SKIP token gets h + bypass(h); an EXITed one (not bypassed)
    keeps h; every token's K/V are those of its un-updated stream h."""
    adapter = adapter_for(tiny_model)
    bank = _bank(adapter)
    h, pos = stream(adapter, 2, 7)
    process = torch.tensor([[True, False, True, True, False, False, True], [False] * 6 + [True]])
    bypassed = torch.tensor([[False, True, False, False, False, True, False],
                             [True, True, False, True, False, True, False]])
    full_cache, cache = KVCache(adapter.num_layers), KVCache(adapter.num_layers)
    full = layer_step(adapter, LAYER, h, pos, full_cache, CAUSAL)
    out = layer_step(adapter, LAYER, h, pos, cache, CAUSAL, process, int(process.sum()), bypass=bank, bypassed=bypassed)
    with_bypass = h + bank.update(LAYER, h)
    keep = ~process & ~bypassed
    assert torch.equal(out[process], full[process])
    assert torch.equal(out[bypassed], with_bypass[bypassed]) and torch.equal(out[keep], h[keep])
    assert (torch.equal(cache.keys[LAYER], full_cache.keys[LAYER])
            and torch.equal(cache.values[LAYER], full_cache.values[LAYER]))
    # bypassed=None: every token that does not process gets the bypass
    everyone = layer_step(adapter, LAYER, h, pos, None, CAUSAL, process, int(process.sum()), bypass=bank)
    assert torch.equal(everyone[~process], with_bypass[~process]) and torch.equal(everyone[process], full[process])


@torch.no_grad()
def test_no_processing_token_gets_the_bypass_after_writing_kv_of_h(tiny_model):
    adapter = adapter_for(tiny_model)
    bank = _bank(adapter)
    h, pos = stream(adapter, 1, 6)
    cache = KVCache(adapter.num_layers)
    bypassed = torch.tensor([[True, True, False, True, False, True]])
    out = layer_step(adapter, LAYER, h, pos, cache, CAUSAL, None, n_process=0, bypass=bank, bypassed=bypassed)
    k, v = adapter.kv(LAYER, adapter.attn_norm(LAYER, h), pos)  # from h, not from h + bypass(h)
    assert torch.equal(cache.keys[LAYER], k) and torch.equal(cache.values[LAYER], v)
    assert (torch.equal(out[bypassed], (h + bank.update(LAYER, h))[bypassed])
            and torch.equal(out[~bypassed], h[~bypassed]))


@torch.no_grad()
def test_drop_writes_no_kv_but_bypassed_tokens_get_the_bypass(tiny_model):
    adapter = adapter_for(tiny_model)
    bank = _bank(adapter, "mlp")
    h, pos = stream(adapter, 1, 5)
    cache = KVCache(adapter.num_layers)
    bypassed = torch.tensor([[True, True, True, False, False]])  # the last two exited before this layer
    out = layer_step(adapter, LAYER, h, pos, cache, CAUSAL, drop=True, bypass=bank, bypassed=bypassed)
    assert cache.keys[LAYER] is None and cache.values[LAYER] is None and cache.dropped[LAYER] is True
    assert (torch.equal(out[bypassed], (h + bank.update(LAYER, h))[bypassed])
            and torch.equal(out[~bypassed], h[~bypassed]))
    assert torch.equal(layer_step(adapter, LAYER, h, pos, None, CAUSAL, drop=True, bypass=bank),
                       h + bank.update(LAYER, h))


@torch.no_grad()
def test_identity_bypass_leaves_the_stream_unchanged(tiny_model):
    adapter = adapter_for(tiny_model)
    identity = BypassBank(BypassConfig("identity"), adapter.dims.hidden, adapter.num_layers)
    h, pos = stream(adapter, 2, 7)
    process = torch.tensor([[True, False] * 3 + [True], [False] * 7])
    plain = layer_step(adapter, LAYER, h, pos, None, CAUSAL, process, int(process.sum()))
    assert torch.equal(layer_step(adapter, LAYER, h, pos, None, CAUSAL, process, int(process.sum()), bypass=identity),
                       plain)
    assert layer_step(adapter, LAYER, h, pos, None, CAUSAL, drop=True, bypass=identity) is h
    assert layer_step(adapter, LAYER, h, pos, KVCache(adapter.num_layers), CAUSAL, None, 0, bypass=identity) is h


def test_mix_with_the_ffn_bypass():
    g = torch.Generator().manual_seed(1)
    mid, update, skip = (torch.randn(2, 4, 6, generator=g) for _ in range(3))
    run = torch.tensor([[True, False, False, True], [False, True, False, False]])
    out = mix(mid, update, run, skip_update=skip)
    assert torch.equal(out[run], (mid + update)[run]) and torch.equal(out[~run], (mid + skip)[~run])
    assert torch.equal(mix(mid, update, run), torch.where(run.unsqueeze(-1), mid + update, mid))  # none: mid itself
    # straight-through gate: the hard choice forward, the gradient into both branches
    mid, update, skip = (t.clone().requires_grad_() for t in (mid, update, skip))
    logit = torch.randn(2, 4, generator=g).requires_grad_()
    weight = torch.randn(2, 4, 6, generator=g)
    p = torch.sigmoid(logit)
    gate = run.float() + p - p.detach()
    out = mix(mid, update, run, gate, skip)
    assert torch.allclose(out.detach(), torch.where(run.unsqueeze(-1), mid + update, mid + skip).detach(), atol=1e-6)
    (out * weight).sum().backward()
    hard = run.unsqueeze(-1).float()
    assert (torch.allclose(update.grad, weight * hard, atol=1e-6)
            and torch.allclose(skip.grad, weight * (1 - hard), atol=1e-6))
    assert torch.equal(mid.grad, weight)
    p = p.detach()
    assert torch.allclose(logit.grad, p * (1 - p) * (weight * (update - skip).detach()).sum(-1), atol=1e-6)


@torch.no_grad()
def test_mlp_rows_give_the_unrouted_rows_the_ffn_bypass(tiny_model):
    adapter = adapter_for(tiny_model)
    bank = _bank(adapter, "linear", target="ffn")
    h, pos = stream(adapter, 1, 9)
    mid = attention_residual(adapter, LAYER, h, pos, None, CAUSAL)
    run = torch.tensor([[True, False, False, True, True, False, True, False, False]])
    out = mlp_rows(adapter, LAYER, mid, run, bank)
    dense = mix(mid, mlp_update(adapter, LAYER, mid), run, skip_update=bank.update(LAYER, mid))
    assert torch.allclose(out, dense, atol=ATOL)
    assert not torch.allclose(out[0, ~run[0]], mid[0, ~run[0]], atol=1e-3)  # the bypass moved them
    identity = BypassBank(BypassConfig("identity", target="ffn"), adapter.dims.hidden, adapter.num_layers)
    assert torch.equal(mlp_rows(adapter, LAYER, mid, run, identity), mlp_rows(adapter, LAYER, mid, run))
    assert torch.equal(mlp_rows(adapter, LAYER, mid, run)[0, ~run[0]], mid[0, ~run[0]])
    # everyone routed
    assert torch.equal(mlp_rows(adapter, LAYER, mid, None, bank), mid + mlp_update(adapter, LAYER, mid))
