"""The hierarchical model: exactness at full capacity, dense == sparse semantics, causal routing,
realized capacity, cost accounting, the speedup search, checkpoints (corrupt, bit-flipped or
type-confused files are a ValueError naming notebook 05), and the same with an FFN bypass."""

from __future__ import annotations

import pytest
import torch
from _anee_tiny import damaged, randomize
from _anee_tiny import hier_gpt2 as tiny_gpt2
from _anee_tiny import hier_llama as tiny_llama
from _anee_tiny import token_ids as ids
from hypothesis import given, settings
from hypothesis import strategies as st

from anee.core.bypass import BypassBank, BypassConfig, BypassStats
from anee.core.divergence import KLReference, log_probs
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


def test_allocation_exponent_spends_the_capacity_more_greedily():
    """f_l = min(0.9, mu * s_l^-a): the mean capacity holds for every exponent, a larger exponent takes
    more of the FFN of the least sensitive layer and less of the most sensitive one, and the skip
    fractions of two uncapped layers are in the ratio (s_i / s_j)^-a."""
    sens = torch.tensor([5.0, 1.0, 0.5, 0.2, 0.3, 2.0], dtype=torch.float64)
    caps = {}
    for a in (1.0, 2.0, 3.0):
        model = HierarchicalModel(tiny_llama(), allocation_exponent=a)
        model.sensitivity.copy_(sens)
        caps[a] = model.layer_capacities(0.8)
        assert abs(float(caps[a].mean()) - 0.8) < 1e-9 and caps[a].min() >= 0.1 - 1e-9
        skip = 1 - caps[a]
        assert float(skip[0] / skip[5]) == pytest.approx((5.0 / 2.0) ** -a, rel=1e-6)
    assert caps[1.0][3] > caps[2.0][3] > caps[3.0][3]  # the least sensitive layer (s = 0.2) skips more
    assert caps[1.0][0] < caps[2.0][0] < caps[3.0][0]  # the most sensitive one (s = 5) skips less
    for bad in (0, -1.0, float("inf"), 11):
        with pytest.raises(ValueError, match="allocation_exponent"):
            HierarchicalModel(tiny_llama(), allocation_exponent=bad)


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
    assert loaded.allocation_exponent == model.allocation_exponent
    greedy = HierarchicalModel.load(HierarchicalModel(base, allocation_exponent=3.5).save(tmp_path / "g.safetensors"),
                                    base)
    assert greedy.allocation_exponent == 3.5  # inference allocates capacity as training did
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
    ("allocation_exponent", 0, r"allocation_exponent must be a finite number in \(0, 10\], got 0"),
    ("allocation_exponent", "2", "allocation_exponent must be a finite number"),
])
def test_type_confused_hierarchical_config(tmp_path, key, value, error):
    from anee.core.checkpoints import load_checkpoint, save_checkpoint

    base, path = _saved(tmp_path)
    tensors, config = load_checkpoint(path, HierarchicalModel.FORMAT, HierarchicalModel.FIX)
    bad = save_checkpoint(tmp_path / "bad.safetensors", tensors, HierarchicalModel.FORMAT, {**config, key: value})
    with pytest.raises(ValueError, match="bad.safetensors: its config does not describe a valid HierarchicalModel "
                                         f".*{error}.*notebook 05"):
        HierarchicalModel.load(bad, base)


@given(st.data())
@settings(max_examples=10)
def test_bit_flipped_hierarchical_checkpoints_give_a_value_error(tmp_path_factory, data):
    """Property: bit flips anywhere in the file are a ValueError naming it and notebook 05."""
    base, path = _saved(tmp_path_factory.mktemp("flip"))
    path.write_bytes(damaged(path.read_bytes(), data, truncate=False))
    with pytest.raises(ValueError, match="h.safetensors.*notebook 05"):
        HierarchicalModel.load(path, base)

# -- the FFN bypass: what a token not routed to a layer's FFN gets instead -------------------------------
def bypassed_model(family: str = "linear", rank: int = 0, seed: int = 1):
    """A randomised model whose FFN bypass is then fitted in closed form on held-out tokens."""
    model = randomize(HierarchicalModel(tiny_llama(), ffn_bypass=BypassConfig(family, rank, target="ffn")), seed)
    model.fit_ffn_bypass_(ids(4, 64, 20))
    return model


def test_ffn_bypass_needs_the_ffn_target():
    model = HierarchicalModel(tiny_llama())
    assert model.ffn_bypass.is_identity and model.ffn_bypass.config.target == "ffn"
    with pytest.raises(ValueError, match="needs an FFN bypass \\(target='ffn'\\), got 'layer'"):
        HierarchicalModel(tiny_llama(), ffn_bypass=BypassConfig("linear"))


def test_fit_ffn_bypass_uses_the_post_attention_streams_of_the_full_model():
    """The fit is the closed form on (post-attention stream, FFN update) pairs of every token, all FFNs
    running: the same as fitting by hand on `ffn_data`."""
    model = bypassed_model()
    assert model.ffn_bypass.info == {"fit_tokens": 4 * 64}
    data = []
    with torch.no_grad():
        model.dense_forward(ids(4, 64, 20), "all", ffn_data=data, compute_logits=False)
    stats = [BypassStats(64) for _ in range(6)]
    for s, (mid, update, active) in zip(stats, data):
        assert active.all()
        s.add_(mid, update)
    by_hand = BypassBank(BypassConfig("linear", target="ffn"), 64, 6)
    by_hand.fit_(stats)
    for k, v in by_hand.state_dict().items():
        assert torch.allclose(v, model.ffn_bypass.state_dict()[k], rtol=1e-4, atol=1e-6), k
    assert model.ffn_bypass.blocks[3].proj.weight.abs().max() > 0
    identity = HierarchicalModel(tiny_llama())
    before = [p.clone() for p in identity.parameters()]
    identity.fit_ffn_bypass_(ids(1, 16, 0))  # nothing to fit
    assert all(torch.equal(a, b) for a, b in zip(before, identity.parameters()))


@pytest.mark.parametrize("family, rank", [("linear", 0), ("diag_lowrank", 4)])
def test_dense_and_sparse_agree_with_a_fitted_ffn_bypass(family, rank):
    model = bypassed_model(family, rank)
    x = ids(2, 48, 1)
    for exits in (False, True):
        thr = model.calibrate(x, 0.55, exits=exits, exit_threshold=0.97)
        with torch.no_grad():
            d = model.dense_forward(x, "threshold", thresholds=thr, exits=exits, exit_threshold=0.97)
            s = model.sparse_forward(x, thr, exits=exits, exit_threshold=0.97)
        assert (~d.ffn & d.active).any() and torch.equal(d.ffn, s.ffn) and torch.equal(d.exit_depth, s.exit_depth)
        assert (d.logits - s.logits).abs().max() <= 1e-4
    # the bypass is part of both paths: routing layer 0 only, the unrouted tokens' logits move with it
    plain = randomize(HierarchicalModel(tiny_llama()), 1)
    plain.routers.load_state_dict(model.routers.state_dict())
    only_first = torch.full((6,), float("-inf"), dtype=torch.float64)
    only_first[0] = 0.0
    with torch.no_grad():
        a, b = model.sparse_forward(x, only_first), plain.sparse_forward(x, only_first)
        dense = model.dense_forward(x, "threshold", thresholds=only_first)
    assert torch.equal(a.ffn, b.ffn) and (~a.ffn[..., 0]).any()
    assert (a.logits - b.logits).abs().max() > 1e-3 and (a.logits - dense.logits).abs().max() <= 1e-4


def test_cost_report_charges_the_ffn_bypass():
    """Hand-computed: hidden 64, 4 heads of 16, 2 K/V heads, FFN 112: q, K+V, o 4096 MACs each, MLP
    3 * 64 * 112 = 21504, a processed layer 33792 + 128 per key; diag_lowrank-4 bypass 64 + 2*4*64 = 576."""
    from anee.core.outputs import HierarchicalOutput

    model = HierarchicalModel(tiny_llama(), ffn_bypass=BypassConfig("diag_lowrank", 4, target="ffn"))
    assert model.ffn_bypass.macs == 576 and model.cost.mlp == 21504 and model.cost.layer_static == 33792
    L = 6
    active = torch.zeros(1, 2, L, dtype=torch.bool)
    ffn = torch.zeros(1, 2, L, dtype=torch.bool)
    active[0, 0] = True  # token 0: context 3, every layer, FFN at 4 of them
    ffn[0, 0, [0, 2, 3, 5]] = True
    active[0, 1, :2] = True  # token 1: context 5, exits after 2 layers, FFN at 1
    ffn[0, 1, 1] = True
    out = HierarchicalOutput(torch.zeros(1, 2, 1), ffn, active, torch.tensor([[6, 2]]), torch.zeros(L),
                             torch.tensor([[3.0, 5.0]]), exits_enabled=False)
    rep = model.cost_report(out)
    # token 0: 6 * (33792 + 384) - 2 * (21504 - 576); token 1: 2 * (33792 + 640) - (21504 - 576) + 4 K/V-only paths
    assert rep.layer_macs.tolist() == [[163200.0, 64320.0]]
    assert rep.full_layer_macs.tolist() == [[6 * 34176.0, 6 * 34432.0]]
    assert rep.overhead_macs.tolist() == [[6 * 128.0, 2 * 128.0]]  # a router call (2 * 64) per processed layer
    assert model.cost_report(out, routed=False).overhead_macs.tolist() == [[0.0, 0.0]]
    out.exits_enabled = True  # gates at depths 1, 2, 4, 5 (128 MACs each); the lens (64 * 64) for the exited token
    assert model.cost_report(out).overhead_macs.tolist() == [[768.0 + 4 * 128, 256.0 + 2 * 128 + 4096]]
    identity = HierarchicalModel(tiny_llama())  # no bypass: an unrouted token skips the whole MLP
    assert identity.cost_report(out).layer_macs.tolist() == [[163200.0 - 2 * 576, 64320.0 - 576]]


def test_checkpoint_keeps_the_ffn_bypass(tmp_path):
    base = tiny_llama()
    model = bypassed_model("diag_lowrank", 4)
    path = model.save(tmp_path / "h.safetensors")
    loaded = HierarchicalModel.load(path, base)
    assert loaded.ffn_bypass.config == BypassConfig("diag_lowrank", 4, target="ffn")
    assert loaded.ffn_bypass.info == {"fit_tokens": 256}
    bypass_keys = [k for k in model.state_dict() if k.startswith("ffn_bypass.")]
    assert len(bypass_keys) == 6 * 4  # diag, bias, down, up per layer
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    x = ids(1, 32, 2)
    thr = model.calibrate(x, 0.55)
    assert torch.equal(model.sparse_forward(x, thr).logits, loaded.sparse_forward(x, thr).logits)


@pytest.mark.parametrize("bypass", [False, True])
def test_measure_sensitivity_resumes_with_the_same_arithmetic(bypass):
    """Each layer's pass resumes from the all-FFN pass's stream at that layer: its logits equal, bit for
    bit, those of a pass run from the embedding with that layer's FFN skipped for every token."""
    config = BypassConfig("linear", 0, target="ffn") if bypass else None
    model = randomize(HierarchicalModel(tiny_llama(), ffn_bypass=config))
    model.fit_ffn_bypass_(ids(4, 32, 6))
    x, L = ids(2, 24, 5), model.num_layers
    want = []
    with torch.no_grad():
        full = KLReference(model.base(x).logits)
        inputs = []
        model.dense_forward(x, "all", compute_logits=False, layer_inputs=inputs)
        for layer in range(L):
            thr = torch.full((L,), float("-inf"), dtype=torch.float64)
            thr[layer] = float("inf")
            scratch = model.dense_forward(x, "threshold", thresholds=thr).logits
            resumed = model.dense_forward(x, "threshold", thresholds=thr, resume=(layer, inputs[layer])).logits
            assert torch.equal(resumed, scratch), layer
            want.append(float(full.kl(log_probs(scratch)).mean()))
        got = model.measure_sensitivity(x)
    assert torch.equal(got, model.sensitivity)
    assert got.tolist() == want
    assert (got > 0).all()


def test_resume_checks_its_layer_and_stream():
    model = randomize(HierarchicalModel(tiny_llama()))
    x = ids(1, 8, 7)
    inputs = []
    out = model.dense_forward(x, "all", layer_inputs=inputs)
    assert len(inputs) == model.num_layers
    resumed = model.dense_forward(x, "all", resume=(2, inputs[2]))
    assert torch.equal(resumed.logits, out.logits)
    final = model.dense_forward(x, "all", collect_final=True).final_hidden
    at_end = model.dense_forward(x, "all", resume=(model.num_layers, final))  # only the head is left
    assert torch.equal(at_end.logits, out.logits)
    with pytest.raises(ValueError, match=r"resume needs a layer in 0\.\.\d+"):
        model.dense_forward(x, "all", resume=(model.num_layers + 1, inputs[0]))
    with pytest.raises(ValueError, match="hidden state of shape"):
        model.dense_forward(x, "all", resume=(1, inputs[0][:, :4]))
