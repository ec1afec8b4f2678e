"""The wrapper at budget 1.0 (all PROCESS) reproduces the HF model: one pass, 32 cached decode steps,
greedy text, left-padded batches; every argument is checked before any model work (prompts as any
sequence of str, numbers as any real scalar); a budget below min_layers warns; threads sharing one
wrapper and one controller get the serial results."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from _anee_tiny import tiny_setup, tiny_tokenizer
from conftest import VOCAB, tiny_gpt2, tiny_llama, wrap
from hypothesis import given, settings
from hypothesis import strategies as st

from anee import ANEEConfig, ANEEWrapper
from anee.core.actions import PROCESS
from anee.engine.controllers.entropy_exit import EntropyExitController
from anee.engine.controllers.heuristic import HeuristicController
from anee.engine.controllers.learned import load_controller
from anee.engine.controllers.pacing import PacingConfig
from anee.engine.controllers.plan import PlanConfig
from anee.engine.controllers.policy import PolicyNet, save_policy
from anee.engine.profiler import FEATURES

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


# -- prompts: any sequence of str, checked before tokenizing ------------------------------------------
def text_wrapper():
    """A tiny LLaMA with the word-level tiny tokenizer (words w3 .. w96)."""
    return wrap(tiny_llama(), min_layers=0), tiny_tokenizer()


def test_tuple_and_generator_prompts_return_a_list():
    """A tuple (or generator) of prompts used to return the first prompt's text only."""
    wrapper, tok = text_wrapper()
    prompts = ["w3 w4 w5", "w7 w8"]
    as_list = wrapper.generate(tok, prompts, max_new_tokens=4)
    assert isinstance(as_list, list) and len(as_list) == 2
    assert wrapper.generate(tok, tuple(prompts), max_new_tokens=4) == as_list
    assert wrapper.generate(tok, (p for p in prompts), max_new_tokens=4) == as_list
    single = wrapper.generate(tok, "w3 w4 w5", max_new_tokens=4)
    assert isinstance(single, str) and single == as_list[0]
    assert wrapper.generate(tok, ["w3 w4 w5"], max_new_tokens=4) == [single]


def test_bytes_prompt_names_the_fix():
    """b"hello" used to raise AttributeError."""
    wrapper, tok = text_wrapper()
    with pytest.raises(TypeError, match=r"prompt is bytes: decode it to text first, e.g. prompt.decode\('utf-8'\)"):
        wrapper.generate(tok, b"hello")
    with pytest.raises(TypeError, match=r"prompt\[1\] is bytes"):
        wrapper.generate(tok, ["w3", b"w4"])


def test_non_str_prompts_name_the_item():
    wrapper, tok = text_wrapper()
    with pytest.raises(TypeError, match=r"prompt\[1\] must be a str, got int 5"):
        wrapper.generate(tok, ["w3", 5])
    with pytest.raises(TypeError, match="prompt must be a str or a sequence of str"):
        wrapper.generate(tok, 42)
    with pytest.raises(TypeError, match="pass it to generate_ids"):
        wrapper.generate(tok, torch.tensor([[3, 4]]))


def test_lone_surrogate_names_the_fix():
    """A lone surrogate used to surface as the tokenizer's TypeError."""
    wrapper, tok = text_wrapper()
    with pytest.raises(ValueError, match=r"prompt holds a lone surrogate '\\ud800' at character 3.*errors='replace'"):
        wrapper.generate(tok, "w3 \ud800")


def test_blank_prompt_in_a_batch_is_named():
    wrapper, tok = text_wrapper()
    with pytest.raises(ValueError, match=r"empty prompt: prompt\[1\] is blank"):
        wrapper.generate(tok, ("w3", " \n"))
    with pytest.raises(ValueError, match="empty prompt"):
        wrapper.generate(tok, iter([]))


# -- numbers: any real scalar, checked before any model work --------------------------------------------
def test_fractional_max_new_tokens_is_refused_before_any_model_work(monkeypatch):
    """max_new_tokens=2.5 used to raise torch's TypeError, after the prompt pass."""
    wrapper = wrap(tiny_gpt2())
    monkeypatch.setattr(wrapper.executor, "forward", lambda *a, **k: pytest.fail("the model ran"))
    with pytest.raises(TypeError, match="max_new_tokens must be an integer >= 0: a Python int, a NumPy integer "
                                        "or a 0-d integer torch tensor; got float 2.5"):
        wrapper.generate_ids(torch.tensor([[3, 4]]), 2.5)
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 0, got -1"):
        wrapper.generate_ids(torch.tensor([[3, 4]]), -1)


def test_numbers_accept_any_real_scalar():
    wrapper = wrap(tiny_gpt2())
    prompt = torch.tensor([[3, 4, 5]])
    plain = wrapper.generate_ids(prompt, 5, energy_budget=0.5, do_sample=True, temperature=0.5, top_k=9, top_p=0.75,
                                 seed=3)
    for scalar in (np.float32, np.float64, np.float16, torch.tensor):
        alike = wrapper.generate_ids(prompt, np.int32(5), energy_budget=scalar(0.5), do_sample=True,
                                     temperature=scalar(0.5),
                                     top_k=torch.tensor(9), top_p=scalar(0.75), seed=np.uint8(3))
        assert (torch.equal(alike.sequences, plain.sequences)
                and torch.equal(alike.trace.decisions, plain.trace.decisions))


@pytest.mark.parametrize("name, value", [("max_new_tokens", "4"), ("max_new_tokens", True), ("energy_budget", [0.5]),
                                         ("energy_budget", torch.tensor([0.5, 0.5])), ("energy_budget", 0.5j),
                                         ("seed", 1.0),
                                         ("eos_token_id", "eos")])
def test_other_types_are_refused_listing_the_accepted_ones(name, value):
    wrapper = wrap(tiny_gpt2())
    with pytest.raises(TypeError, match=f"{name} must be .*: a Python int"):
        wrapper.generate_ids(torch.tensor([[3, 4]]), **{"max_new_tokens": 2, name: value})


def test_bad_input_ids_are_refused():
    wrapper = wrap(tiny_gpt2())
    with pytest.raises(TypeError, match=r"input_ids must be an integer tensor \[batch, tokens\]"):
        wrapper.generate_ids([[3, 4]], 2)
    with pytest.raises(TypeError, match="input_ids must be an integer tensor"):
        wrapper.generate_ids(torch.tensor([[3.0, 4.0]]), 2)
    with pytest.raises(ValueError, match=rf"token ids in \[0, {VOCAB}\)"):
        wrapper.generate_ids(torch.tensor([[3, VOCAB]]), 2)


def test_right_padding_is_refused():
    """Generation continues from each row's last position, so a pad there would be silently continued."""
    with pytest.raises(ValueError, match="padding_mask must pad on the left"):
        wrap(tiny_gpt2()).generate_ids(torch.tensor([[3, 4, 5]]), 2, padding_mask=torch.tensor([[True, True, False]]))


def test_wrong_objects_are_named():
    with pytest.raises(TypeError, match="model must be a HF causal LM"):
        ANEEWrapper(ANEEConfig(model_name="tiny"), model="gpt2")
    with pytest.raises(TypeError, match="config must be an ANEEConfig"):
        ANEEWrapper({"model_name": "tiny"}, model=tiny_gpt2())
    with pytest.raises(TypeError, match="tokenizer must be a HF tokenizer"):
        wrap(tiny_gpt2()).generate("gpt2", "w3")
    with pytest.raises(TypeError, match="controller must have a decide"):
        wrap(tiny_gpt2()).generate_ids(torch.tensor([[3, 4]]), 2, controller="budget")
    with pytest.raises(TypeError, match="input_ids must be an integer tensor"):
        wrap(tiny_gpt2())(torch.tensor([[3.0, 4.0]]))  # the teacher-forced pass too


def test_min_layers_above_budget_warns_with_the_realized_fraction():
    """min_layers=30 at budget 0.3 used to run every layer without a word."""
    wrapper = wrap(tiny_llama(n_layer=4), min_layers=4)
    with pytest.warns(UserWarning, match=r"energy_budget=0.3 is below min_layers=4 of 4 layers \(1.000 of full layer "
                                         r"compute\), and those layers always run: realized layer fraction 1.000"):
        result = wrapper.generate_ids(torch.tensor([[3, 4, 5]]), 3, energy_budget=0.3)
    assert result.cost.layer_fraction == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wrap(tiny_llama(n_layer=4), min_layers=1).generate_ids(torch.tensor([[3, 4, 5]]), 3, energy_budget=0.3)


def test_min_layers_warning_quotes_the_governed_tokens_fraction():
    """With the prompt at full depth the warning quotes the generated tokens' fraction, and says
    nothing when no token was under the budget (one new token: it used to quote the prompt's)."""
    wrapper = wrap(tiny_llama(n_layer=4), min_layers=3)
    prompt = torch.tensor([[3, 4, 5, 6, 7, 8]])
    with pytest.warns(UserWarning) as caught:
        out = wrapper.generate_ids(prompt, 6, energy_budget=0.5, prefill="full")
    assert out.decode_cost.layer_fraction < out.cost.layer_fraction
    assert f"realized layer fraction {out.decode_cost.layer_fraction:.3f}." in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wrapper.generate_ids(prompt, 1, energy_budget=0.5, prefill="full")


def test_full_prefill_runs_the_prompt_at_full_depth_and_the_budget_governs_decoding():
    """prefill="full" (argument or config): every prompt position PROCESSES every layer, so the first new
    token is the full model's; `decode_cost` is the cost of the fed-back tokens alone. prefill="adaptive"
    (the default) runs the prompt under the controller too, as the seed did."""
    model = tiny_llama(n_layer=6)
    prompt = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(4))
    P, new = prompt.shape[1], 8
    full = wrap(model, controller="full").generate_ids(prompt, new)
    wrapper = wrap(model)
    out = wrapper.generate_ids(prompt, new, energy_budget=0.5, prefill="full")
    assert (out.trace.decisions[:, :P] == PROCESS).all() and (out.trace.decisions[:, P:] != PROCESS).any()
    assert torch.equal(out.new_tokens[:, 0], full.new_tokens[:, 0])
    decoded = torch.zeros(2, P + new - 1, dtype=torch.bool)
    decoded[:, P:] = True
    assert torch.equal(out.decode_cost.layer_macs, out.trace.cost(wrapper.cost_model, decoded).layer_macs)
    assert out.decode_cost.layer_fraction < out.cost.layer_fraction < 1.0
    by_config = wrap(model, prefill="full").generate_ids(prompt, new, energy_budget=0.5)
    assert (torch.equal(by_config.trace.decisions, out.trace.decisions)
            and torch.equal(by_config.sequences, out.sequences))
    adaptive = wrapper.generate_ids(prompt, new, energy_budget=0.5, prefill="adaptive")
    assert (adaptive.trace.decisions[:, :P] != PROCESS).any()
    # the default
    assert torch.equal(wrapper.generate_ids(prompt, new, energy_budget=0.5).trace.decisions, out.trace.decisions)
    assert torch.equal(wrap(model, prefill="adaptive").generate_ids(prompt, new, energy_budget=0.5).trace.decisions,
                       adaptive.trace.decisions)
    assert torch.equal(out.governed(), decoded) and out.budget_cost is out.decode_cost and out.prefill == "full"
    assert adaptive.governed().all() and adaptive.budget_cost is adaptive.cost and adaptive.prefill == "adaptive"
    one = wrapper.generate_ids(prompt, 1, prefill="full")
    assert one.decode_cost is None and one.budget_cost is None and not one.governed().any()  # one token: no decode step
    with pytest.raises(ValueError, match="prefill must be one of 'adaptive', 'full', got 'half'"):
        wrapper.generate_ids(prompt, 2, prefill="half")
    with pytest.raises(ValueError, match="prefill must be one of"):
        ANEEConfig(model_name="tiny", prefill=None)


def test_full_prefill_decodes_with_the_policys_full_prompt_offsets():
    """Under prefill="full" a learned controller reads its SKIP offsets for tokens after a full-depth
    prompt; under "adaptive" that table changes nothing."""
    from anee.engine.controllers.learned import LearnedController

    model, _, prof, ids = tiny_setup(layers=6)
    torch.manual_seed(0)
    policy = PolicyNet(len(FEATURES))
    controller = LearnedController(policy, prof, pacing=PacingConfig(0.3), plan=PlanConfig(marginal=3))
    wrapper = ANEEWrapper(ANEEConfig(model_name="tiny", min_layers=0), model=model, controller=controller)
    prompt, P = ids[:, :10], 10
    adaptive = wrapper.generate_ids(prompt, 8, energy_budget=0.6, prefill="adaptive")
    runs = {}
    for offset in (-50.0, 50.0):  # PROCESS / SKIP at every free decision after the prompt
        policy.set_skip_offsets(torch.tensor([0.6]), torch.tensor([offset]), after_full_prompt=True)
        runs[offset] = wrapper.generate_ids(prompt, 8, energy_budget=0.6, prefill="full")
        assert torch.equal(wrapper.generate_ids(prompt, 8, energy_budget=0.6, prefill="adaptive").trace.decisions,
                           adaptive.trace.decisions)
    processing, skipping = (runs[o].decode_cost.layer_fraction for o in (-50.0, 50.0))
    assert skipping < processing  # the table moved the generated tokens' compute (inside the band)
    explicit = wrapper.generate_ids(prompt, 8, energy_budget=0.6, prefill="full",
                                    controller=controller.for_full_prompt())
    assert torch.equal(explicit.trace.decisions, runs[50.0].trace.decisions)
    assert (runs[50.0].trace.decisions[:, :P] == PROCESS).all()


# -- one wrapper and one controller shared by threads ---------------------------------------------------
@pytest.fixture(scope="module")
def shared_controllers(tmp_path_factory):
    """A planned policy through `load_controller` (the case that used to crash), a heuristic and the
    entropy-exit controller, on one tiny LLaMA."""
    model, ex, prof, _ = tiny_setup(layers=6)
    torch.manual_seed(0)
    path = save_policy(tmp_path_factory.mktemp("policy") / "p.safetensors", PolicyNet(len(FEATURES)), "rl", 6,
                       plan=PlanConfig(marginal=3), pacing=PacingConfig(0.2))
    return model, {"learned": load_controller(path, prof), "heuristic": HeuristicController(prof),
                   "entropy": EntropyExitController([2, 4], threshold=4.6)}


@pytest.mark.parametrize("name", ["learned", "heuristic", "entropy"])
def test_threads_sharing_a_wrapper_and_a_controller_get_the_serial_results(shared_controllers, name):
    """A controller shared by threads calling generate at once used to raise a shape RuntimeError
    from per-call state it kept on itself."""
    model, controllers = shared_controllers
    wrapper = ANEEWrapper(ANEEConfig(model_name="tiny", min_layers=1), model=model, controller=controllers[name])
    calls = [(torch.randint(3, 120, (b, t), generator=torch.Generator().manual_seed(10 * b + t)), budget)
             for b, t, budget in [(1, 5, 0.5), (2, 9, 0.7), (3, 3, 0.6), (1, 12, 0.9), (2, 4, 0.55), (3, 7, 0.8)]]
    run = lambda call: wrapper.generate_ids(call[0], 6, energy_budget=call[1])  # noqa: E731
    serial = [run(c) for c in calls]
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        for _ in range(2):
            for alone, together in zip(serial, pool.map(run, calls)):
                assert torch.equal(alone.sequences, together.sequences)
                assert torch.equal(alone.trace.decisions, together.trace.decisions)
                assert torch.equal(alone.trace.overhead_macs, together.trace.overhead_macs)


# -- properties over the public API ---------------------------------------------------------------------
ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.complex_numbers(),
    st.text(max_size=3), st.binary(max_size=3), st.lists(st.integers(0, 5), max_size=2),
    st.floats(-2, 2).map(np.float32), st.integers(-3, 200).map(np.int16), st.floats(-2, 2).map(torch.tensor),
    st.integers(-3, 200).map(torch.tensor), st.lists(st.floats(0, 1), min_size=2, max_size=2).map(torch.tensor),
    st.sampled_from(["adaptive", "full"]))
ARGUMENTS = ["max_new_tokens", "energy_budget", "do_sample", "temperature", "top_k", "top_p", "seed", "eos_token_id",
             "prefill"]
_SHARED = {}


def _shared_wrapper():
    """One tiny GPT-2 wrapper (min_layers 1) for the property tests, which call the test many times."""
    return _SHARED.setdefault("wrapper", wrap(tiny_gpt2(), min_layers=1))


@given(values=st.dictionaries(st.sampled_from(ARGUMENTS), ANY_VALUE, min_size=1, max_size=3), sample=st.booleans())
@settings(max_examples=40)
def test_any_argument_values_generate_or_are_refused_with_a_message(values, sample):
    """Property: generate_ids either runs or raises ValueError / TypeError with a message, whatever the
    values (of any type) of its numeric and sampling arguments."""
    kwargs = {"max_new_tokens": 3, "do_sample": sample, **values}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a budget below min_layers warns
            result = _shared_wrapper().generate_ids(torch.tensor([[3, 4, 5]]), **kwargs)
    except (ValueError, TypeError) as err:
        assert len(str(err)) > 20
    else:
        assert result.new_tokens.shape[1] <= int(kwargs["max_new_tokens"]) and (result.new_tokens < VOCAB).all()


PROMPT_LIKE = st.one_of(
    st.text(max_size=12), st.binary(max_size=6), st.integers(), st.none(),
    st.lists(st.one_of(st.text(max_size=8), st.integers(), st.binary(max_size=3)), max_size=3),
    st.lists(st.text(alphabet=" w3456789", min_size=1, max_size=12), min_size=1, max_size=3).map(tuple),
    st.lists(st.text(alphabet=" w3456789", min_size=1, max_size=12), min_size=1, max_size=3).map(iter))


@given(prompt=PROMPT_LIKE)
@settings(max_examples=40)
def test_any_prompt_generates_or_is_refused_with_a_message(prompt):
    """Property: a str gives a str, any other sequence of str a list of as many texts; anything else
    is a ValueError / TypeError with a message."""
    wrapper, tok = _SHARED.setdefault("text", text_wrapper())
    single = isinstance(prompt, str)
    try:
        out = wrapper.generate(tok, prompt, max_new_tokens=2)
    except (ValueError, TypeError) as err:
        assert len(str(err)) > 20
    else:
        assert isinstance(out, str) if single else isinstance(out, list) and all(isinstance(t, str) for t in out)


@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=3), seed=st.integers(0, 2**16))
@settings(max_examples=10)
def test_budget_one_equals_hf_for_any_batch(lengths, seed):
    """Property: at budget 1.0 any left-padded batch generates HF's greedy tokens."""
    model = _SHARED.setdefault("llama", tiny_llama())
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.stack([torch.cat([torch.ones(width - n, dtype=torch.long), torch.randint(2, VOCAB, (n,), generator=g)])
                       for n in lengths])
    mask = torch.tensor([[i >= width - n for i in range(width)] for n in lengths])
    ours = wrap(model).generate_ids(ids, 8, energy_budget=1.0, padding_mask=mask)
    hf = model.generate(ids, attention_mask=mask.long(), max_new_tokens=8, do_sample=False, pad_token_id=1,
                        eos_token_id=None)
    assert torch.equal(ours.sequences, hf)
