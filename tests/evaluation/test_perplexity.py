"""The perplexity harness equals HF's loss over the same windows."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import VOCAB, tiny_gpt2, tiny_llama

from anee import AdaptiveExecutor, adapter_for
from anee.evaluation.context import EvalContext
from anee.evaluation.methods import METHODS
from anee.evaluation.perplexity import evaluate, windows


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
    from anee.core.data import wikitext_tokens

    model, tokenizer = smollm2
    ids = wikitext_tokens(tokenizer, "test", 400)
    ctx = EvalContext(model, tokenizer, AdaptiveExecutor(adapter_for(model)))
    ours = evaluate(METHODS["full"](ctx), ids, window=256, stride=128)
    ref, _ = hf_sliding_ppl(model, ids, 256, 128)
    assert abs(ours.ppl / ref - 1) <= 1e-3
    assert 5 < ours.ppl < 200
