"""Save / load `PolicyNet` controllers as safetensors with metadata checks (never pickle)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .checkpoints import load_checkpoint, save_checkpoint
from .controller import PlanConfig, PolicyNet
from .profiler import FEATURES, VERSION


def save_policy(path: str | Path, policy: PolicyNet, kind: str, num_layers: int, extra: dict[str, str] | None = None,
                plan: PlanConfig | None = None) -> Path:
    """Write the policy and its metadata; `plan` records the layer plan it was trained under."""
    meta = {"format": "anee-policy", "version": VERSION, "kind": kind, "features": json.dumps(list(FEATURES)),
            "num_features": str(policy.num_features), "hidden": str(policy.hidden), "num_layers": str(num_layers),
            "plan": json.dumps(dataclasses.asdict(plan) if plan is not None else None), **(extra or {})}
    return save_checkpoint(path, dict(policy.state_dict()), meta)


def load_plan(path: str | Path, num_layers: int) -> PlanConfig | None:
    """The layer plan a saved policy was trained under (None: asked at every layer)."""
    expect = {"format": "anee-policy", "version": VERSION, "num_layers": str(num_layers)}
    _, meta = load_checkpoint(path, expect, {}, "re-run notebook 03 (warm-start) / 04 (RL) to regenerate it")
    plan = json.loads(meta.get("plan", "null"))
    return None if plan is None else PlanConfig(**plan)


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
