"""Save / load `PolicyNet` controllers as safetensors with metadata checks (never pickle)."""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoints import load_checkpoint, save_checkpoint
from .controller import PolicyNet
from .profiler import FEATURES, VERSION


def save_policy(path: str | Path, policy: PolicyNet, kind: str, num_layers: int, extra: dict[str, str] | None = None) -> Path:
    meta = {"format": "anee-policy", "version": VERSION, "kind": kind, "features": json.dumps(list(FEATURES)),
            "num_features": str(policy.num_features), "hidden": str(policy.hidden), "num_layers": str(num_layers), **(extra or {})}
    return save_checkpoint(path, dict(policy.state_dict()), meta)


def load_policy(path: str | Path, num_layers: int, kind: str | None = None) -> PolicyNet:
    """A `PolicyNet` from `path`; ValueError if the file is corrupt or made for other features/models."""
    fix = "re-run notebook 03 (warm-start) / 04 (RL) to regenerate it"
    expect = {"format": "anee-policy", "version": VERSION, "features": json.dumps(list(FEATURES)), "num_layers": str(num_layers)}
    if kind is not None:
        expect["kind"] = kind
    _, meta = load_checkpoint(path, expect, {}, fix)
    policy = PolicyNet(int(meta["num_features"]), int(meta["hidden"]))
    shapes = {k: tuple(v.shape) for k, v in policy.state_dict().items()}
    tensors, _ = load_checkpoint(path, expect, shapes, fix)
    extra = set(tensors) - set(shapes)
    if extra:
        raise ValueError(f"checkpoint {path} has unexpected tensors {sorted(extra)}; {fix}")
    policy.load_state_dict(tensors)
    return policy.eval()
