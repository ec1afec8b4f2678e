"""Save / load `PolicyNet` controllers as safetensors with metadata checks (never pickle)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from .checkpoints import load_checkpoint, save_checkpoint
from .controller import LearnedController, PacingConfig, PlanConfig, PolicyNet
from .profiler import FEATURES, VERSION

FIX = "re-run notebook 03 (warm-start) / 04 (RL) to regenerate it"


def save_policy(path: str | Path, policy: PolicyNet, kind: str, num_layers: int, extra: dict[str, str] | None = None,
                plan: PlanConfig | None = None, pacing: PacingConfig | None = None) -> Path:
    """Write the policy and its metadata; `plan` and `pacing` record the layer plan and the per-token
    band it was trained under (None: asked at every layer / the default band)."""
    meta = {"format": "anee-policy", "version": VERSION, "kind": kind, "features": json.dumps(list(FEATURES)),
            "num_features": str(policy.num_features), "hidden": str(policy.hidden), "num_layers": str(num_layers),
            "hidden_size": str(policy.hidden_size), "rank": str(policy.rank), "skip_offsets": str(policy.skip_offsets.numel()),
            "plan": json.dumps(dataclasses.asdict(plan) if plan is not None else None),
            "pacing": json.dumps(dataclasses.asdict(pacing or PacingConfig())), **(extra or {})}
    return save_checkpoint(path, dict(policy.state_dict()), meta)


def _meta(path: str | Path, num_layers: int) -> dict[str, str]:
    _, meta = load_checkpoint(path, {"format": "anee-policy", "version": VERSION, "num_layers": str(num_layers)}, {}, FIX)
    return meta


def _plan(meta: dict[str, str]) -> PlanConfig | None:
    plan = json.loads(meta.get("plan", "null"))
    return None if plan is None else PlanConfig(**plan)


def _pacing(meta: dict[str, str]) -> PacingConfig:
    return PacingConfig(**json.loads(meta.get("pacing", "{}")))


def load_plan(path: str | Path, num_layers: int) -> PlanConfig | None:
    """The layer plan a saved policy was trained under (None: asked at every layer)."""
    return _plan(_meta(path, num_layers))


def load_pacing(path: str | Path, num_layers: int) -> PacingConfig:
    """The per-token pacing band a saved policy was trained under."""
    return _pacing(_meta(path, num_layers))


def load_controller(path: str | Path, profiler, **kwargs) -> LearnedController:
    """The saved policy as a `LearnedController` under the plan and band it was trained with."""
    L = profiler.executor.adapter.num_layers
    meta = _meta(path, L)
    return LearnedController(load_policy(path, L), profiler, pacing=_pacing(meta), plan=_plan(meta), **kwargs)


def load_policy(path: str | Path, num_layers: int, kind: str | None = None) -> PolicyNet:
    """A `PolicyNet` from `path`; ValueError if the file is corrupt or made for other features/models."""
    expect = {"format": "anee-policy", "version": VERSION, "features": json.dumps(list(FEATURES)), "num_layers": str(num_layers)}
    if kind is not None:
        expect["kind"] = kind
    _, meta = load_checkpoint(path, expect, {}, FIX)
    try:
        policy = PolicyNet(int(meta["num_features"]), int(meta["hidden"]), int(meta.get("hidden_size", 0)), int(meta.get("rank", 0)))
        k = int(meta.get("skip_offsets", 0))
        policy.set_skip_offsets(torch.arange(k, dtype=torch.float32), torch.zeros(k))  # shapes; values come from the file
    except (KeyError, ValueError) as e:
        raise ValueError(f"checkpoint {path}: malformed policy metadata ({e}); {FIX}") from None
    shapes = {k: tuple(v.shape) for k, v in policy.state_dict().items()}
    tensors, _ = load_checkpoint(path, expect, shapes, FIX)
    extra = set(tensors) - set(shapes)
    if extra:
        raise ValueError(f"checkpoint {path} has unexpected tensors {sorted(extra)}; {FIX}")
    policy.load_state_dict(tensors)
    try:
        policy.set_skip_offsets(policy.offset_budgets, policy.skip_offsets)
    except ValueError as e:
        raise ValueError(f"checkpoint {path}: {e}; {FIX}") from None
    return policy.eval()
