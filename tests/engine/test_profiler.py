"""The profiler: exact feature columns, the shortlist entropy estimator, importance ranks,
checkpoints, and plan-aware counts."""

import math

import pytest
import torch
from _anee_tiny import tiny_setup

from anee.engine.controllers.base import LayerView
from anee.engine.profiler import FEATURES, Profiler, ShortlistEntropy, estimator_error, exact_entropy


@pytest.fixture(scope="module")
def tiny():
    return tiny_setup()


def _view(ex, h, prev, layer=2, budget=0.5):
    B, T, _ = h.shape
    ctx = torch.full((B, T), 4.0, dtype=torch.float64)
    lc = ex.cost.layer(ctx)
    L = ex.adapter.num_layers
    return LayerView(layer, L, h, prev, torch.full((B, T), 1.0) * lc * layer, L * lc, lc,
                     torch.full((B, 1), budget, dtype=torch.float64), ex.adapter, ex.cost)


def test_features_shape_and_exact_columns(tiny):
    _, ex, prof, _ = tiny
    h, prev = torch.randn(2, 3, 32), torch.randn(2, 3, 32)
    f = prof.features(_view(ex, h, prev, layer=2, budget=0.5))
    assert f.shape == (2, 3, len(FEATURES)) and torch.isfinite(f).all()
    col = {n: f[..., i] for i, n in enumerate(FEATURES)}
    assert torch.allclose(col["position"], torch.tensor(2 / 5))
    assert torch.allclose(col["budget"], torch.tensor(0.5))
    assert torch.allclose(col["spent"], torch.tensor(2 / 6))
    assert torch.allclose(col["remaining"], torch.tensor(0.5 - 2 / 6))
    assert torch.allclose(col["cos_prev"], torch.nn.functional.cosine_similarity(h, prev, dim=-1), atol=1e-5)
    assert torch.allclose(col["log_context"], torch.tensor(math.log(4.0) / math.log(ex.adapter.dims.max_positions)))
    same = prof.features(_view(ex, h, h))
    assert torch.allclose(same[..., FEATURES.index("delta_rel")], torch.tensor(0.0))


def test_full_shortlist_is_exact(tiny):
    _, ex, _, _ = tiny
    est = ShortlistEntropy(torch.arange(128), torch.tensor([1.0, 0.0, 0.0, 0.0]))
    h = torch.randn(50, 32)
    guess, pmax = est.estimate(ex, h)
    assert torch.allclose(guess, exact_entropy(ex, h), atol=1e-4)
    assert torch.allclose(pmax, torch.softmax(ex.adapter.logits(h), -1).max(-1).values, atol=1e-5)


def test_estimator_error_and_overhead(tiny):
    _, ex, prof, _ = tiny
    err = estimator_error(ex, prof.entropy, torch.randn(200, 32))
    assert err["macs_per_call"] == 16 * 32 and err["mae_nats"] >= 0 and err["k"] == 16
    assert err["exact_head_fraction_of_layer"] == pytest.approx(128 * 32 / ex.cost.layer_static)
    assert prof.overhead_macs == 16 * 32 + 6 * 32
    assert 0 < prof.entropy_median < 1 + 1e-6 and math.isfinite(prof.entropy_median)


def test_importance_ranks(tiny):
    _, _, prof, _ = tiny
    assert prof.importance.min() == 0 and prof.importance.max() == 1
    top = int(torch.argmax(prof._raw_importance))
    assert prof.more_important_left(top) == 0
    assert prof.more_important_left(5) == 0  # nothing after the last layer


def test_save_load_roundtrip_and_errors(tiny, tmp_path):
    _, ex, prof, _ = tiny
    path = prof.save(tmp_path / "p.safetensors")
    back = Profiler.from_checkpoint(path, ex)
    assert torch.equal(back.entropy.token_ids, prof.entropy.token_ids)
    assert torch.equal(back.importance, prof.importance) and back.entropy_median == pytest.approx(prof.entropy_median)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a valid safetensors.*notebook 02"):
        Profiler.from_checkpoint(bad, ex)
    with pytest.raises(ValueError, match="not found"):
        Profiler.from_checkpoint(tmp_path / "missing.safetensors", ex)
    from _anee_tiny import tiny_llama

    from anee import AdaptiveExecutor, adapter_for
    other = AdaptiveExecutor(adapter_for(tiny_llama(layers=4)))
    with pytest.raises(ValueError, match="num_layers"):
        Profiler.from_checkpoint(path, other)


@pytest.mark.parametrize("key, value, error", [("k", True, "k must be an integer"),
                                                ("k", 10**9, "k must be an integer >= 1 and <= 128"),
                                                ("num_layers", 6.0, "num_layers=6.0 does not match"),
                                                ("features", ",".join(FEATURES), "features=.* does not match")])
def test_type_confused_profiler_config(tiny, tmp_path, key, value, error):
    from anee.core.checkpoints import load_checkpoint, save_checkpoint

    _, ex, prof, _ = tiny
    tensors, config = load_checkpoint(prof.save(tmp_path / "p.safetensors"), Profiler.FORMAT, Profiler.FIX)
    bad = save_checkpoint(tmp_path / "bad.safetensors", tensors, Profiler.FORMAT, {**config, key: value})
    with pytest.raises(ValueError,
                       match=f"bad.safetensors: its config does not describe a valid Profiler .*{error}.*notebook 02"):
        Profiler.from_checkpoint(bad, ex)


def test_fractional_shortlist_ids_are_refused(tiny, tmp_path):
    """Token ids stored as floats would be truncated silently."""
    from anee.core.checkpoints import load_checkpoint, save_checkpoint

    _, ex, prof, _ = tiny
    tensors, config = load_checkpoint(prof.save(tmp_path / "p.safetensors"), Profiler.FORMAT, Profiler.FIX)
    tensors["shortlist_ids"] = tensors["shortlist_ids"].float() + 0.5
    bad = save_checkpoint(tmp_path / "bad.safetensors", tensors, Profiler.FORMAT, config)
    with pytest.raises(ValueError, match="shortlist_ids must be integer token ids, got torch.float32.*notebook 02"):
        Profiler.from_checkpoint(bad, ex)


def test_plan_aware_view_counts(tiny):
    """Under a plan, `layers_to_target` and the rank feature count only the asked layers."""
    from anee.core.actions import ASK, DROP, PROCESS

    _, ex, prof, _ = tiny
    h = torch.randn(1, 2, 32)
    view = _view(ex, h, h, layer=1, budget=0.5)
    view.plan = torch.tensor([PROCESS, ASK, DROP, ASK, PROCESS, DROP])
    assert view.asks_after == 1 and view.asked_after().tolist() == [3] and view.process_fixed_after
    lc, kv = view.layer_cost, ex.cost.kv_only
    assert torch.allclose(view.fixed_after(), lc)  # layer 4 only; dropped layers cost nothing
    expected = (0.5 * view.full - view.spent - lc - 2 * kv) / (lc - kv)
    assert torch.allclose(prof.layers_to_target(view, view.budget), expected)
    assert prof.more_important_left(1, view.asked_after()) == int(prof.rank[3] < prof.rank[1])
