"""Fitting and tuning the layer bypass: the statistics count every token, the closed-form fit lowers the
KL of removing layers, end-to-end tuning lowers it further and touches nothing but the bypass."""

from __future__ import annotations

import copy

import pytest
import torch
from _anee_tiny import llama

from anee import AdaptiveExecutor, adapter_for
from anee.core.actions import removal_decisions
from anee.core.bypass import BypassBank, BypassConfig, BypassStats
from anee.core.data import sample_windows
from anee.core.divergence import token_kl
from anee.core.freezing import frozen
from anee.engine.training.bypass import (
    BypassTuneConfig,
    fit_layer_bypass,
    layer_bypass_stats,
    tune_bypass_,
)

ORDER = [2, 3, 1, 4, 0, 5]  # a removal order (least important first)


def model():
    """A tiny LLaMA whose layers matter: initialised at 0.1 (HF's 0.02 leaves every layer's update
    so small that removing two of them barely changes the output)."""
    return llama(6, 32, 4, 2, 64, vocab=128, positions=256, seed=0, initializer_range=0.1)


@pytest.fixture(scope="module")
def setup():
    m = model()
    ids = torch.randint(0, 128, (1, 4096), generator=torch.Generator().manual_seed(0))
    return m, AdaptiveExecutor(adapter_for(m)), ids


def removal_kl(executor: AdaptiveExecutor, windows: torch.Tensor, k: int) -> float:
    decisions = removal_decisions(ORDER, k, 6, windows.shape[1]).expand(len(windows), -1, -1)
    with torch.no_grad():
        return float(token_kl(executor.forward(windows).logits,
                              executor.forward(windows, decisions=decisions).logits).mean())


def test_layer_bypass_stats_count_every_token_and_match_the_hf_streams(setup):
    m, ex, ids = setup
    windows = ids[0, :150].view(3, 50)
    stats = layer_bypass_stats(ex, windows)
    assert len(stats) == 6 and all(s.count == 150 for s in stats)
    assert all(float(s.gram[32, 32]) == 150.0 for s in stats)  # the bias column: one per token
    with torch.no_grad():
        hs = m(windows, output_hidden_states=True).hidden_states  # HF's last entry is after the final norm
    for layer in range(5):
        ref = BypassStats(32)
        ref.add_(hs[layer], hs[layer + 1] - hs[layer])
        assert torch.allclose(stats[layer].gram, ref.gram, rtol=1e-4, atol=1e-3)
        assert torch.allclose(stats[layer].cross, ref.cross, rtol=1e-4, atol=1e-3)


def test_fit_lowers_the_kl_of_removing_two_layers(setup):
    _, ex, ids = setup
    fit, test = ids[0, :1024].view(16, 64), ids[0, 2048:2560].view(8, 64)
    identity = removal_kl(ex, test, 2)
    assert identity > 0.05  # the two layers matter
    stats = layer_bypass_stats(ex, fit)
    for family, rank in (("linear", 0), ("diag_lowrank", 4), ("mlp", 4)):
        # statistics given: no windows needed
        bank = fit_layer_bypass(ex, None, BypassConfig(family, rank), stats=stats)
        assert bank.info == {"fit_tokens": 1024} and bank.family == family
        fitted = removal_kl(AdaptiveExecutor(ex.adapter, bypass=bank), test, 2)
        assert fitted < 0.85 * identity, family
    assert (removal_kl(AdaptiveExecutor(ex.adapter, bypass=fit_layer_bypass(ex, fit, BypassConfig("linear"))), test, 2)
            < 0.75 * identity)
    none = fit_layer_bypass(ex, None, BypassConfig("identity"))  # nothing to fit, nothing run
    assert none.is_identity and none.info == {}


def test_tuning_lowers_the_kl_and_touches_only_the_bypass():
    m = model()
    adapter = adapter_for(m)
    ids = torch.randint(0, 128, (1, 4096), generator=torch.Generator().manual_seed(0))
    test = ids[0, 2048:2560].view(8, 64)
    ex = AdaptiveExecutor(adapter, bypass=BypassBank(BypassConfig("linear"), 32, 6))  # zero weights: adds nothing yet
    before = removal_kl(ex, test, 2)
    assert before == pytest.approx(removal_kl(AdaptiveExecutor(adapter), test, 2), rel=1e-6)
    base = {k: v.clone() for k, v in m.state_dict().items()}
    m.model.layers[0].mlp.up_proj.weight.requires_grad_(False)  # a mixed set of flags, restored as it was
    flags = [p.requires_grad for p in m.parameters()]
    cfg = BypassTuneConfig(steps=20, batch=2, seq_len=64, lr=3e-3, max_removed=2, seed=0)
    history = tune_bypass_(ex, ids, ORDER, cfg)
    assert [h["step"] for h in history] == list(range(20)) and {h["removed"] for h in history} == {1, 2}
    kls = [h["kl"] for h in history]
    assert sum(kls[-5:]) < 0.8 * sum(kls[:5])
    assert removal_kl(ex, test, 2) < 0.9 * before  # on fixed held-out windows too
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in base.items())
    assert [p.requires_grad for p in m.parameters()] == flags and all(p.grad is None for p in m.parameters())
    assert not ex.bypass.training
    assert ex.bypass.info == {"tune_steps": 20, "tune_max_removed": 2, "tune_tokens": 20 * 2 * 64}
    tune_bypass_(ex, ids, ORDER, BypassTuneConfig(steps=1, batch=1, seq_len=16, max_removed=1))
    assert ex.bypass.info["tune_steps"] == 21  # accumulated over calls


def test_a_tuning_step_is_that_of_the_whole_bypassed_pass(setup):
    """Tuning starts the student at the first removed layer, from the teacher's state there: its
    loss and its update are those of the whole pass from the embedding, bit for bit."""
    m, identity, ids = setup
    stats = layer_bypass_stats(identity, ids[0, :512].view(4, 128))
    bank = fit_layer_bypass(identity, None, BypassConfig("diag_lowrank", 4), stats)
    by_hand = copy.deepcopy(bank)
    cfg = BypassTuneConfig(steps=1, batch=2, seq_len=32, lr=1e-2, max_removed=3, seed=1)
    (row,) = tune_bypass_(AdaptiveExecutor(identity.adapter, bypass=bank), ids, ORDER, cfg)
    k = row["removed"]
    assert min(ORDER[:k]) > 0  # the step starts past the embedding (else this checks nothing)
    x = sample_windows(ids, cfg.seq_len, cfg.batch, seed=cfg.seed * 100_003)
    ex = AdaptiveExecutor(identity.adapter, bypass=by_hand)
    opt = torch.optim.Adam(by_hand.parameters(), lr=cfg.lr)
    with frozen(m):
        full = ex.forward(x).logits
        student = ex.forward_grad(x, decisions=removal_decisions(ORDER, k, 6, cfg.seq_len)
                                  .expand(cfg.batch, -1, -1)).logits
        loss = token_kl(full, student).mean()
        loss.backward()
        opt.step()
    assert row["kl"] == float(loss.detach())
    assert all(torch.equal(a, b) for a, b in zip(bank.parameters(), by_hand.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(
        bank.parameters(), fit_layer_bypass(identity, None, BypassConfig("diag_lowrank", 4), stats).parameters()))


def test_tuning_needs_a_bypass():
    ex = AdaptiveExecutor(adapter_for(model()), bypass=BypassBank(BypassConfig("identity"), 32, 6))
    with pytest.raises(ValueError, match="no bypass to tune"):
        tune_bypass_(ex, torch.zeros(1, 100, dtype=torch.long), ORDER, BypassTuneConfig(steps=1))
