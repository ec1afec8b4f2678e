"""The hindsight oracle: robust tokens get the skips, costs raise the needed skips, skip profiles
on a tiny model."""

import numpy as np
import pytest

from anee.engine.training.oracle import SkipProfiles, oracle_allocation, oracle_ppl, static_ppl


def _profiles():
    # 4 tokens, k in {0, 1, 2}: tokens 0-1 are robust to skipping, tokens 2-3 are not
    kl = np.array([[0.0, 0.0, 0.0, 0.0], [0.01, 0.01, 1.0, 1.0], [0.02, 0.02, 3.0, 3.0]])
    nll = np.log(np.array([[10.0] * 4, [11.0, 11.0, 30.0, 30.0], [12.0, 12.0, 90.0, 90.0]]))
    return SkipProfiles(np.array([0, 1, 2]), kl, nll)


def test_oracle_gives_robust_tokens_the_skips():
    p = _profiles()
    pick = oracle_allocation(p, num_layers=4, net_saved=0.25, skip_fraction=0.0)
    # mean k must reach 1 (saving k/4 >= 0.25): the robust tokens take 2 skips, the others none
    assert pick.tolist() == [2, 2, 0, 0]
    assert oracle_ppl(p, pick) == pytest.approx(np.exp(np.log([12, 12, 10, 10]).mean()))
    assert oracle_ppl(p, pick) < static_ppl(p, 1.0)  # static: every token skips one layer


def test_costs_raise_the_needed_skips_and_unreachable_targets_fail():
    p = _profiles()
    # K/V-only path at half a layer: saving per skipped layer halves, so mean k must reach 2
    pick = oracle_allocation(p, num_layers=4, net_saved=0.25, skip_fraction=0.5)
    assert p.skips[pick].mean() == 2
    with pytest.raises(ValueError, match="net"):
        oracle_allocation(p, num_layers=4, net_saved=0.3, skip_fraction=0.5)
    assert static_ppl(p, 0.5) == pytest.approx(np.exp((np.log(10) + np.log([11, 11, 30, 30]).mean()) / 2))


def test_skip_profiles_on_a_tiny_model():
    import torch
    import torch.nn.functional as F
    from _anee_tiny import tiny_llama

    from anee import AdaptiveExecutor, adapter_for
    from anee.engine.training.oracle import skip_profiles

    model = tiny_llama(layers=4)
    ex = AdaptiveExecutor(adapter_for(model))
    windows = [torch.randint(0, 128, (1, 24), generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    p = skip_profiles(ex, windows, order=[2, 1, 3, 0], skips=[0, 1, 3])
    assert p.kl.shape == p.nll.shape == (3, 46)
    assert np.abs(p.kl[0]).max() < 1e-5 and (p.kl[1:] > 0).all()  # skipping changes every prediction here
    with torch.no_grad():
        ref = torch.cat([F.cross_entropy(model(w).logits[0, :-1], w[0, 1:], reduction="none") for w in windows])
    assert np.allclose(p.nll[0], ref.double().numpy(), atol=1e-4)
    # each skipped pass resumes from the full pass at its first skipped layer: bit for bit the whole pass
    from anee.core.actions import PROCESS, SKIP, pattern_decisions
    from anee.core.divergence import KLReference, log_probs, nll_log_probs

    whole = torch.cat([nll_log_probs(log_probs(ex.forward(w, decisions=pattern_decisions([PROCESS, SKIP, SKIP, SKIP],
                                                                                         24)).logits[0, :-1]),
                                     w[0, 1:]) for w in windows])
    assert np.array_equal(p.nll[2], whole.double().numpy())
    # every k of an order whose passes resume from shorter skip sets ({1, 3} at 3, {1, 2, 3} at 2), bit for bit
    chained = skip_profiles(ex, windows, order=[1, 3, 2, 0], skips=[0, 1, 2, 3, 4])
    for i, k in enumerate(chained.skips):
        pattern = pattern_decisions([SKIP if j in [1, 3, 2, 0][:k] else PROCESS for j in range(4)], 24)
        logp = [log_probs(ex.forward(w, decisions=pattern).logits[0, :-1]) for w in windows]
        assert np.array_equal(chained.nll[i], torch.cat([nll_log_probs(lp, w[0, 1:])
                                                         for lp, w in zip(logp, windows)]).double().numpy())
        assert np.array_equal(chained.kl[i], torch.cat([KLReference(ex.forward(w).logits[0, :-1]).kl(lp)
                                                        for lp, w in zip(logp, windows)]).double().numpy())
    with_hidden = skip_profiles(ex, windows, order=[2, 1, 3, 0], skips=[0, 1], hidden_at=2)
    assert np.array_equal(with_hidden.nll, p.nll[:2]) and p.hidden is None
    inputs = torch.cat([ex.forward(w, collect_hidden=True).hidden_states[2][0, :-1] for w in windows])
    assert np.array_equal(with_hidden.hidden, inputs.numpy())
