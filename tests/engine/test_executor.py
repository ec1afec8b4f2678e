"""Adaptive execution: parallel == sequential under random PROCESS/SKIP/EXIT, SKIP keeps the cache
aligned with the right values, EXIT is absorbing, min_layers is honoured, DROP removes a layer for the
whole sequence at zero cost and its misuse is refused; the same for any batch, padding, pattern and
budget (property-based); with a layer bypass SKIP / DROP tokens get it, every mode still agrees, and
the executor's running cost is the trace's cost."""

from __future__ import annotations

import contextlib

import pytest
import torch
from _anee_tiny import random_bypass
from conftest import FAMILIES, VOCAB, tiny_llama, wrap
from hypothesis import given
from hypothesis import strategies as st
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from anee import AdaptiveExecutor, ANEEConfig, ANEEWrapper, BudgetController, CostModel, FixedController, adapter_for
from anee.core.actions import ASK, DROP, EXIT, PROCESS, SKIP
from anee.core.adapters.base import Dims
from anee.core.bypass import BypassBank, BypassConfig
from anee.core.cost import trace_cost
from anee.core.kv_cache import KVCache
from anee.engine.executor import _absorb_exits

TOL = 1e-4


def random_decisions(B, T, L, seed):
    """Random actions; after the first EXIT a row stays EXIT (the executor's convention)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.multinomial(torch.tensor([0.55, 0.3, 0.15]), B * T * L, replacement=True, generator=g).view(B, T, L)
    exited = (d == EXIT).cumsum(-1) > 0
    return torch.where(exited, EXIT, d).to(torch.int8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parallel_equals_sequential(tiny_model, seed):
    ex = AdaptiveExecutor(adapter_for(tiny_model))
    B, T, L = 2, 24, ex.adapter.num_layers
    ids = torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))
    decisions = random_decisions(B, T, L, seed)
    parallel = ex.forward(ids, decisions=decisions)
    cache, logits = KVCache(L), []
    for t in range(T):
        step = ex.forward(ids[:, t : t + 1], cache=cache, decisions=decisions[:, t : t + 1])
        logits.append(step.logits)
    assert (torch.cat(logits, 1) - parallel.logits).abs().max() <= TOL
    for layer in range(L):
        assert (cache.keys[layer] - parallel.cache.keys[layer]).abs().max() <= TOL
    assert torch.equal(parallel.trace.decisions, decisions)
    # the decisions really changed the computation
    assert (parallel.logits - ex.forward(ids).logits).abs().max() > 1e-3


def test_controller_decisions_equal_in_both_modes(tiny_model):
    ex = AdaptiveExecutor(adapter_for(tiny_model), min_layers=1)
    ids = torch.randint(0, VOCAB, (1, 20), generator=torch.Generator().manual_seed(7))
    parallel = ex.forward(ids, controller=BudgetController(), budget=0.6)
    cache, decisions = KVCache(ex.adapter.num_layers), []
    for t in range(ids.shape[1]):
        decisions.append(ex.forward(ids[:, t : t + 1], cache=cache, controller=BudgetController(),
                                    budget=0.6).trace.decisions)
    assert torch.equal(torch.cat(decisions, 1), parallel.trace.decisions)


def test_skipped_layer_writes_its_own_kv_to_the_cache():
    model = tiny_llama()
    ex = AdaptiveExecutor(adapter_for(model))
    ids = torch.randint(0, VOCAB, (1, 10), generator=torch.Generator().manual_seed(3))
    L = ex.adapter.num_layers
    decisions = torch.zeros(1, 10, L, dtype=torch.int8)
    decisions[0, 6, 2] = SKIP  # token 6 skips layer 2
    decisions[0, 8, 1:] = EXIT  # token 8 exits after layer 0
    out = ex.forward(ids, decisions=decisions, collect_hidden=True)
    for token, layer in [(6, 2), (8, 1), (8, 3)]:
        h = out.hidden_states[layer][:, token : token + 1]  # the token's input to that layer
        block = model.model.layers[layer]
        x = block.input_layernorm(h)
        k = (x @ block.self_attn.k_proj.weight.T).view(1, 1, -1, 8).transpose(1, 2)
        v = (x @ block.self_attn.v_proj.weight.T).view(1, 1, -1, 8).transpose(1, 2)
        cos, sin = model.model.rotary_emb(x, torch.tensor([[token]]))
        _, k = apply_rotary_pos_emb(k, k, cos, sin)
        assert (out.cache.keys[layer][:, :, token : token + 1] - k).abs().max() <= 1e-5
        assert (out.cache.values[layer][:, :, token : token + 1] - v).abs().max() <= 1e-5
    # SKIP leaves the residual stream unchanged; EXIT freezes it for every later layer
    assert torch.equal(out.hidden_states[3][0, 6], out.hidden_states[2][0, 6])
    assert torch.equal(out.hidden_states[L][0, 8], out.hidden_states[1][0, 8])


def test_exit_is_absorbing_and_min_layers_is_enforced(tiny_model):
    ex = AdaptiveExecutor(adapter_for(tiny_model), min_layers=2)
    L = ex.adapter.num_layers
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(5))
    pattern = [EXIT, SKIP, SKIP, PROCESS][:L] + [PROCESS] * (L - 4)
    trace = ex.forward(ids, controller=FixedController(pattern)).trace
    assert (trace.decisions[..., :2] == PROCESS).all()  # min_layers overrides the controller
    assert (trace.decisions[..., 2] == SKIP).all() and (trace.decisions[..., 3] == PROCESS).all()
    early = AdaptiveExecutor(adapter_for(tiny_model), min_layers=1)
    trace = early.forward(ids, controller=FixedController([PROCESS, EXIT] + [PROCESS] * (L - 2))).trace
    assert (trace.decisions[..., 1:] == EXIT).all()
    assert (trace.layers_executed == 1).all()


def _pattern(L, dropped, T, B=1):
    row = torch.tensor([DROP if i in dropped else PROCESS for i in range(L)], dtype=torch.int8)
    return row.expand(B, T, L).clone()


def test_drop_equals_skip_for_every_token_and_costs_nothing(tiny_model):
    """A layer no token processes: DROP and SKIP give identical logits; DROP pays no K/V."""
    ex = AdaptiveExecutor(adapter_for(tiny_model))
    L = ex.adapter.num_layers
    ids = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(0))
    drop = _pattern(L, {1, L - 2}, 20, 2)
    skip = torch.where(drop == DROP, SKIP, drop).to(torch.int8)
    a, b = ex.forward(ids, decisions=drop), ex.forward(ids, decisions=skip)
    assert torch.equal(a.logits, b.logits)
    assert a.cache.keys[1] is None and a.cache.dropped[1] is True and a.cache.length == 20
    ca, cb = a.trace.cost(ex.cost), b.trace.cost(ex.cost)
    assert torch.allclose(cb.layer_macs - ca.layer_macs, torch.full_like(ca.layer_macs, 2.0 * ex.cost.kv_only))
    per_layer = ex.cost.layer(a.trace.context)
    assert torch.allclose(ca.layer_macs, (L - 2) * per_layer)


def test_drop_decode_matches_parallel_and_misuse_is_refused(tiny_model):
    ex = AdaptiveExecutor(adapter_for(tiny_model))
    L = ex.adapter.num_layers
    ids = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(1))
    par = ex.forward(ids, decisions=_pattern(L, {2}, 12))
    cache, logits = KVCache(L), []
    for t in range(12):
        logits.append(ex.forward(ids[:, t : t + 1], cache=cache, decisions=_pattern(L, {2}, 1)).logits)
    assert torch.allclose(par.logits, torch.cat(logits, 1), atol=1e-5)
    with pytest.raises(ValueError, match="layer 2 was dropped for earlier tokens.*a dropped layer stays dropped"):
        ex.forward(ids[:, :1], cache=cache, decisions=_pattern(L, set(), 1))  # layer 2 was dropped before
    partial = _pattern(L, {2}, 12)
    partial[0, 3, 2] = SKIP
    with pytest.raises(ValueError, match="DROP for some tokens only"):
        ex.forward(ids, decisions=partial)


@pytest.mark.parametrize("with_bypass", [False, True])
def test_a_layer_kept_for_the_prompt_can_be_dropped_from_then_on(tiny_model, with_bypass):
    """A prompt at full depth, then layer 2 DROPPED (generation's prefill="full" under a plan): one token
    at a time equals one chunk, and both equal one parallel pass that SKIPs layer 2 for those tokens
    (they are the last ones, so no token reads their K/V there). The layer keeps the prompt's K/V."""
    adapter = adapter_for(tiny_model)
    L = adapter.num_layers
    ex = AdaptiveExecutor(adapter,
                          bypass=random_bypass("linear", adapter.dims.hidden, L, seed=3) if with_bypass else None)
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(5))
    chunk = ex.forward(ids[:, 6:], cache=ex.forward(ids[:, :6]).cache, decisions=_pattern(L, {2}, 6, B=2))
    cache, logits = ex.forward(ids[:, :6]).cache, []
    for t in range(6, 12):
        logits.append(ex.forward(ids[:, t : t + 1], cache=cache, decisions=_pattern(L, {2}, 1, B=2)).logits)
    skip = _pattern(L, set(), 12, B=2)
    skip[:, 6:, 2] = SKIP
    parallel = ex.forward(ids, decisions=skip).logits[:, 6:]
    assert (chunk.logits - parallel).abs().max() <= 1e-5 and (torch.cat(logits, 1) - parallel).abs().max() <= 1e-5
    assert (parallel - ex.forward(ids).logits[:, 6:]).abs().max() > 1e-3  # dropping layer 2 mattered
    assert cache.keys[2].shape[2] == 6 and cache.keys[3].shape[2] == 12 and cache.dropped[2] is True
    with pytest.raises(ValueError, match="layer 2 was dropped for earlier tokens"):
        ex.forward(ids[:, :1], cache=cache, decisions=_pattern(L, set(), 1, B=2))


def test_exit_does_not_override_drop():
    d = torch.tensor([[[PROCESS, EXIT, DROP, SKIP]]], dtype=torch.int8)
    assert _absorb_exits(d).tolist() == [[[PROCESS, EXIT, DROP, EXIT]]]
    cm = CostModel(Dims(hidden=8, num_heads=2, num_kv_heads=1, head_dim=4, intermediate=16, vocab=10, num_layers=4,
                        mlp_matrices=3, max_positions=32))
    rep = trace_cost(cm, _absorb_exits(d), torch.tensor([[5.0]]))
    assert rep.layer_macs.item() == cm.layer(5.0) + 2 * cm.kv_only  # EXIT pays K/V, DROP nothing


def test_min_layers_larger_than_depth():
    with pytest.raises(ValueError, match="min_layers"):
        AdaptiveExecutor(adapter_for(tiny_llama(n_layer=4)), min_layers=5)
    with pytest.raises(ValueError, match="min_layers"):
        wrap(tiny_llama(n_layer=4), min_layers=9)


_MODELS = {}


@given(family=st.sampled_from(sorted(FAMILIES)), rows=st.integers(1, 3), length=st.integers(1, 14), pads=st.data(),
       seed=st.integers(0, 2**16), min_layers=st.integers(0, 4))
def test_parallel_equals_sequential_for_any_batch_and_pattern(family, rows, length, pads, seed, min_layers):
    """Property: any decision pattern on any left-padded batch gives, token by token, the logits, the
    cache and the trace of the one-chunk pass."""
    model = _MODELS.setdefault(family, FAMILIES[family]())
    ex = AdaptiveExecutor(adapter_for(model), min_layers=min_layers)
    L = ex.adapter.num_layers
    ids = torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))
    pad = [pads.draw(st.integers(0, length - 1), f"pad{r}") for r in range(rows)]
    mask = torch.tensor([[i >= p for i in range(length)] for p in pad])
    decisions = random_decisions(rows, length, L, seed)
    decisions[..., :min_layers] = PROCESS
    parallel = ex.forward(ids, decisions=decisions, padding_mask=mask)
    cache, logits = KVCache(L), []
    for t in range(length):
        logits.append(ex.forward(ids[:, t : t + 1], cache=cache, decisions=decisions[:, t : t + 1],
                                 padding_mask=mask[:, t : t + 1]).logits)
    assert (torch.cat(logits, 1) - parallel.logits)[mask].abs().max() <= TOL
    assert torch.equal(parallel.trace.decisions, decisions)


@given(budget=st.floats(0.0, 1.0), rows=st.integers(1, 3), length=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_budget_controller_decisions_equal_in_both_modes_for_any_budget(budget, rows, length, seed):
    """Property: at any budget, the budget controller decides the same in one chunk and token by token."""
    model = _MODELS.setdefault("llama", FAMILIES["llama"]())
    ex = AdaptiveExecutor(adapter_for(model), min_layers=1)
    ids = torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))
    parallel = ex.forward(ids, controller=BudgetController(0.1), budget=budget)
    cache = KVCache(ex.adapter.num_layers)
    steps = [ex.forward(ids[:, t : t + 1], cache=cache, controller=BudgetController(0.1), budget=budget)
             for t in range(length)]
    assert torch.equal(torch.cat([s.trace.decisions for s in steps], 1), parallel.trace.decisions)
    assert (torch.cat([s.logits for s in steps], 1) - parallel.logits).abs().max() <= TOL

# -- the layer bypass -------------------------------------------------------------------------------
def bypass_executor(model, family: str = "linear", seed: int = 3) -> AdaptiveExecutor:
    adapter = adapter_for(model)
    rank = 4 if family in ("diag_lowrank", "mlp") else 0
    return AdaptiveExecutor(adapter,
                            bypass=random_bypass(family, adapter.dims.hidden, adapter.num_layers, rank=rank, seed=seed))


def decisions_with_a_drop(B, T, L, seed, dropped=1):
    d = random_decisions(B, T, L, seed)
    d[..., dropped] = DROP  # a removed layer: DROP for every token, also after an EXIT
    return d


@pytest.mark.parametrize("seed", [0, 1])
def test_parallel_equals_sequential_with_a_bypass(tiny_model, seed):
    ex = bypass_executor(tiny_model, "diag_lowrank" if seed else "linear", seed)
    B, T, L = 2, 16, ex.adapter.num_layers
    ids = torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))
    decisions = decisions_with_a_drop(B, T, L, seed)
    parallel = ex.forward(ids, decisions=decisions)
    cache, logits = KVCache(L), []
    for t in range(T):
        logits.append(ex.forward(ids[:, t : t + 1], cache=cache, decisions=decisions[:, t : t + 1]).logits)
    assert (torch.cat(logits, 1) - parallel.logits).abs().max() <= TOL
    for layer in range(L):
        if layer == 1:
            assert cache.keys[layer] is None and parallel.cache.keys[layer] is None
        else:
            assert (cache.keys[layer] - parallel.cache.keys[layer]).abs().max() <= TOL
            assert (cache.values[layer] - parallel.cache.values[layer]).abs().max() <= TOL
    # the bypass really changed the computation
    plain = AdaptiveExecutor(ex.adapter).forward(ids, decisions=decisions)
    assert (parallel.logits - plain.logits).abs().max() > 1e-3


@torch.no_grad()
def test_resume_from_a_shared_prefix_is_bit_identical_and_misuse_is_refused(tiny_model):
    ex = bypass_executor(tiny_model, "diag_lowrank", 2)
    B, T, L = 2, 12, ex.adapter.num_layers
    ids = torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(5))
    first = decisions_with_a_drop(B, T, L, 0)
    second = first.clone()
    second[..., 2:] = decisions_with_a_drop(B, T, L, 1)[..., 2:]  # the same decisions before layer 2
    earlier = ex.forward(ids, decisions=first, collect_hidden=True)
    direct = ex.forward(ids, decisions=second, collect_hidden=True)
    assert not torch.equal(earlier.logits, direct.logits)
    for layer in (0, 1, 2):
        resumed = ex.forward(ids, decisions=second, collect_hidden=True, resume=(layer, earlier.hidden_states[layer]))
        assert torch.equal(resumed.logits, direct.logits)
        assert all(torch.equal(a, b) for a, b in zip(resumed.hidden_states, direct.hidden_states[layer:], strict=True))
    at_end = ex.forward(ids, decisions=first, resume=(L, earlier.hidden_states[L]))
    assert torch.equal(at_end.logits, earlier.logits)
    with pytest.raises(ValueError, match="pass decisions"):
        ex.forward(ids, resume=(1, earlier.hidden_states[1]))
    with pytest.raises(ValueError, match="hidden state of shape"):
        ex.forward(ids, decisions=second, resume=(L + 1, earlier.hidden_states[1]))
    with pytest.raises(ValueError, match="hidden state of shape"):
        ex.forward(ids[:1], decisions=second[:1], resume=(1, earlier.hidden_states[1]))
    filled = KVCache(L)
    ex.forward(ids[:, :4], cache=filled)
    with pytest.raises(ValueError, match="no cache"):  # a resumed pass writes no K/V for its first layers
        ex.forward(ids[:, 4:], cache=filled, decisions=second[:, 4:], resume=(1, earlier.hidden_states[1][:, 4:]))
    ex.forward(ids, cache=KVCache(L), decisions=second, resume=(1, earlier.hidden_states[1]))  # an empty cache is fine


def test_without_logits_the_pass_is_the_same_but_for_the_lm_head(tiny_model):
    """with_logits=False (calibration, budget adherence, hidden-state statistics) leaves out only the
    LM head: the trace, the cache, the hidden states and the final stream are the ones of the full pass."""
    ex = bypass_executor(tiny_model, "diag_lowrank", 2)
    B, T, L = 2, 10, ex.adapter.num_layers
    ids = torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(8))
    for kwargs in ({"decisions": decisions_with_a_drop(B, T, L, 3)}, {"controller": BudgetController(), "budget": 0.5}):
        with_head = ex.forward(ids, collect_hidden=True, **kwargs)
        without = ex.forward(ids, collect_hidden=True, with_logits=False, **kwargs)
        assert without.logits is None and with_head.logits.shape == (B, T, VOCAB)
        assert torch.equal(without.trace.decisions, with_head.trace.decisions)
        assert torch.equal(without.trace.overhead_macs, with_head.trace.overhead_macs)
        assert torch.equal(without.hidden, with_head.hidden)
        assert all(torch.equal(a, b) for a, b in zip(without.hidden_states, with_head.hidden_states, strict=True))
        assert all(torch.equal(a, b) for a, b in zip(without.cache.keys, with_head.cache.keys, strict=True)
                   if a is not None)
    with pytest.raises(TypeError, match="with_logits"):
        ex.forward(ids, with_logits="no")


@torch.no_grad()
def test_skip_writes_the_kv_of_the_un_updated_stream_and_then_gets_the_bypass(tiny_model):
    ex = bypass_executor(tiny_model)
    adapter, L = ex.adapter, ex.adapter.num_layers
    B, T = 2, 12
    ids = torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(4))
    decisions = decisions_with_a_drop(B, T, L, 4)
    out = ex.forward(ids, decisions=decisions, collect_hidden=True)
    hs = out.hidden_states
    pos = adapter.position_state(hs[0], torch.arange(T).expand(B, T))
    record = _absorb_exits(decisions)
    seen = {"skip": 0, "exit": 0, "drop_after_exit": 0}
    for layer in range(L):
        h = hs[layer]
        act = record[..., layer]
        if layer == 1:
            assert out.cache.keys[layer] is None  # DROP: no K/V at all
        else:  # every token's K/V (PROCESS, SKIP, EXIT) are the K/V-only path of its input stream
            k, v = adapter.kv(layer, adapter.attn_norm(layer, h), pos)
            assert (out.cache.keys[layer] - k).abs().max() <= 1e-5 and (out.cache.values[layer] - v).abs().max() <= 1e-5
        exited = (record[..., : layer + 1] == EXIT).any(-1)
        skip = (act == SKIP) | ((act == DROP) & ~exited)
        frozen = (act == EXIT) | ((act == DROP) & exited)
        stepped = h + ex.bypass.update(layer, h)
        assert torch.equal(hs[layer + 1][skip], stepped[skip])
        assert torch.equal(hs[layer + 1][frozen], h[frozen])  # an exited token stays frozen, through a DROP too
        seen["skip"] += int(skip.sum())
        seen["exit"] += int((act == EXIT).sum())
        seen["drop_after_exit"] += int(((act == DROP) & exited).sum())
    assert min(seen.values()) > 0


def test_identity_bypass_is_bit_identical_to_no_bypass(tiny_model):
    adapter = adapter_for(tiny_model)
    L = adapter.num_layers
    ex = AdaptiveExecutor(adapter, bypass=BypassBank(BypassConfig("identity"), adapter.dims.hidden, L))
    assert ex.bypass is None and ex.cost.bypass == 0 and ex.cost == AdaptiveExecutor(adapter).cost
    ids = torch.randint(0, VOCAB, (2, 14), generator=torch.Generator().manual_seed(5))
    decisions = decisions_with_a_drop(2, 14, L, 5)
    assert torch.equal(ex.forward(ids, decisions=decisions).logits,
                       AdaptiveExecutor(adapter).forward(ids, decisions=decisions).logits)
    a = ex.forward(ids, controller=BudgetController(), budget=0.5)
    b = AdaptiveExecutor(adapter).forward(ids, controller=BudgetController(), budget=0.5)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.trace.decisions, b.trace.decisions)


class Recording:
    """Random PROCESS / SKIP / EXIT at the asked layers (a fixed plan elsewhere); records the executor's
    running `spent` before every asked layer."""

    overhead_macs = 0

    def __init__(self, plan=None, seed=0):
        self.fixed, self.g, self.spent = plan, torch.Generator().manual_seed(seed), {}

    def plan(self, budget, num_layers):
        return torch.tensor(self.fixed) if self.fixed is not None else torch.full((num_layers,), ASK)

    def decide(self, view):
        self.spent[view.layer] = view.spent.clone()
        p = torch.tensor([0.5, 0.35, 0.15])
        return torch.multinomial(p, view.spent.numel(), replacement=True, generator=self.g).view(view.spent.shape)


@pytest.mark.parametrize("plan", [None, [PROCESS, DROP, ASK, SKIP, ASK, ASK]])
def test_running_spent_equals_the_trace_cost(plan):
    ex = bypass_executor(tiny_llama(n_layer=6), "mlp")
    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(6))
    c = Recording(plan, seed=1)
    out = ex.forward(ids, controller=c)
    d = out.trace.decisions
    asked = list(range(6)) if plan is None else [i for i, a in enumerate(plan) if a == ASK]
    assert sorted(c.spent) == asked and (d == SKIP).any() and (d == EXIT).any()
    for layer in asked:  # what the executor had charged before the layer == the trace cost of the layers before it
        expect = trace_cost(ex.cost, d[..., :layer], out.trace.context).layer_macs
        assert torch.allclose(c.spent[layer], expect, rtol=1e-12, atol=0)
    if plan is not None:
        assert (d[..., 1] == DROP).all() and ex.cost.drop_path > 0


def test_a_bypass_for_another_model_or_the_ffn_is_refused():
    adapter = adapter_for(tiny_llama(n_layer=4))
    D = adapter.dims.hidden
    with pytest.raises(ValueError, match=f"the bypass is for 4 layers of width 32, the model has 4 of width {D}"):
        AdaptiveExecutor(adapter, bypass=BypassBank(BypassConfig("linear"), 32, 4))
    with pytest.raises(ValueError, match=f"the bypass is for 6 layers of width {D}, the model has 4 of width {D}"):
        AdaptiveExecutor(adapter, bypass=BypassBank(BypassConfig("linear"), D, 6))
    with pytest.raises(ValueError, match="the executor needs a layer bypass, got target='ffn'"):
        AdaptiveExecutor(adapter, bypass=BypassBank(BypassConfig("linear", target="ffn"), D, 4))


class HalvedMLP:
    """Fake `Weights`: every down projection at half its weight while applied (re-entrant), counting entries."""

    def __init__(self, adapter):
        self.adapter, self.bits, self.entered, self.depth = adapter, (16,) * adapter.num_layers, 0, 0

    @contextlib.contextmanager
    def applied(self):
        self.entered += 1
        self.depth += 1
        params = [self.adapter.layer(i).mlp.down_proj.weight for i in range(self.adapter.num_layers)]
        own = [p.data for p in params]
        if self.depth == 1:
            for p in params:
                p.data = p.data * 0.5
        try:
            yield
        finally:
            self.depth -= 1
            if self.depth == 0:
                for p, w in zip(params, own):
                    p.data = w


def test_weights_run_for_each_forward_and_the_model_is_restored():
    model = tiny_llama()
    adapter = adapter_for(model)
    weights = HalvedMLP(adapter)
    ex, plain = AdaptiveExecutor(adapter, weights=weights), AdaptiveExecutor(adapter)
    ids = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = ex.forward(ids, controller=BudgetController(), budget=0.7)  # depth adaptivity on these weights
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with weights.applied():
        ref = plain.forward(ids, controller=BudgetController(), budget=0.7)
    assert torch.equal(out.logits, ref.logits) and torch.equal(out.trace.decisions, ref.trace.decisions)
    assert not torch.allclose(out.logits, plain.forward(ids, controller=BudgetController(), budget=0.7).logits)
    # a generation enters the weights once, its per-token forwards re-enter without swapping
    entered = weights.entered
    wrapper = ANEEWrapper(ANEEConfig(model_name="tiny", min_layers=0), model=model, weights=weights)
    result = wrapper.generate_ids(ids[:, :4], max_new_tokens=5)
    assert result.new_tokens.shape == (1, 5) and weights.entered - entered == 1 + 5  # 1 outer + prompt + 4 steps
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with pytest.raises(ValueError, match="another model"):
        AdaptiveExecutor(adapter_for(tiny_llama()), weights=weights)


def test_real_int8_weights_combine_with_depth_adaptivity():
    """The executor's INT8 option (a kernel bank at 8 bits): decode token by token equals the chunk,
    under a controller that skips layers."""
    from anee.granularity.quantize import WeightBank

    adapter = adapter_for(tiny_llama())
    bank = WeightBank(adapter, bits=(8,), kernels=True)
    ex = AdaptiveExecutor(adapter, weights=bank.at(8))
    ids = torch.randint(0, VOCAB, (1, 16), generator=torch.Generator().manual_seed(1))
    chunk = ex.forward(ids, controller=BudgetController(), budget=0.6)
    cache, steps = KVCache(adapter.num_layers), []
    for t in range(16):
        steps.append(ex.forward(ids[:, t : t + 1], cache=cache, controller=BudgetController(), budget=0.6))
    assert torch.equal(torch.cat([s.trace.decisions for s in steps], 1), chunk.trace.decisions)
    assert (torch.cat([s.logits for s in steps], 1) - chunk.logits).abs().max() <= TOL
    assert (chunk.trace.decisions != PROCESS).any() and bank.restored
    full = AdaptiveExecutor(adapter).forward(ids, controller=BudgetController(), budget=0.6)
    assert 0 < (chunk.logits - full.logits).abs().max() < 0.05


class _Anchored:
    """Records the anchor state each call sees: PROCESS on the first three layers, asked after."""

    overhead_macs = 0
    anchor_layer = 1

    def __init__(self):
        self.seen = []

    def plan(self, budget, num_layers):
        plan = torch.full((num_layers,), ASK)
        plan[:3] = PROCESS
        return plan

    def decide(self, view):
        self.seen.append((view.layer, view.anchor.clone()))
        return torch.full(view.spent.shape, PROCESS)


def test_a_controller_with_an_anchor_layer_sees_that_layers_input_at_every_later_call(tiny_model):
    from anee.engine.prefix_memo import shared_prefixes

    ex = AdaptiveExecutor(adapter_for(tiny_model))
    x = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))
    L = ex.adapter.num_layers
    reference = ex.forward(x, collect_hidden=True).hidden_states[1]
    for memo in (False, True):  # with a prefix memo the second pass restores layers 0-2, the anchor among them
        c = _Anchored()
        with shared_prefixes(ex) if memo else contextlib.nullcontext():
            runs = 2 if memo else 1
            for _ in range(runs):
                c.seen.clear()
                ex.forward(x, controller=c)
                assert [layer for layer, _ in c.seen] == list(range(3, L))
                assert all(torch.equal(anchor, reference) for _, anchor in c.seen)


def test_a_controller_without_an_anchor_layer_gets_none():
    seen = []

    class Plain:
        overhead_macs = 0

        def decide(self, view):
            seen.append(view.anchor)
            return torch.full(view.spent.shape, PROCESS)

    AdaptiveExecutor(adapter_for(tiny_llama(3))).forward(torch.tensor([[1, 2, 3]]), controller=Plain())
    assert seen == [None, None, None]
