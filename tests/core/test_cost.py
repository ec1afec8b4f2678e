"""MAC counts against hand formulas (GPT-2 small, SmolLM2-135M, a toy model with a bypass) and against
torch's FLOP counter."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from anee import DROP, EXIT, PROCESS, SKIP, CostModel, adapter_for
from anee.core.adapters.base import Dims
from anee.core.cost import bypassed, static_cost, trace_cost


def gpt2_small_config():
    return GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)


def smollm2_config():
    return LlamaConfig(num_hidden_layers=30, hidden_size=576, num_attention_heads=9, num_key_value_heads=3,
                       intermediate_size=1536, vocab_size=49152, max_position_embeddings=8192, head_dim=64)


def dims_of(config):
    with torch.device("meta"):
        model = (GPT2LMHeadModel if config.model_type == "gpt2" else LlamaForCausalLM)(config)
    return adapter_for(model).dims


@pytest.mark.parametrize("n", [1, 17, 512])
def test_gpt2_small_hand_formula(n):
    cost = CostModel(dims_of(gpt2_small_config()))
    d = 768
    layer = 3 * d * d + d * d + 2 * d * 4 * d + 2 * d * n  # qkv, out proj, MLP, scores + values
    assert abs(cost.layer(n) - layer) <= 0.01 * layer
    assert cost.kv_only == 2 * d * d
    assert cost.lm_head == d * 50257
    assert cost.full_token(n) == 12 * layer + d * 50257


@pytest.mark.parametrize("n", [1, 100, 2048])
def test_smollm2_hand_formula(n):
    cost = CostModel(dims_of(smollm2_config()))
    d, kv, ff = 576, 3 * 64, 1536
    layer = d * d + 2 * d * kv + d * d + 3 * d * ff + 2 * 9 * 64 * n
    assert abs(cost.layer(n) - layer) <= 0.01 * layer
    assert cost.kv_only == 2 * d * kv == 221_184
    assert cost.layer_static == 3_538_944  # the "about 3.5 M per layer" of the issue
    assert cost.lm_head == 576 * 49152  # about 28 M


def _count_macs(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_counts_match_torch_flop_counter(family):
    """Run one PROCESSED layer and one K/V-only path on a small model; torch counts the matmuls."""
    from conftest import tiny_gpt2, tiny_llama

    model = tiny_gpt2() if family == "gpt2" else tiny_llama()
    adapter = adapter_for(model)
    cost = CostModel(adapter.dims)
    T = 12
    h = torch.randn(1, T, adapter.dims.hidden)
    pos_ids = torch.arange(T)[None]
    pos = adapter.position_state(h, pos_ids)
    mask = torch.ones(T, T, dtype=torch.bool).tril()

    def layer():
        x = adapter.attn_norm(0, h)
        q, k, v = adapter.qkv(0, x, pos)
        # explicit matmuls (the counter does not see inside every SDPA kernel)
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        scores = (q @ k.transpose(-1, -2) * adapter.attn_scale).masked_fill(~mask, float("-inf"))
        a = scores.softmax(-1) @ v
        mid = h + adapter.attn_out(0, a.transpose(1, 2).reshape(1, T, -1))
        return mid + adapter.mlp(0, mid)

    # dense T x T scores (masking does not save multiplies here): context T for every token
    assert _count_macs(layer) == T * cost.layer(T)
    assert _count_macs(lambda: adapter.kv(0, adapter.attn_norm(0, h), pos)) == T * cost.kv_only
    assert _count_macs(lambda: adapter.logits(h)) == T * cost.lm_head


def test_trace_cost_and_net_savings():
    cost = CostModel(dims_of(smollm2_config()))
    decisions = torch.full((1, 2, 30), PROCESS, dtype=torch.int8)
    decisions[0, 1, 10:20] = SKIP
    decisions[0, 1, 25:] = EXIT
    context = torch.tensor([[5, 6]])
    overhead = torch.tensor([[0.0, 1000.0]])
    report = trace_cost(cost, decisions, context, overhead)
    t1 = 15 * cost.layer(6) + 15 * cost.kv_only
    assert report.layer_macs[0, 1] == t1
    assert report.layer_macs[0, 0] == 30 * cost.layer(5)
    full = 30 * cost.layer(5) + 30 * cost.layer(6)
    assert report.layer_fraction == pytest.approx((30 * cost.layer(5) + t1) / full)
    assert report.layer_saved == pytest.approx(1 - (30 * cost.layer(5) + t1 + 1000) / full)
    head = 2 * cost.lm_head
    assert report.total_saved == pytest.approx(1 - (30 * cost.layer(5) + t1 + 1000 + head) / (full + head))


# a toy decoder: q, K+V and o projections 64 MACs each, MLP 3 * 8 * 16 = 384, attention 16 per key
TOY = Dims(hidden=8, num_heads=2, num_kv_heads=1, head_dim=4, intermediate=16, vocab=10, num_layers=4, mlp_matrices=3,
           max_positions=32)
BYPASS = 40  # MACs of the toy's bypass (e.g. diag_lowrank of rank 2: 8 + 2 * 2 * 8)


def test_paths_and_fractions_with_a_bypass():
    cost = CostModel(TOY, bypass=BYPASS)
    assert (cost.q_proj, cost.kv_proj, cost.o_proj, cost.mlp, cost.layer_static) == (64, 64, 64, 384, 576)
    assert cost.layer(5) == 576 + 16 * 5 and cost.lm_head == 80
    assert (cost.kv_only, cost.skip_path, cost.drop_path) == (64, 64 + 40, 40)
    assert cost.kv_fraction() == 64 / 576 and cost.skip_fraction() == 104 / 576 and cost.drop_fraction() == 40 / 576
    contexts = torch.tensor([1, 2, 3])  # mean layer cost 576 + 16 * 2 = 608
    assert cost.kv_fraction(contexts) == pytest.approx(64 / 608, rel=1e-12)
    assert cost.skip_fraction(contexts) == pytest.approx(104 / 608, rel=1e-12)
    assert cost.drop_fraction(contexts) == pytest.approx(40 / 608, rel=1e-12)
    plain = CostModel(TOY)  # no bypass: SKIP is the K/V-only path and DROP is free
    assert (plain.bypass, plain.skip_path, plain.drop_path, plain.drop_fraction()) == (0, 64, 0, 0.0)
    assert plain.skip_fraction() == plain.kv_fraction() == 64 / 576


def test_bypassed_is_skip_and_drop_before_any_exit():
    d = torch.tensor([[[PROCESS, SKIP, DROP, PROCESS], [SKIP, EXIT, DROP, EXIT], [DROP, DROP, EXIT, EXIT]],
                      [[EXIT, DROP, DROP, EXIT], [PROCESS, PROCESS, PROCESS, PROCESS], [DROP, SKIP, PROCESS, DROP]]],
                     dtype=torch.int8)
    assert bypassed(d).tolist() == [[[False, True, True, False], [True, False, False, False],
                                     [True, True, False, False]],
                                    [[False, False, False, False], [False] * 4, [True, True, False, True]]]
    assert bypassed(d[0, 0]).tolist() == [False, True, True, False]  # any leading shape


def test_trace_cost_charges_the_bypass_exactly():
    d = torch.tensor([[[PROCESS, SKIP, DROP, PROCESS], [SKIP, EXIT, DROP, EXIT], [PROCESS, PROCESS, DROP, SKIP]]],
                     dtype=torch.int8)
    context = torch.tensor([[5, 6, 7]])
    rep = trace_cost(CostModel(TOY, bypass=BYPASS), d, context)
    # token 0: 2 layers at 576 + 80, one K/V-only path, bypass at the SKIP and the DROP
    # token 1: 3 K/V-only paths (SKIP, EXIT, EXIT), bypass at the SKIP only (its DROP comes after its EXIT)
    # token 2: 2 layers at 576 + 112, one K/V-only path, bypass at the DROP and the SKIP
    assert rep.layer_macs.tolist() == [[2 * 656 + 64 + 2 * 40, 3 * 64 + 40, 2 * 688 + 64 + 2 * 40]]
    assert rep.full_layer_macs.tolist() == [[4 * 656, 4 * 672, 4 * 688]]
    assert rep.layer_fraction == pytest.approx((1456 + 232 + 1520) / (2624 + 2688 + 2752), rel=1e-12)
    without = trace_cost(CostModel(TOY), d, context)
    assert without.layer_macs.tolist() == [[2 * 656 + 64, 3 * 64, 2 * 688 + 64]]


def test_static_cost_charges_removed_layers_their_bypass():
    context = torch.tensor([[5.0, 6.0]])
    rep = static_cost(CostModel(TOY, bypass=BYPASS), context, layers_run=3)
    assert rep.layer_macs.tolist() == [[3 * 656 + 40, 3 * 672 + 40]]
    assert rep.full_layer_macs.tolist() == [[4 * 656, 4 * 672]] and rep.head_macs == 80
    assert rep.overhead_macs.tolist() == [[0.0, 0.0]]
    assert static_cost(CostModel(TOY), context, layers_run=3).layer_macs.tolist() == [[3 * 656, 3 * 672]]
    assert (static_cost(CostModel(TOY, bypass=BYPASS), context, layers_run=1).layer_macs.tolist()
            == [[656 + 120, 672 + 120]])
