"""Explicit per-family dispatch: `adapter_for(model)` picks the adapter from `config.model_type`."""

from __future__ import annotations

from torch import nn

from .base import Dims, ModelAdapter
from .gpt2 import GPT2Adapter
from .llama import LlamaAdapter

ADAPTERS: dict[str, type[ModelAdapter]] = {
    "gpt2": GPT2Adapter,
    "llama": LlamaAdapter,
    "mistral": LlamaAdapter,
    "qwen2": LlamaAdapter,
}


def adapter_for(model: nn.Module) -> ModelAdapter:
    """The adapter for a HF causal LM, or a ValueError listing the supported families."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ADAPTERS:
        raise ValueError(
            f"No ANEE adapter for model_type={model_type!r}; supported: {sorted(ADAPTERS)}. "
            "Add one file under anee/adapters/ and register it in ADAPTERS."
        )
    return ADAPTERS[model_type](model)


__all__ = ["ADAPTERS", "Dims", "ModelAdapter", "adapter_for", "GPT2Adapter", "LlamaAdapter"]
