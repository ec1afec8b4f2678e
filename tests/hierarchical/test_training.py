"""Two-phase training touches only its own parameters; the FFN bypass is fitted, read by the router
warm start, and tuned on its own."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _anee_tiny import hier_llama as tiny_llama
from _anee_tiny import token_ids as ids

from anee.core.bypass import BypassConfig
from anee.core.data import sample_windows
from anee.hierarchical.model import HierarchicalModel
from anee.hierarchical.routers import score
from anee.hierarchical.training import TrainConfig, train


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


def _bypassed(seed: int = 0) -> HierarchicalModel:
    model = HierarchicalModel(tiny_llama(), ffn_bypass=BypassConfig("linear", target="ffn"))
    model.fit_ffn_bypass_(ids(4, 64, 30 + seed))
    return model


@torch.no_grad()
def test_init_routers_regresses_the_bypass_error():
    """Router score = ridge regression (on the RMS-normalised stream, centred) of the standardised
    log(|mlp(h) - bypass(h)| / |h|): checked against an independent least-squares solve."""
    model = _bypassed()
    x = ids(2, 64, 40)
    ridge = 0.1
    model.init_routers(x, ridge=ridge)
    data = []
    model.dense_forward(x, "all", ffn_data=data, compute_logits=False)
    for layer in (0, 3, 5):
        mid, update, _ = data[layer]
        miss = (update - model.ffn_bypass.update(layer, mid)).norm(dim=-1) / mid.norm(dim=-1)
        y = miss.log().reshape(-1).double()
        y = (y - y.mean()) / y.std()
        feats = torch.nn.functional.rms_norm(mid, mid.shape[-1:]).reshape(-1, 64).double()
        xc = feats - feats.mean(0)
        n = len(xc)
        system = torch.cat([xc, (ridge * n) ** 0.5 * torch.eye(64, dtype=torch.float64)])
        w = torch.linalg.lstsq(system, torch.cat([y, torch.zeros(64, dtype=torch.float64)]).unsqueeze(1)).solution[:, 0]
        got = score(model.routers[layer](mid)).reshape(-1).double()
        assert torch.allclose(got, xc @ w, atol=1e-4), layer
    # with the identity the target is how far the FFN moves the stream: other routers
    identity = HierarchicalModel(tiny_llama())
    identity.init_routers(x, ridge=ridge)
    assert not torch.allclose(identity.routers[3].proj.weight, model.routers[3].proj.weight, atol=1e-3)


def test_bypass_tuning_changes_only_the_ffn_bypass():
    base = tiny_llama()
    data = ids(1, 600, 7)
    cfg = TrainConfig(seq_len=32, batch=2, router_steps=1, exit_steps=0, sensitivity_windows=0, bypass_fit_windows=4,
                      bypass_steps=3, bypass_lr=1e-2)
    runs = {}
    for steps in (0, 3):
        torch.manual_seed(0)  # the same initial routers in both runs
        model = HierarchicalModel(base, ffn_bypass=BypassConfig("linear", target="ffn"))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        base_before = {k: v.clone() for k, v in base.state_dict().items()}
        hist = train(model, data, "routers", dataclasses.replace(cfg, bypass_steps=steps))
        runs[steps] = (before, {k: v.clone() for k, v in model.state_dict().items()}, hist)
        assert all(torch.equal(v, base.state_dict()[k]) for k, v in base_before.items())
        assert (all(p.requires_grad for p in base.parameters())
                and all(p.requires_grad for p in model.routers.parameters()))
    (_, fitted, hist0), (before, tuned, hist3) = runs[0], runs[3]
    assert [h["phase"] for h in hist0] == ["routers"] and [h["phase"] for h in hist3] == ["routers"] + ["bypass"] * 3
    assert all(0.4 <= h["capacity"] <= 0.9 and h["loss"] == h["kl"] >= 0 for h in hist3[1:])
    changed = {k for k in tuned if not torch.equal(tuned[k], fitted[k])}
    # the same fit and routers, then only the bypass moved
    assert changed and all(k.startswith("ffn_bypass.") for k in changed)
    assert all(torch.equal(before[k], tuned[k]) for k in tuned if k.startswith(("gates.", "lenses.", "sensitivity")))
    # with the identity there is nothing to tune
    plain = train(HierarchicalModel(base), data, "routers", cfg)
    assert [h["phase"] for h in plain] == ["routers"]


def test_routers_are_refitted_to_the_tuned_bypass():
    """With a closed-form warm start and no router steps, the routers after bypass tuning are the
    warm start fitted on the tuned bypass (the same windows), not the one fitted before tuning."""
    base = tiny_llama()
    data = ids(1, 600, 7)
    cfg = TrainConfig(seq_len=32, batch=2, router_steps=0, exit_steps=0, sensitivity_windows=0, bypass_fit_windows=4,
                      router_init_windows=2, bypass_steps=3, bypass_lr=1e-2)
    untuned = HierarchicalModel(base, ffn_bypass=BypassConfig("linear", target="ffn"))
    train(untuned, data, "routers", dataclasses.replace(cfg, bypass_steps=0))
    tuned = HierarchicalModel(base, ffn_bypass=BypassConfig("linear", target="ffn"))
    train(tuned, data, "routers", cfg)
    refit = HierarchicalModel(base, ffn_bypass=BypassConfig("linear", target="ffn"))
    refit.load_state_dict(tuned.state_dict())
    refit.init_routers(sample_windows(data, cfg.seq_len, cfg.router_init_windows, seed=cfg.seed + 5))
    for a, b, c in zip(tuned.routers.parameters(), refit.routers.parameters(), untuned.routers.parameters()):
        assert torch.equal(a, b) and not torch.allclose(a, c, atol=1e-5)
    # trained routers (router_steps > 0) stay as trained: the same as with no bypass tuning at all
    kept = [HierarchicalModel(base, ffn_bypass=BypassConfig("linear", target="ffn")) for _ in range(2)]
    for m, steps in zip(kept, (0, 3)):  # train() seeds torch itself (cfg.seed)
        train(m, data, "routers", dataclasses.replace(cfg, router_steps=1, bypass_steps=steps))
    assert all(torch.equal(a, b) for a, b in zip(kept[0].routers.parameters(), kept[1].routers.parameters()))
