"""Safetensors checkpoints with metadata checks (never pickle)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write `tensors` and string `metadata` to a .safetensors file (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def load_checkpoint(path: str | Path, expect_meta: dict[str, str], expect_shapes: dict[str, tuple], fix: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a checkpoint; ValueError naming `fix` if it is missing, corrupt or
    does not match `expect_meta` / `expect_shapes`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} not found; {fix}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for truncated/garbled files
        raise ValueError(f"checkpoint {path} is not a valid safetensors file ({type(e).__name__}: {e}); {fix}") from None
    for key, want in expect_meta.items():
        if meta.get(key) != want:
            raise ValueError(f"checkpoint {path}: metadata {key}={meta.get(key)!r}, expected {want!r}; {fix}")
    for key, shape in expect_shapes.items():
        if key not in tensors:
            raise ValueError(f"checkpoint {path} lacks tensor {key!r}; {fix}")
        if tuple(tensors[key].shape) != tuple(shape):
            raise ValueError(f"checkpoint {path}: tensor {key!r} has shape {tuple(tensors[key].shape)}, expected {tuple(shape)}; {fix}")
    return tensors, meta
