"""Safetensors checkpoints with their config beside the weights, in the same file (never pickle).

A checkpoint is one `.safetensors` file whose header carries two strings: `format` (what wrote
it, e.g. "anee.policy/3") and `config` (a JSON object: everything needed to rebuild the module
before its tensors are loaded). `Checkpointable` gives a class `save` and a `from_checkpoint`
constructor in the style of tuned-lens's lenses: the class says how to describe itself
(`checkpoint_config`) and how to rebuild itself from that description (`from_config`); loading
checks the format, a sha256 of the contents, the tensor names and shapes and that every value is
finite, and any failure is a `ValueError` that names the file and what rebuilds it.

The sha256 (header key `sha256`, over the format, the config string and every tensor's name, dtype,
shape and bytes) catches what the other checks cannot: a flipped bit that leaves a finite value. A
file written before it existed has none and is checked without it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file

HEADER_KEYS = {"format", "config", "sha256"}


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], format: str, config: dict[str, Any]) -> Path:
    """Write `tensors` and the JSON `config` to a .safetensors file; atomic (a crash leaves no half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"format": format, "config": json.dumps(config, sort_keys=True)}
    meta["sha256"] = content_digest(tensors, meta)
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, format: str, fix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, config) of a checkpoint written by `save_checkpoint` with this `format`; ValueError
    naming `fix` when the file is missing, corrupt, of another format or its config is not JSON."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"checkpoint path must be a str or a Path, got {type(path).__name__} {path!r}")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} not found; {fix}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for truncated or garbled files
        raise ValueError(f"checkpoint {path} is not a valid safetensors file ({type(e).__name__}: {e}); "
                         f"{fix}") from None
    if meta.get("format") != format:
        raise ValueError(f"checkpoint {path} has format {meta.get('format')!r}, expected {format!r}; {fix}")
    if not set(meta) <= HEADER_KEYS:  # e.g. a damaged "sha256" key, which would otherwise skip the check
        raise ValueError(f"checkpoint {path}: unexpected header keys {sorted(set(meta) - HEADER_KEYS)} (expected "
                         f"{sorted(HEADER_KEYS)}); {fix}")
    if "sha256" in meta and meta["sha256"] != content_digest(tensors, meta):
        raise ValueError(f"checkpoint {path}: its contents do not match the sha256 in its header (damaged after it "
                         f"was written); {fix}")
    try:
        config = json.loads(meta.get("config", ""))
    except json.JSONDecodeError as e:
        raise ValueError(f"checkpoint {path}: its config is not valid JSON ({e}); {fix}") from None
    if not isinstance(config, dict):
        raise ValueError(f"checkpoint {path}: its config must be a JSON object, got {type(config).__name__}; {fix}")
    return tensors, config


def content_digest(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """sha256 of a checkpoint's format, config string and tensors (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    for key in ("format", "config"):
        h.update(f"{key}={meta.get(key)!r};".encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_tensors(path: str | Path, tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                  fix: str) -> None:
    """ValueError naming `fix` unless `tensors` has exactly the names and shapes of `expected` and
    every floating-point value is finite."""
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"checkpoint {path}: missing tensors {missing[:5]}, "
                         f"unexpected tensors {unexpected[:5]}; {fix}")
    for key, t in tensors.items():
        if tuple(t.shape) != tuple(expected[key].shape):
            raise ValueError(f"checkpoint {path}: tensor {key!r} has shape {tuple(t.shape)}, "
                             f"expected {tuple(expected[key].shape)}; {fix}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"checkpoint {path}: tensor {key!r} holds non-finite values; {fix}")


class Checkpointable:
    """Mixin: `save(path)` and `cls.from_checkpoint(path, ...)` for a class that can describe itself.

    Subclasses set `FORMAT` and `FIX` (what rebuilds a bad file) and implement `checkpoint_config()`
    and the classmethod `from_config(config, *args)`, which builds an instance with the right
    shapes (its tensors are then loaded by name). `checkpoint_tensors()` defaults to `state_dict()`.
    """

    FORMAT: ClassVar[str]
    FIX: ClassVar[str]

    def checkpoint_config(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict[str, Any], *args, **kwargs):
        raise NotImplementedError

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.state_dict())

    def load_checkpoint_tensors_(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy checked tensors into the instance (in place); default `load_state_dict`."""
        self.load_state_dict(tensors, strict=True)

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(path, self.checkpoint_tensors(), self.FORMAT, self.checkpoint_config())

    @classmethod
    def from_checkpoint(cls, path: str | Path, *args, **kwargs):
        """Rebuild from `path`; `args`/`kwargs` go to `from_config` (e.g. the base model)."""
        tensors, config = load_checkpoint(path, cls.FORMAT, cls.FIX)
        try:
            obj = cls.from_config(config, *args, **kwargs)
        except Exception as e:  # any failure to build from a checked config means the config is bad
            raise ValueError(f"checkpoint {path}: its config does not describe a valid {cls.__name__} "
                             f"({_reason(e)}); {cls.FIX}") from None
        check_tensors(path, tensors, obj.checkpoint_tensors(), cls.FIX)
        try:
            obj.load_checkpoint_tensors_(tensors)
        except Exception as e:
            raise ValueError(f"checkpoint {path}: {_reason(e)}; {cls.FIX}") from None
        obj.checkpoint_path = Path(path)
        return obj


def _reason(e: Exception) -> str:
    """An exception as a one-line message: the checks' own ValueErrors as they are, anything else with its
    type (torch's own errors carry a C++ backtrace after their first line)."""
    if isinstance(e, KeyError):
        return f"missing key {e}"
    first = (str(e).splitlines() or [""])[0]
    return first if isinstance(e, ValueError) else f"{type(e).__name__}: {first}"
