"""Shared fixtures: tiny random GPT-2 / LLaMA models (fast, exact), the embedded SmolLM2, and the
settings of the property-based tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from _anee_tiny import llama
from hypothesis import HealthCheck, settings
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

from anee import ANEEConfig, ANEEWrapper

VOCAB = 97

# Property-based tests (hypothesis): few examples, as most run a model; no deadline, as a shared 2-core
# runner is slow by moments; no example database written into the repository.
settings.register_profile("anee", max_examples=15, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile("anee")


def load_tool(name: str):
    """A fresh module of tools/<name>.py (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    """Unit tests run single-threaded, in one place: their ops are tiny, and on a shared 2-core
    runner more threads only contend (the suite is ~7x slower with 2 threads under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_gpt2(n_layer: int = 4, n_positions: int = 96) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=n_layer, n_embd=48, n_head=4, vocab_size=VOCAB, n_positions=n_positions,
                     bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return GPT2LMHeadModel(cfg).eval()


def tiny_llama(n_layer: int = 4, max_positions: int = 96) -> LlamaForCausalLM:
    """Exactness / executor tests: GQA (6 query heads, 2 K/V heads), sharpened attention."""
    return llama(n_layer, 48, 6, 2, 80, vocab=VOCAB, positions=max_positions, qk_scale=8.0,
                 bos_token_id=0, eos_token_id=1, pad_token_id=1)


FAMILIES = {"gpt2": tiny_gpt2, "llama": tiny_llama}


@pytest.fixture(params=sorted(FAMILIES))
def tiny_model(request):
    return FAMILIES[request.param]()


def wrap(model, **config) -> ANEEWrapper:
    config.setdefault("min_layers", 0)
    config.setdefault("controller", "budget")  # the seed policy these tests exercise (the tiny models have no defaults)
    return ANEEWrapper(ANEEConfig(model_name="tiny", **config), model=model)


@pytest.fixture(scope="session")
def smollm2():
    from anee import load_model

    return load_model("smollm2-135m")
