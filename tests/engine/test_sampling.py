"""Sampling goes through transformers' own warpers and draws what HF `generate` draws for the same
seed at budget 1.0; its arguments are checked only when sampling, finite and in range."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import VOCAB, tiny_gpt2, tiny_llama, wrap
from hypothesis import given, settings
from hypothesis import strategies as st

from anee.engine.sampling import SamplingConfig


def hf_sample(model, prompt, new, seed, **sampling):
    torch.manual_seed(seed)  # HF samples with torch.multinomial on the global generator
    return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new, do_sample=True,
                          pad_token_id=1, eos_token_id=None, **sampling)


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    wrapper = wrap(tiny_gpt2())
    prompt = torch.tensor([[3, 5, 7, 11]])
    a = wrapper.generate_ids(prompt, 16, do_sample=True, seed=5)
    b = wrapper.generate_ids(prompt, 16, do_sample=True, seed=5)
    c = wrapper.generate_ids(prompt, 16, do_sample=True, seed=6)
    assert torch.equal(a.sequences, b.sequences)
    assert not torch.equal(a.sequences, c.sequences)
    greedy = wrapper.generate_ids(prompt, 16)
    top1 = wrapper.generate_ids(prompt, 16, do_sample=True, top_k=1, seed=9)
    assert torch.equal(greedy.sequences, top1.sequences)


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_llama])
def test_sampled_generation_equals_hf_token_by_token(make):
    model = make()
    wrapper = wrap(model)
    prompt = torch.randint(2, VOCAB, (3, 7), generator=torch.Generator().manual_seed(4))
    for seed, sampling in enumerate([{"temperature": 1.0, "top_k": 0, "top_p": 1.0},
                                     {"temperature": 0.7, "top_k": 20, "top_p": 0.9},
                                     {"temperature": 2.0, "top_k": 0, "top_p": 0.95}]):
        ours = wrapper.generate_ids(prompt, 40, energy_budget=1.0, do_sample=True, seed=seed, **sampling)
        assert torch.equal(ours.sequences, hf_sample(model, prompt, 40, seed, **sampling)), (seed, sampling)


def test_smollm2_sampled_generation_equals_hf(smollm2):
    model, tokenizer = smollm2
    wrapper = wrap(model)
    prompt = tokenizer("The best thing about a quiet morning is", return_tensors="pt").input_ids
    sampling = {"temperature": 0.8, "top_k": 40, "top_p": 0.95}
    ours = wrapper.generate_ids(prompt, 12, energy_budget=1.0, do_sample=True, seed=13, **sampling)
    assert torch.equal(ours.sequences, hf_sample(model, prompt, 12, 13, **sampling))


@given(temperature=st.floats(0.05, 5.0), top_k=st.integers(0, VOCAB + 5), top_p=st.floats(0.05, 1.0),
       seed=st.integers(0, 2**32), rows=st.integers(1, 3), length=st.integers(1, 8))
@settings(max_examples=12)
def test_sampling_equals_hf_for_any_arguments(temperature, top_k, top_p, seed, rows, length):
    """Property: at budget 1.0, any valid sampling arguments and seed give HF's tokens."""
    model = _gpt2()
    prompt = torch.randint(2, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))
    ours = wrap(model).generate_ids(prompt, 6, do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p,
                                    seed=seed)
    assert torch.equal(ours.sequences,
                       hf_sample(model, prompt, 6, seed, temperature=temperature, top_k=top_k, top_p=top_p))


_MODEL = {}


def _gpt2():
    """One tiny GPT-2 for the property tests (hypothesis calls the test many times)."""
    return _MODEL.setdefault("gpt2", tiny_gpt2())


def test_negative_top_k_is_refused():
    """top_k=-3 used to be taken as 'no top-k'."""
    with pytest.raises(ValueError, match=r"top_k must be an integer >= 0 \(0 turns top-k off\), got -3"):
        wrap(tiny_gpt2()).generate_ids(torch.tensor([[3, 4]]), 4, do_sample=True, top_k=-3)


def test_infinite_temperature_is_refused():
    """temperature=inf used to give uniform-random text."""
    with pytest.raises(ValueError, match=r"temperature must be a finite number > 0 "
                                         r"\(use do_sample=False for greedy decoding\), got inf"):
        wrap(tiny_gpt2()).generate_ids(torch.tensor([[3, 4]]), 4, do_sample=True, temperature=math.inf)


def test_nan_temperature_is_refused():
    """temperature=nan used to surface as multinomial's RuntimeError."""
    with pytest.raises(ValueError, match="temperature must be a finite number > 0.*got nan"):
        wrap(tiny_gpt2()).generate_ids(torch.tensor([[3, 4]]), 4, do_sample=True, temperature=math.nan)


def test_greedy_ignores_sampling_arguments():
    """do_sample=False with temperature=0 used to raise an error telling to use do_sample=False."""
    wrapper = wrap(tiny_gpt2())
    prompt = torch.tensor([[3, 5, 7]])
    greedy = wrapper.generate_ids(prompt, 8)
    for ignored in ({"temperature": 0}, {"temperature": math.nan, "top_k": -3, "top_p": 7.0}):
        assert torch.equal(wrapper.generate_ids(prompt, 8, do_sample=False, **ignored).sequences, greedy.sequences)


@pytest.mark.parametrize("args, error, match", [
    ({"top_p": 0.0}, ValueError, r"top_p must be a finite number in \(0, 1\]"),
    ({"top_p": 1.5}, ValueError, r"top_p must be a finite number in \(0, 1\]"),
    ({"temperature": -1.0}, ValueError, "temperature must be a finite number > 0"),
    ({"top_k": 2.5}, TypeError,
     "top_k must be an integer >= 0.*a Python int, a NumPy integer or a 0-d integer torch tensor"),
    ({"temperature": "hot"}, TypeError,
     "temperature must be .*a Python int or float, a NumPy scalar or a 0-d torch tensor"),
    ({"do_sample": 1}, TypeError, "do_sample must be True or False"),
])
def test_bad_sampling_arguments(args, error, match):
    with pytest.raises(error, match=match):
        SamplingConfig(**{"do_sample": True, **args})


def test_sampling_arguments_accept_any_real_scalar():
    plain = SamplingConfig(True, 0.5, 7, 0.75)
    for make in (np.float32, np.float64, torch.tensor):
        assert SamplingConfig(True, make(0.5), np.int16(7), make(0.75)) == plain
    assert SamplingConfig(True, 0.5, torch.tensor(7), np.float16(0.75)) == plain


def test_overflowing_temperature_is_a_value_error():
    """A temperature so small that the scaled scores overflow float32 is refused with the fix, not
    with multinomial's RuntimeError."""
    with pytest.raises(ValueError, match="raise temperature or use do_sample=False"):
        wrap(tiny_gpt2()).generate_ids(torch.tensor([[3, 4]]), 4, do_sample=True, temperature=1e-300)
