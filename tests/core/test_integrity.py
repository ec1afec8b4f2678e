"""The integrity record of a converted folder: every file's size and sha256 and the parameter count,
hashed once per process per file state; non-finite weights are counted exactly."""

from __future__ import annotations

import json

import pytest
import torch

import anee.core.integrity as integrity


def folder_with_files(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x01" * 4096)
    (tmp_path / "config.json").write_text('{"a": 1}')
    return tmp_path


def test_record_covers_every_file_and_verifies(tmp_path):
    folder = folder_with_files(tmp_path)
    integrity.write_record(folder, 123)
    record = integrity.read_record(folder, "fix")
    assert sorted(record["files"]) == ["config.json", "model.safetensors"] and record["parameters"] == 123
    assert record["files"]["model.safetensors"]["bytes"] == 4096
    integrity.verify_files(folder, record, "fix")
    assert not (folder / f".{integrity.RECORD}.partial").exists()


def test_hashes_once_per_process_per_file_state(tmp_path, monkeypatch):
    folder = folder_with_files(tmp_path)
    integrity.write_record(folder, 1)
    record = integrity.read_record(folder, "fix")
    integrity._VERIFIED.clear()
    calls = []
    real = integrity._sha256
    monkeypatch.setattr(integrity, "_sha256", lambda path: calls.append(path.name) or real(path))
    for _ in range(3):
        integrity.verify_files(folder, record, "fix")
    assert sorted(calls) == ["config.json", "model.safetensors"]


def test_changed_missing_or_extra_files_are_refused(tmp_path):
    folder = folder_with_files(tmp_path)
    integrity.write_record(folder, 1)
    record = integrity.read_record(folder, "fix")
    (folder / "config.json").write_text('{"a": 2}')  # same size, other content
    with pytest.raises(integrity.IntegrityError,
                       match="config.json does not match the sha256 recorded at conversion.*; fix$"):
        integrity.verify_files(folder, record, "fix")
    (folder / "extra.txt").write_text("x")
    assert not integrity.files_complete(folder, record)
    with pytest.raises(ValueError, match=r"the files \['config.json', 'extra.txt', 'model.safetensors'\] "
                                         r"are not the ones recorded"):
        integrity.verify_files(folder, record, "fix")


@pytest.mark.parametrize("text", ["{", "[]", '{"format": "other", "parameters": 1, "files": {}}',
                                  '{"format": "anee.weights-integrity/1", "parameters": true, "files": {}}',
                                  '{"format": "anee.weights-integrity/1", "parameters": 1, "files": '
                                  '{"a": {"bytes": "1", "sha256": "x"}}}'])
def test_invalid_record_is_refused(tmp_path, text):
    (tmp_path / integrity.RECORD).write_text(text)
    with pytest.raises(integrity.IntegrityError, match="is not a valid integrity record.*; fix$"):
        integrity.read_record(tmp_path, "fix")
    (tmp_path / integrity.RECORD).unlink()
    assert integrity.read_record(tmp_path, "fix") is None  # no record: a cache from before records


def test_check_weights_counts_non_finite_values_exactly():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    integrity.check_weights(model, "m", "fix", parameters=30)
    with pytest.raises(integrity.IntegrityError,
                       match="m: the model has 30 parameters, 31 were recorded at conversion; fix"):
        integrity.check_weights(model, "m", "fix", parameters=31)
    with torch.no_grad():
        model[0].weight.fill_(3e38)  # finite values whose sum overflows: not corrupt
    integrity.check_weights(model, "m", "fix")
    with torch.no_grad():
        model[1].bias[1] = float("inf")
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(integrity.IntegrityError,
                       match=r"m: 2 non-finite weights in 2 tensors \(first: 0.weight\); the weights are corrupt; fix"):
        integrity.check_weights(model, "m", "fix")


def test_record_is_plain_json(tmp_path):
    folder = folder_with_files(tmp_path)
    integrity.write_record(folder, 5)
    assert json.loads((folder / integrity.RECORD).read_text())["format"] == integrity.FORMAT
