"""Adaptive execution: parallel == sequential under random PROCESS/SKIP/EXIT, SKIP keeps the cache
aligned with the right values, budgets and min_layers are honoured."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, tiny_llama, wrap
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from anee import EXIT, PROCESS, SKIP, AdaptiveExecutor, BudgetController, FixedController, adapter_for, skip_pattern
from anee.cache import KVCache

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
        decisions.append(ex.forward(ids[:, t : t + 1], cache=cache, controller=BudgetController(), budget=0.6).trace.decisions)
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


def test_gpt2_skip_kv_is_the_kv_slice_of_c_attn():
    from conftest import tiny_gpt2

    model = tiny_gpt2()
    ex = AdaptiveExecutor(adapter_for(model))
    ids = torch.randint(0, VOCAB, (1, 7), generator=torch.Generator().manual_seed(4))
    decisions = torch.full((1, 7, 4), SKIP, dtype=torch.int8)
    out = ex.forward(ids, decisions=decisions, collect_hidden=True)
    block = model.transformer.h[1]
    q, k, v = block.attn.c_attn(block.ln_1(out.hidden_states[1])).split(48, dim=2)
    assert (out.cache.keys[1] - k.view(1, 7, 4, 12).transpose(1, 2)).abs().max() <= 1e-5
    assert (out.cache.values[1] - v.view(1, 7, 4, 12).transpose(1, 2)).abs().max() <= 1e-5


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


@pytest.mark.parametrize("budget", [0.0, 0.3, 0.5, 0.77, 1.0])
def test_budget_policy_never_exceeds_its_budget(budget):
    model = tiny_llama(n_layer=8)
    wrapper = wrap(model, min_layers=0)
    ids = torch.randint(0, VOCAB, (2, 30), generator=torch.Generator().manual_seed(6))
    report = wrapper(ids, energy_budget=budget).trace.cost(wrapper.cost_model)
    per_token = report.layer_macs / report.full_layer_macs
    assert (per_token <= budget + 1e-9).all() or budget < 8 * wrapper.cost_model.kv_only / report.full_layer_macs.min()
    # and it uses the budget: one more layer would not have fit
    one_layer = (wrapper.cost_model.layer(30) - wrapper.cost_model.kv_only) / report.full_layer_macs.min()
    assert (per_token >= budget - one_layer - 1e-9).all()


def test_per_row_budgets_give_per_row_decisions():
    wrapper = wrap(tiny_llama(n_layer=6))
    ids = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(8))
    trace = wrapper.executor.forward(ids, controller=BudgetController(), budget=torch.tensor([1.0, 0.4])).trace
    assert (trace.layers_executed[0] == 6).all()
    assert (trace.layers_executed[1] < 6).all()


def test_skip_pattern_spreads_skips_over_the_middle():
    p = skip_pattern(30, 9)
    assert p.count(SKIP) == 9 and p[:2] == [PROCESS, PROCESS] and p[-1] == PROCESS
    with pytest.raises(ValueError):
        skip_pattern(6, 5)
