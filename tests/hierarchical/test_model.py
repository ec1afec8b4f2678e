"""The hierarchical model: exactness at full capacity, dense == sparse semantics, causal routing,
realized capacity, cost accounting, the speedup search, checkpoints (corrupt, bit-flipped or
type-confused files are a ValueError naming notebook 05)."""

from __future__ import annotations

import pytest
import torch
from _anee_tiny import damaged, randomize
from _anee_tiny import hier_gpt2 as tiny_gpt2
from _anee_tiny import hier_llama as tiny_llama
from _anee_tiny import token_ids as ids
from hypothesis import given, settings
from hypothesis import strategies as st

from anee.hierarchical.model import HierarchicalModel


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

    from anee.core.checkpoints import save_checkpoint

    bad = {k: v.clone() for k, v in model.state_dict().items()}
    bad["routers.0.proj.weight"] = torch.zeros(2, 63)
    save_checkpoint(tmp_path / "bad.safetensors", bad, model.FORMAT, model.checkpoint_config())
    with pytest.raises(ValueError, match="shape"):
        HierarchicalModel.load(tmp_path / "bad.safetensors", base)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="format"):
        HierarchicalModel.load(tmp_path / "foreign.safetensors", base)
    (tmp_path / "h.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a valid safetensors file.*notebook 05"):
        HierarchicalModel.load(tmp_path / "h.pt", base)
    with pytest.raises(ValueError, match="not found.*notebook 05"):
        HierarchicalModel.load(tmp_path / "missing.safetensors", base)


def _saved(tmp_path, name="h.safetensors"):
    base = tiny_llama(layers=4)
    return base, randomize(HierarchicalModel(base, tuned_lens=True, model_name="tiny")).save(tmp_path / name)


def test_corrupt_checkpoint_is_a_value_error_naming_notebook_05(tmp_path):
    """A corrupt hierarchical checkpoint used to raise a raw SafetensorError."""
    base, path = _saved(tmp_path)
    data = path.read_bytes()
    flipped = data[:-1] + bytes([data[-1] ^ 0xFF])
    for i, bad in enumerate([data[:200], data[:-8], data[:8] + b"[" + data[9:], flipped]):
        (tmp_path / f"bad{i}.safetensors").write_bytes(bad)
        with pytest.raises(ValueError, match=f"bad{i}.safetensors.*notebook 05"):
            HierarchicalModel.load(tmp_path / f"bad{i}.safetensors", base)


@pytest.mark.parametrize("key, value, error", [
    ("exit_layers", "12", "exit_layers must be a list of layer indices"),
    ("exit_layers", [1.5], "exit layer must be an integer"),
    ("exit_layers", [True], "exit layer must be an integer"),
    ("exit_layers", [9], r"exit layer must be an integer >= 1 and <= 3, got 9"),
    ("model_type", "gpt2", "model_type='gpt2' does not match the model's 'llama'"),
    ("num_layers", 4.0, "num_layers=4.0 does not match"),
    ("tuned_lens", 1, "tuned_lens must be true or false"),
    ("extra", "notes", "extra has the wrong type"),
])
def test_type_confused_hierarchical_config(tmp_path, key, value, error):
    from anee.core.checkpoints import load_checkpoint, save_checkpoint

    base, path = _saved(tmp_path)
    tensors, config = load_checkpoint(path, HierarchicalModel.FORMAT, HierarchicalModel.FIX)
    bad = save_checkpoint(tmp_path / "bad.safetensors", tensors, HierarchicalModel.FORMAT, {**config, key: value})
    with pytest.raises(ValueError, match=f"bad.safetensors: its config does not describe a valid HierarchicalModel .*{error}.*notebook 05"):
        HierarchicalModel.load(bad, base)


@given(st.data())
@settings(max_examples=10)
def test_bit_flipped_hierarchical_checkpoints_give_a_value_error(tmp_path_factory, data):
    """Property: bit flips anywhere in the file are a ValueError naming it and notebook 05."""
    base, path = _saved(tmp_path_factory.mktemp("flip"))
    path.write_bytes(damaged(path.read_bytes(), data, truncate=False))
    with pytest.raises(ValueError, match="h.safetensors.*notebook 05"):
        HierarchicalModel.load(path, base)
