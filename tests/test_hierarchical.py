"""Hierarchical adaptive transformer (issue 5): exactness, causality, capacity, checkpoints, training."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from anee.adapters import adapter_for
from anee.executor import AdaptiveExecutor
from anee.hierarchical import HierarchicalModel, TrainConfig, default_exit_layers, gumbel_decoupled, topk_route, train
from anee.hierarchical.methods import checkpoint_path
from anee.perplexity import METHODS, EvalContext

VOCAB = 97


def tiny_llama(layers: int = 6, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=112, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=4, n_head=4, n_positions=128)).eval()


def randomize(model: HierarchicalModel, seed: int = 1) -> HierarchicalModel:
    """Random routers, gates (some tokens exit) and lenses, so every code path is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.05 if p.shape[-1] == p.shape[0] else 1.0))
    return model


def ids(batch: int, T: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
def test_full_capacity_no_exits_equals_hf(make):
    base = make()
    model = randomize(HierarchicalModel(base))
    x = ids(2, 40, 0)
    with torch.no_grad():
        ref = base(x).logits
        dense = model.dense_forward(x, "all").logits
        sparse = model.sparse_forward(x, model.calibrate(x, 1.0)).logits
    assert (dense - ref).abs().max() <= 1e-4
    assert (sparse - ref).abs().max() <= 1e-4


def test_sparse_path_matches_dense_semantics_with_routing_and_exits():
    model = randomize(HierarchicalModel(tiny_llama()))
    x = ids(2, 48, 1)
    thr = model.calibrate(x, 0.55, exits=True, exit_threshold=0.97)
    with torch.no_grad():
        d = model.dense_forward(x, "threshold", thresholds=thr, exits=True, exit_threshold=0.97)
        s = model.sparse_forward(x, thr, exits=True, exit_threshold=0.97)
    assert (d.exit_depth < model.num_layers).any() and (d.exit_depth == model.num_layers).any()
    assert torch.equal(d.ffn, s.ffn) and torch.equal(d.active, s.active) and torch.equal(d.exit_depth, s.exit_depth)
    assert (d.logits - s.logits).abs().max() <= 1e-4


def test_inference_routing_is_causal():
    model = randomize(HierarchicalModel(tiny_llama()))
    calib = ids(4, 64, 2)
    for exits in (False, True):
        thr = model.calibrate(calib, 0.55, exits=exits)
        for seed in range(3):
            x = ids(1, 64, 10 + seed)
            y = x.clone()
            y[:, 32:] = ids(1, 32, 100 + seed)  # change every future token
            a, b = model.sparse_forward(x, thr, exits), model.sparse_forward(y, thr, exits)
            assert torch.equal(a.ffn[:, :32], b.ffn[:, :32])
            assert torch.equal(a.exit_depth[:, :32], b.exit_depth[:, :32])
            assert torch.allclose(a.logits[:, :32], b.logits[:, :32], atol=1e-5)
            assert not torch.equal(a.ffn[:, 32:], b.ffn[:, 32:])  # the later decisions did react


def test_topk_routing_is_not_causal():
    """The negative control: top-k over the sequence lets future tokens change earlier decisions."""
    s = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    t = torch.tensor([[3.0, 1.0, 2.0, 9.0]])
    assert not torch.equal(topk_route(s, 0.5)[:, :3], topk_route(t, 0.5)[:, :3])


@pytest.mark.parametrize("capacity", [0.9, 0.7, 0.55, 0.4])
def test_realized_capacity_on_held_out_tokens(capacity):
    model = randomize(HierarchicalModel(tiny_llama()))
    model.sensitivity.copy_(torch.tensor([5.0, 1.0, 0.5, 0.2, 0.3, 2.0], dtype=torch.float64))
    caps = model.layer_capacities(capacity)
    assert abs(float(caps.mean()) - capacity) < 1e-6 and caps.min() >= 0.1 - 1e-9 and caps.max() <= 1.0
    assert caps[0] > caps[3]  # the sensitive layer keeps more of its FFN
    thr = model.calibrate(ids(8, 64, 3), capacity)
    out = model.sparse_forward(ids(4, 64, 4), thr)  # different tokens: like calibrating on valid, testing on test
    assert abs(out.realized_capacity - capacity) <= 0.05


def test_capacity_is_validated():
    model = HierarchicalModel(tiny_llama())
    for bad in (0.05, 0.95, 1.5):
        with pytest.raises(ValueError, match="capacity"):
            model.calibrate(ids(1, 16, 0), bad)


def test_cost_accounting():
    base = tiny_llama()
    model = randomize(HierarchicalModel(base))
    x = ids(1, 32, 5)
    cm = model.cost
    full = model.cost_report(model.sparse_forward(x, None), routed=False)
    assert torch.allclose(full.layer_macs, full.full_layer_macs) and full.layer_saved == 0
    thr = model.calibrate(x, 0.4, exits=True)
    out = model.sparse_forward(x, thr, exits=True)
    rep = model.cost_report(out)
    L = model.num_layers
    n_act, n_ffn = out.active.sum(-1).double(), out.ffn.sum(-1).double()
    per = cm.layer(out.context.double())
    expect = n_act * per - (n_act - n_ffn) * cm.mlp + (L - n_act) * cm.kv_only
    assert torch.allclose(rep.layer_macs, expect)
    assert (rep.overhead_macs >= n_act * 2 * cm.dims.hidden).all()
    assert 0 < rep.total_saved < rep.layer_saved < 1


def test_target_speedup_binary_search():
    model = randomize(HierarchicalModel(tiny_llama()))
    x = ids(4, 48, 6)
    cap = model.capacity_for_speedup(x, 1.15)
    assert 0.1 <= cap <= 0.9
    assert model.speedup_at(x, cap) >= 1.15 - 1e-9
    assert model.speedup_at(x, min(0.9, cap + 0.05)) < model.speedup_at(x, max(0.1, cap - 0.05))


def test_checkpoint_roundtrip_and_checks(tmp_path):
    base = tiny_llama()
    model = randomize(HierarchicalModel(base, tuned_lens=True, model_name="tiny"))
    path = model.save(tmp_path / "h.safetensors", extra={"steps": 3})
    assert path.read_bytes()[8:9] == b"{"  # safetensors: 8-byte length, then a JSON header (no pickle)
    loaded = HierarchicalModel.load(path, base)
    assert loaded.exit_layers == model.exit_layers and loaded.checkpoint_extra == {"steps": 3}
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    with pytest.raises(ValueError, match="num_layers"):
        HierarchicalModel.load(path, tiny_llama(layers=4))
    from safetensors.torch import save_file

    bad = {k: v.clone() for k, v in model.state_dict().items()}
    bad["routers.0.proj.weight"] = torch.zeros(2, 63)
    save_file(bad, str(tmp_path / "bad.safetensors"), metadata=model.metadata())
    with pytest.raises(ValueError, match="shape"):
        HierarchicalModel.load(tmp_path / "bad.safetensors", base)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="format"):
        HierarchicalModel.load(tmp_path / "foreign.safetensors", base)
    with pytest.raises(ValueError, match="safetensors"):
        HierarchicalModel.load(tmp_path / "h.pt", base) if (tmp_path / "h.pt").write_bytes(b"x") else None
    with pytest.raises(FileNotFoundError):
        HierarchicalModel.load(tmp_path / "missing.safetensors", base)


def test_two_phase_training_touches_only_its_parameters():
    base = tiny_llama()
    model = HierarchicalModel(base)
    before_base = {k: v.clone() for k, v in base.state_dict().items()}
    r0 = [p.clone() for p in model.routers.parameters()]
    g0 = [p.clone() for p in model.gates.parameters()]
    data = ids(1, 600, 7)
    cfg = TrainConfig(seq_len=32, batch=2, router_steps=2, exit_steps=2)
    hist = train(model, data, "routers", cfg)
    assert [h["phase"] for h in hist] == ["routers"] * 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    assert any(not torch.equal(a, b) for a, b in zip(r0, model.routers.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(g0, model.gates.parameters()))
    assert model.sensitivity.min() > 0  # measured before training the routers
    r1 = [p.clone() for p in model.routers.parameters()]
    hist = train(model, data, "exit", cfg)
    assert [h["phase"] for h in hist] == ["exit"] * 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    assert all(torch.equal(a, b) for a, b in zip(r1, model.routers.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(g0, model.gates.parameters()))
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in before_base.items())
    assert all(p.requires_grad for p in base.parameters())  # flags restored
    with pytest.raises(ValueError, match="phase"):
        train(model, data, "everything", cfg)


def test_gumbel_decoupled_temperatures():
    logits = torch.tensor([[0.3, -0.2]] * 4, requires_grad=True)
    y = gumbel_decoupled(logits, tau_forward=0.1, tau_backward=2.0, hard=True, generator=torch.Generator().manual_seed(0))
    v = y.detach()
    assert torch.allclose(v, v.round(), atol=1e-6) and torch.allclose(v.sum(-1), torch.ones(4))  # hard forward
    y[:, 1].sum().backward()
    assert logits.grad.abs().sum() > 0  # soft backward
    assert 0 < logits.grad.abs().max() < 0.25  # 1/(4*tau_backward) bounds the softmax slope at tau=2


def test_exit_layers_scale_with_depth():
    assert default_exit_layers(30) == (6, 12, 18, 23, 27)
    assert default_exit_layers(22) == (4, 9, 13, 17, 20)
    with pytest.raises(ValueError, match="exit_layers"):
        HierarchicalModel(tiny_llama(), exit_layers=(0, 3))


def test_registered_method_loads_checkpoint(tmp_path):
    base = tiny_llama()
    model = randomize(HierarchicalModel(base))
    model.save(checkpoint_path(tmp_path, "tuned"))
    ctx = EvalContext(base, None, AdaptiveExecutor(adapter_for(base)), calibration_ids=ids(1, 512, 8),
                      extras={"checkpoint_dir": tmp_path})
    x = ids(1, 64, 9)
    full = METHODS["hierarchical"](ctx, capacity=1.0, exits=False)(x)
    assert (full.logits - base(x).logits).abs().max() <= 1e-4
    out = METHODS["hierarchical"](ctx, capacity=0.55, exits=True, calib_window=64)(x)
    assert out.logits.shape == (1, 64, VOCAB) and 0 < out.cost.total_saved < 1
    fast = METHODS["hierarchical"](ctx, target_speedup=1.2, calib_window=64)
    assert 0.1 <= fast.capacity <= 0.9
    with pytest.raises(FileNotFoundError):
        METHODS["hierarchical"](ctx, lens="logit")
