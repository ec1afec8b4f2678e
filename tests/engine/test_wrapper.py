"""The wrapper at budget 1.0 (all PROCESS) reproduces the HF model: one pass, 32 cached decode steps,
greedy text, left-padded batches; empty and over-long prompts are refused."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, tiny_gpt2, tiny_llama, wrap

TOL = 1e-4


def _decode_logits(wrapper, ids, steps):
    """Logits of teacher-forced incremental decoding: prompt chunk, then one token at a time."""
    out = wrapper.executor.forward(ids[:, :-steps])
    logits, cache = [out.logits], out.cache
    for t in range(ids.shape[1] - steps, ids.shape[1]):
        step = wrapper.executor.forward(ids[:, t : t + 1], cache=cache)
        logits.append(step.logits)
    return torch.cat(logits, 1)


def _check_model(model, ids):
    wrapper = wrap(model)
    with torch.no_grad():
        ref = model(ids).logits
    assert (wrapper(ids).logits - ref).abs().max() <= TOL
    assert (_decode_logits(wrapper, ids, 32) - ref).abs().max() <= TOL
    prompt = ids[:, :6]
    # explicit mask: without one HF masks generated tokens that equal the pad id
    hf = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=32, do_sample=False,
                        pad_token_id=model.config.eos_token_id, eos_token_id=None)
    ours = wrapper.generate_ids(prompt, 32)
    assert torch.equal(ours.sequences, hf)
    assert (ours.trace.layers_executed == model.config.num_hidden_layers).all()


def test_tiny_gpt2_matches_hf():
    g = torch.Generator().manual_seed(1)
    _check_model(tiny_gpt2(), torch.randint(0, VOCAB, (2, 40), generator=g))


def test_tiny_llama_matches_hf():
    g = torch.Generator().manual_seed(2)
    _check_model(tiny_llama(), torch.randint(0, VOCAB, (2, 40), generator=g))


def test_smollm2_matches_hf(smollm2):
    model, tokenizer = smollm2
    text = ("Adaptive computation lets a language model spend less work on easy tokens and more on hard ones. "
            "The cache must stay aligned when a layer is skipped, or later tokens attend to missing keys and values.")
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert ids.shape[1] >= 40
    _check_model(model, ids)


def test_left_padded_batch_matches_rows_generated_alone():
    model = tiny_llama()
    wrapper = wrap(model)
    g = torch.Generator().manual_seed(3)
    long, short = torch.randint(2, VOCAB, (1, 9), generator=g), torch.randint(2, VOCAB, (1, 5), generator=g)
    batch = torch.cat([long, torch.cat([torch.ones(1, 4, dtype=torch.long), short], 1)])
    mask = torch.tensor([[1] * 9, [0] * 4 + [1] * 5], dtype=torch.bool)
    both = wrapper.generate_ids(batch, 12, padding_mask=mask)
    hf = model.generate(batch, attention_mask=mask.long(), max_new_tokens=12, do_sample=False,
                        pad_token_id=1, eos_token_id=None)
    assert torch.equal(both.sequences, hf)
    alone = wrapper.generate_ids(short, 12)
    assert torch.equal(both.new_tokens[1], alone.new_tokens[0])


def test_empty_prompt():
    wrapper = wrap(tiny_gpt2())
    with pytest.raises(ValueError, match="empty prompt"):
        wrapper.generate_ids(torch.zeros(1, 0, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="empty"):
        wrapper.executor.forward(torch.zeros(1, 0, dtype=torch.long))


def test_empty_text_prompt(smollm2):
    model, tokenizer = smollm2
    wrapper = wrap(model)
    for prompt in ["", "   ", []]:
        with pytest.raises(ValueError, match="empty prompt"):
            wrapper.generate(tokenizer=tokenizer, prompt=prompt, max_new_tokens=2)


def test_prompt_longer_than_context():
    wrapper = wrap(tiny_llama(max_positions=32))
    with pytest.raises(ValueError, match="context"):
        wrapper.generate_ids(torch.ones(1, 40, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="context"):
        wrapper.generate_ids(torch.ones(1, 30, dtype=torch.long), 5)  # prompt fits, generation would not
    with pytest.raises(ValueError, match="context"):
        wrapper(torch.ones(1, 33, dtype=torch.long))
