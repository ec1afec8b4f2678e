"""Tiny models and shared helpers of the tests: random LLaMA / GPT-2 builders, a word-level tokenizer,
a calibrated profiler for the controller / profiler / RL tests, the hierarchical tests' models, a
fake weight bank."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from anee import AdaptiveExecutor, adapter_for
from anee.engine.profiler import calibrate_profiler


def llama(layers: int, hidden: int, heads: int, kv_heads: int, ffn: int, vocab: int, positions: int,
          seed: int = 0, qk_scale: float = 1.0, **special_ids) -> LlamaForCausalLM:
    """The one tiny random LLaMA builder; `qk_scale` sharpens attention (random q/k weights are tiny,
    so attention would be nearly uniform and position bugs would go unnoticed)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=positions,
                      **special_ids)
    model = LlamaForCausalLM(cfg).eval()
    if qk_scale != 1.0:
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.weight.mul_(qk_scale)
                layer.self_attn.k_proj.weight.mul_(qk_scale)
    return model


def tiny_tokenizer(vocab: int = 97) -> PreTrainedTokenizerFast:
    """A word-level tokenizer made offline: "<s>" 0, "</s>" 1 (end and padding), "[UNK]" 2, and the
    words "w3" .. "w{vocab-1}"; any other word is [UNK]. For `generate` and `load_model` tests."""
    words = ["<s>", "</s>", "[UNK]"] + [f"w{i}" for i in range(3, vocab)]
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", bos_token="<s>", eos_token="</s>",
                                   pad_token="</s>")


def tiny_llama(layers: int = 6, seed: int = 0) -> LlamaForCausalLM:
    """Controller / profiler / RL tests: vocab 128 (the profiler's shortlist needs room), context 256."""
    return llama(layers, 32, 4, 2, 64, vocab=128, positions=256, seed=seed)


def quant_llama(seed: int = 0, layers: int = 4) -> LlamaForCausalLM:
    """Quantisation / precision / BranchyNet / granularity tests: vocab 97, context 64."""
    return llama(layers, 32, 4, 2, 48, vocab=97, positions=64, seed=seed)


def tiny_setup(layers: int = 6, k: int = 16):
    model = tiny_llama(layers)
    ex = AdaptiveExecutor(adapter_for(model))
    ids = torch.randint(0, 128, (1, 256), generator=torch.Generator().manual_seed(1))
    prof = calibrate_profiler(ex, ids, k=k, window=64, max_windows=2)
    return model, ex, prof, ids


def controllers(prof):
    """A heuristic and an untrained learned controller on one profiler (the pacing / learned tests)."""
    from anee.engine.controllers.heuristic import HeuristicController
    from anee.engine.controllers.learned import LearnedController
    from anee.engine.controllers.policy import PolicyNet
    from anee.engine.profiler import FEATURES

    torch.manual_seed(0)
    return {"heuristic": HeuristicController(prof), "learned": LearnedController(PolicyNet(len(FEATURES)), prof)}


# -- the hierarchical model's tests (anee.hierarchical, its evaluation and its frontier method) -------
HIER_VOCAB = 97


def hier_llama(layers: int = 6, seed: int = 0) -> LlamaForCausalLM:
    """Hierarchical-model tests: hidden 64, vocab 97, context 256."""
    return llama(layers, 64, 4, 2, 112, vocab=HIER_VOCAB, positions=256, seed=seed)


def hier_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=HIER_VOCAB, n_embd=64, n_layer=4, n_head=4, n_positions=128)).eval()


def randomize(model, seed: int = 1):
    """Random routers, gates (some tokens exit) and lenses of a `HierarchicalModel`, so every code
    path is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.05 if p.shape[-1] == p.shape[0] else 1.0))
    return model


def token_ids(batch: int, T: int, seed: int, vocab: int = HIER_VOCAB) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, T), generator=torch.Generator().manual_seed(seed))


# -- fake weight bank of the granularity table / pool tests ----------------------------------------
FULL_BYTES = 1000.0
BANK = SimpleNamespace(full_bytes=FULL_BYTES)  # WindowScores.rel_bytes only reads full_bytes


# -- damaged files for the property tests of checkpoints and caches ----------------------------------
def damaged(raw: bytes, data, truncate: bool | None = None) -> bytes:
    """`raw` truncated, or with one to four distinct bits flipped, as drawn by hypothesis' `data`
    (always different from `raw`)."""
    from hypothesis import strategies as st

    if truncate if truncate is not None else data.draw(st.booleans(), "truncate"):
        return raw[: data.draw(st.integers(0, len(raw) - 1), "length")]
    out = bytearray(raw)
    for bit in data.draw(st.sets(st.integers(0, 8 * len(raw) - 1), min_size=1, max_size=4), "bits"):
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)

# -- a non-trivial bypass (random small weights) for the executor / layer-step / hierarchical tests --
def random_bypass(family: str, hidden: int, layers: int, rank: int = 0, target: str = "layer", seed: int = 0,
                  scale: float = 0.05):
    """A `BypassBank` whose every parameter is drawn at random (scale `scale`): its updates are small
    but far from zero, so a test sees whether they were applied."""
    from anee.core.bypass import BypassBank, BypassConfig

    bank = BypassBank(BypassConfig(family, rank, target), hidden, layers)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in bank.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return bank.eval()


def removal_setup():
    """A 4-layer tiny LLaMA (conftest's), its executor without and with a random linear bypass, the
    bank, and 3 windows of 16 tokens: what the removal-order and bypass-study tests score."""
    from conftest import VOCAB
    from conftest import tiny_llama as conftest_llama

    model = conftest_llama(n_layer=4)
    adapter = adapter_for(model)
    bank = random_bypass("linear", adapter.dims.hidden, 4, seed=5)
    windows = torch.randint(0, VOCAB, (3, 16), generator=torch.Generator().manual_seed(0))
    return model, AdaptiveExecutor(adapter), AdaptiveExecutor(adapter, bypass=bank), bank, windows
