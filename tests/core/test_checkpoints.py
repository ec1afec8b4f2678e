"""Safetensors checkpoints with their config in the header: exact round trips, atomic writes, a
checksum of the contents, and a ValueError naming the fix for every kind of bad file (truncated,
bit-flipped, type-confused)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from _anee_tiny import damaged
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

import anee.core.checkpoints as checkpoints
from anee.core.checkpoints import Checkpointable, check_tensors, load_checkpoint, save_checkpoint

FORMAT = "anee.test/1"
FIX = "re-run step 0 to rebuild it"
CONFIG = {"layers": 3, "name": "tiny", "nested": {"budgets": [0.5, 0.9]}, "plan": None}


def tensors() -> dict[str, torch.Tensor]:
    return {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "ids": torch.tensor([3, 1, 2]),
            "scale": torch.tensor([0.25], dtype=torch.float64)}


def raises_with_fix(pattern: str):
    """A ValueError matching `pattern` whose message ends with the fix."""
    return pytest.raises(ValueError, match=f"{pattern}.*; {re.escape(FIX)}$")


def test_round_trip_of_tensors_and_config(tmp_path):
    path = save_checkpoint(tmp_path / "sub" / "c.safetensors", tensors(), FORMAT, CONFIG)
    assert path == tmp_path / "sub" / "c.safetensors"  # the folder is created
    back, config = load_checkpoint(path, FORMAT, FIX)
    assert config == CONFIG
    assert set(back) == set(tensors())
    for key, t in tensors().items():
        assert back[key].dtype == t.dtype and torch.equal(back[key], t)
    with safe_open(str(path), "pt") as f:  # the header carries the two strings
        meta = f.metadata()
    assert meta["format"] == FORMAT and json.loads(meta["config"]) == CONFIG
    assert path.read_bytes()[8:9] == b"{"  # 8-byte header length, then JSON: no pickle


def test_saves_views_and_trainable_tensors(tmp_path):
    w = torch.arange(12.0).reshape(3, 4).requires_grad_()
    path = save_checkpoint(tmp_path / "v.safetensors", {"t": w.T, "g": w * 2}, FORMAT, {})
    back, config = load_checkpoint(path, FORMAT, FIX)
    assert torch.equal(back["t"], w.T.detach()) and torch.equal(back["g"], (w * 2).detach()) and config == {}


def test_write_is_atomic(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "c.safetensors", tensors(), FORMAT, CONFIG)
    save_checkpoint(path, {"w": torch.ones(1)}, FORMAT, {"v": 2})  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]  # no `.c.safetensors.partial`
    assert load_checkpoint(path, FORMAT, FIX)[1] == {"v": 2}

    def crash(tensors, filename, metadata=None):  # half a file, then the process dies
        with open(filename, "wb") as f:
            f.write(b"\x10\x00\x00")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, tensors(), FORMAT, CONFIG)
    back, config = load_checkpoint(path, FORMAT, FIX)  # the previous checkpoint is intact
    assert config == {"v": 2} and torch.equal(back["w"], torch.ones(1))


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x10\x00\x00")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "c.safetensors", tensors(), FORMAT, CONFIG)
    assert list(tmp_path.iterdir()) == []


def test_missing_file(tmp_path):
    with raises_with_fix(f"checkpoint {re.escape(str(tmp_path / 'none.safetensors'))} not found"):
        load_checkpoint(tmp_path / "none.safetensors", FORMAT, FIX)
    (tmp_path / "folder.safetensors").mkdir()  # not a file either
    with raises_with_fix("not found"):
        load_checkpoint(tmp_path / "folder.safetensors", FORMAT, FIX)


def test_path_of_another_type():
    with pytest.raises(TypeError, match="checkpoint path must be a str or a Path, got int 5"):
        load_checkpoint(5, FORMAT, FIX)


def test_truncated_or_garbled_file(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", tensors(), FORMAT, CONFIG)
    data = path.read_bytes()
    for i, bad in enumerate([data[:100], data[:-4], b"", b"\x00" * 64, b"not a safetensors file"]):
        (tmp_path / f"bad{i}.safetensors").write_bytes(bad)
        with raises_with_fix("is not a valid safetensors file"):
            load_checkpoint(tmp_path / f"bad{i}.safetensors", FORMAT, FIX)


def test_foreign_format(tmp_path):
    save_checkpoint(tmp_path / "other.safetensors", tensors(), "anee.other/1", CONFIG)
    with raises_with_fix("has format 'anee.other/1', expected 'anee.test/1'"):
        load_checkpoint(tmp_path / "other.safetensors", FORMAT, FIX)
    save_file(tensors(), str(tmp_path / "plain.safetensors"))  # a safetensors file without our header
    with raises_with_fix("has format None, expected 'anee.test/1'"):
        load_checkpoint(tmp_path / "plain.safetensors", FORMAT, FIX)


def test_config_must_be_a_json_object(tmp_path):
    save_file(tensors(), str(tmp_path / "j.safetensors"), metadata={"format": FORMAT, "config": "{'layers': 3"})
    with raises_with_fix("its config is not valid JSON"):
        load_checkpoint(tmp_path / "j.safetensors", FORMAT, FIX)
    save_file(tensors(), str(tmp_path / "none.safetensors"), metadata={"format": FORMAT})
    with raises_with_fix("its config is not valid JSON"):
        load_checkpoint(tmp_path / "none.safetensors", FORMAT, FIX)
    save_checkpoint(tmp_path / "list.safetensors", tensors(), FORMAT, [1, 2])
    with raises_with_fix("its config must be a JSON object, got list"):
        load_checkpoint(tmp_path / "list.safetensors", FORMAT, FIX)


def test_check_tensors_names_shapes_and_values():
    expected = tensors()
    check_tensors("c.safetensors", tensors(), expected, FIX)  # the same names and shapes pass
    with raises_with_fix(r"checkpoint c.safetensors: missing tensors \['scale'\], unexpected tensors \[\]"):
        check_tensors("c.safetensors", {k: v for k, v in tensors().items() if k != "scale"}, expected, FIX)
    with raises_with_fix(r"missing tensors \[\], unexpected tensors \['extra'\]"):
        check_tensors("c.safetensors", dict(tensors(), extra=torch.zeros(1)), expected, FIX)
    with raises_with_fix(r"missing tensors \['ids'\], unexpected tensors \['idx'\]"):
        t = tensors()
        t["idx"] = t.pop("ids")
        check_tensors("c.safetensors", t, expected, FIX)
    with raises_with_fix(r"tensor 'w' has shape \(3, 2\), expected \(2, 3\)"):
        check_tensors("c.safetensors", dict(tensors(), w=torch.zeros(3, 2)), expected, FIX)
    for bad in (float("nan"), float("inf"), float("-inf")):
        w = tensors()["w"]
        w[1, 2] = bad
        with raises_with_fix("tensor 'w' holds non-finite values"):
            check_tensors("c.safetensors", dict(tensors(), w=w), expected, FIX)


class Scaler(Checkpointable, torch.nn.Module):
    """A minimal checkpointable module: its config fixes the weight's shape."""

    FORMAT = "anee.scaler/1"
    FIX = "re-run the scaler cell"

    def __init__(self, size: int):
        super().__init__()
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        self.size = size
        self.weight = torch.nn.Parameter(torch.zeros(size))

    def checkpoint_config(self) -> dict:
        return {"size": self.size}

    @classmethod
    def from_config(cls, config: dict) -> Scaler:
        return cls(config["size"])


def test_checkpointable_round_trip_and_bad_files(tmp_path):
    s = Scaler(4)
    with torch.no_grad():
        s.weight.copy_(torch.tensor([1.0, -2.0, 3.5, 0.0]))
    path = s.save(tmp_path / "s.safetensors")
    back = Scaler.from_checkpoint(path)
    assert back.size == 4 and torch.equal(back.weight, s.weight) and back.checkpoint_path == path
    fix = re.escape(Scaler.FIX)
    for name, config, error in [("size", {"size": 0}, "size must be a positive integer, got 0"),
                                ("type", {"size": "4"}, "size must be a positive integer, got '4'"),
                                ("key", {"width": 4}, "missing key 'size'")]:
        save_checkpoint(tmp_path / f"{name}.safetensors", {"weight": torch.zeros(4)}, Scaler.FORMAT, config)
        with pytest.raises(ValueError, match=f"its config does not describe a valid Scaler \\({error}\\); {fix}$"):
            Scaler.from_checkpoint(tmp_path / f"{name}.safetensors")
    save_checkpoint(tmp_path / "shape.safetensors", {"weight": torch.zeros(5)}, Scaler.FORMAT, {"size": 4})
    with pytest.raises(ValueError, match=rf"tensor 'weight' has shape \(5,\), expected \(4,\); {fix}$"):
        Scaler.from_checkpoint(tmp_path / "shape.safetensors")
    save_checkpoint(tmp_path / "nan.safetensors", {"weight": torch.full((4,), float("nan"))}, Scaler.FORMAT,
                    {"size": 4})
    with pytest.raises(ValueError, match=f"non-finite values; {fix}$"):
        Scaler.from_checkpoint(tmp_path / "nan.safetensors")
    with pytest.raises(ValueError, match=f"has format 'anee.test/1', expected 'anee.scaler/1'; {fix}$"):
        Scaler.from_checkpoint(save_checkpoint(tmp_path / "t.safetensors", tensors(), FORMAT, CONFIG))


def test_flipped_bit_that_leaves_a_finite_value_is_caught(tmp_path):
    """The header's sha256 catches damage no other check can: here the last tensor byte changes a finite value."""
    path = save_checkpoint(tmp_path / "c.safetensors", tensors(), FORMAT, CONFIG)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with raises_with_fix("its contents do not match the sha256 in its header"):
        load_checkpoint(path, FORMAT, FIX)


def test_damaged_header_key_is_caught(tmp_path):
    """A flip in the key "sha256" must not turn the file into one written before checksums existed."""
    path = save_checkpoint(tmp_path / "c.safetensors", tensors(), FORMAT, CONFIG)
    path.write_bytes(path.read_bytes().replace(b'"sha256"', b'"sha2v6"'))
    with raises_with_fix(r"unexpected header keys \['sha2v6'\]"):
        load_checkpoint(path, FORMAT, FIX)


def test_file_without_checksum_still_loads(tmp_path):
    """Checkpoints written before the checksum existed load, with every other check."""
    save_file(tensors(), str(tmp_path / "old.safetensors"), metadata={"format": FORMAT, "config": json.dumps(CONFIG)})
    assert load_checkpoint(tmp_path / "old.safetensors", FORMAT, FIX)[1] == CONFIG


@given(st.data())
def test_truncated_or_bit_flipped_checkpoints_give_a_value_error(tmp_path_factory, data):
    """Property: any truncation or bit flips of a Checkpointable's file give a ValueError naming the
    file and the fix; never another exception, never a silently different module."""
    s = Scaler(4)
    with torch.no_grad():
        s.weight.copy_(torch.tensor([1.0, -2.0, 3.5, 0.25]))
    path = s.save(tmp_path_factory.mktemp("flip") / "s.safetensors")
    path.write_bytes(damaged(path.read_bytes(), data))
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}.*; {re.escape(Scaler.FIX)}$"):
        Scaler.from_checkpoint(path)


@given(size=st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True), st.text(max_size=3),
                      st.lists(st.integers(), max_size=2),
                      st.dictionaries(st.text(max_size=2), st.integers(), max_size=2), st.integers(-5, 0),
                      st.just(10**30)))
def test_type_confused_config_gives_a_value_error(tmp_path_factory, size):
    """Property: a config value of the wrong type or range is a ValueError naming the file and the fix."""
    path = save_checkpoint(tmp_path_factory.mktemp("conf") / "s.safetensors", {"weight": torch.zeros(4)},
                           Scaler.FORMAT, {"size": size})
    with pytest.raises(ValueError, match=f"its config does not describe a valid Scaler.*; {re.escape(Scaler.FIX)}$"):
        Scaler.from_checkpoint(path)
