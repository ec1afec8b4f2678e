"""The perplexity harness equals HF's loss over the same windows; baselines and surgery behave."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import VOCAB, tiny_gpt2, tiny_llama

import anee.methods  # noqa: F401  (registers the baselines)
from anee import AdaptiveExecutor, adapter_for
from anee.methods import block_influence, removal_order
from anee.perplexity import METHODS, EvalContext, evaluate, run_frontier, windows
from anee.surgery import removed_layers


def hf_sliding_ppl(model, ids, window, stride):
    """HF's documented recipe: labels of already-scored tokens set to -100, token-weighted mean."""
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, ids.shape[1] - 1, stride):
        end = min(begin + window, ids.shape[1])
        target_len = end - prev_end
        chunk = ids[:, begin:end]
        labels = chunk.clone()
        labels[:, :-target_len] = -100
        with torch.no_grad():
            loss = model(chunk, labels=labels).loss
        n = int((labels[:, 1:] != -100).sum())
        nll += float(loss) * n
        count += n
        prev_end = end
        if end == ids.shape[1]:
            break
    return math.exp(nll / count), count


def test_windows_score_every_token_once():
    for n, window, stride in [(100, 32, 16), (100, 32, 32), (33, 32, 7), (10, 64, 64)]:
        spans = windows(n, window, stride)
        scored = [b + i for b, e, f in spans for i in range(f, e - b)]
        assert scored == sorted(set(scored))  # each token at most once
        # only a window's first token can go unscored (HF's recipe: it has no context there)
        assert set(range(1, n)) - set(scored) <= {b for b, _, _ in spans}
        if stride < window:
            assert scored == list(range(1, n))
    with pytest.raises(ValueError):
        windows(10, 8, 9)


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_llama])
def test_full_model_ppl_equals_hf_loss(make):
    model = make()
    ids = torch.randint(0, VOCAB, (1, 150), generator=torch.Generator().manual_seed(0))
    ctx = EvalContext(model, None, AdaptiveExecutor(adapter_for(model)))
    ours = evaluate(METHODS["full"](ctx), ids, window=64, stride=24)
    ref, count = hf_sliding_ppl(model, ids, 64, 24)
    assert ours.tokens == count == 149
    assert abs(ours.ppl / ref - 1) <= 1e-3
    assert ours.layer_fraction == 1.0 and ours.total_saved_net == 0.0


def test_smollm2_ppl_equals_hf_loss(smollm2):
    from anee.data import wikitext_tokens

    model, tokenizer = smollm2
    ids = wikitext_tokens(tokenizer, "test", 400)
    ctx = EvalContext(model, tokenizer, AdaptiveExecutor(adapter_for(model)))
    ours = evaluate(METHODS["full"](ctx), ids, window=256, stride=128)
    ref, _ = hf_sliding_ppl(model, ids, 256, 128)
    assert abs(ours.ppl / ref - 1) <= 1e-3
    assert 5 < ours.ppl < 200


def test_removal_surgery_equals_skipping_and_restores_the_model():
    model = tiny_llama(n_layer=6)
    adapter = adapter_for(model)
    ids = torch.randint(0, VOCAB, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(ids).logits
        with removed_layers(adapter, [1, 4]):
            assert len(model.model.layers) == 4
            shallow = model(ids, use_cache=False).logits
        decisions = torch.zeros(1, 20, 6, dtype=torch.int8)
        decisions[..., [1, 4]] = 1
        skipped = AdaptiveExecutor(adapter).forward(ids, decisions=decisions).logits
        assert (shallow - skipped).abs().max() <= 1e-4
        assert len(model.model.layers) == 6 and model.config.num_hidden_layers == 6
        with pytest.raises(RuntimeError), removed_layers(adapter, [0]):
            raise RuntimeError("boom")
        assert torch.equal(model(ids).logits, before)
    with pytest.raises(ValueError):
        with removed_layers(adapter, [6]):
            pass


def test_baselines_cost_and_order():
    model = tiny_llama(n_layer=6)
    ids = torch.randint(0, VOCAB, (1, 200), generator=torch.Generator().manual_seed(2))
    ex = AdaptiveExecutor(adapter_for(model))
    influence = block_influence(ex, ids, window=64)
    assert influence.shape == (6,) and ((influence >= 0) & (influence <= 2)).all()
    order = removal_order(influence)
    assert influence[order[0]] == influence.min()
    ctx = EvalContext(model, None, ex, calibration_ids=ids, extras={"block_influence": influence})
    results = run_frontier(ctx, [("full", {}), ("block_influence", {"n_removed": 2}), ("logit_lens", {"depth": 3}),
                                 ("anee_budget", {"budget": 0.5})], ids[:, :120], window=64, stride=32)
    full, bi, lens, budget = results
    assert bi.layer_fraction == pytest.approx(4 / 6) and lens.layer_fraction == pytest.approx(3 / 6)
    assert budget.layer_fraction <= 0.5 + 1e-9
    assert full.ppl != bi.ppl


def test_ppl_at_saving_interpolates_and_hull_removes_bumps():
    import numpy as np
    import pandas as pd

    from anee.evaluation import lower_hull, ppl_at_saving

    # method a: a bump at 0.2 (above the chord from 0.1 to 0.3); method b: a straight line in log-ppl
    df = pd.DataFrame({"method": ["a"] * 4 + ["b"] * 2, "layer_saved_net": [0.0, 0.1, 0.2, 0.3, 0.0, 0.4],
                       "ppl": [10.0, 15.0, 60.0, 40.0, 10.0, 10.0 * 2**4]})
    exact = ppl_at_saving(df, [0.2, 0.35]).set_index(["method", "net_saved"]).ppl
    assert exact["a", 0.2] == pytest.approx(60.0) and math.isnan(exact["a", 0.35])
    assert exact["b", 0.2] == pytest.approx(40.0)  # 10 * 2 ** (0.2 / 0.1)
    hull = ppl_at_saving(df, [0.2], hull=True).set_index("method").ppl
    assert hull["a"] == pytest.approx(math.sqrt(15.0 * 40.0))  # time-sharing 0.1 and 0.3
    assert hull["b"] == pytest.approx(40.0)
    x, y = np.array([0.0, 0.1, 0.1, 0.2, 0.3]), np.log([10.0, 14.0, 12.0, 60.0, 40.0])
    assert lower_hull(x, y).tolist() == [0, 2, 4]  # of two points at one saving, the lower; the bump dropped
