"""Temporary, always-restored edits of a HF model's layer stack (in the spirit of tuned-lens's
`model_surgery.py`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import nn

from anee.core.adapters import ModelAdapter


def layer_list(adapter: ModelAdapter) -> nn.ModuleList:
    """The ModuleList holding the transformer blocks."""
    model = adapter.model
    if model.config.model_type == "gpt2":
        return model.transformer.h
    return model.model.layers


@contextmanager
def removed_layers(adapter: ModelAdapter, indices: Sequence[int]) -> Iterator[nn.Module]:
    """Delete the given blocks for the duration of the `with` block; the model is restored on exit,
    even on error. Inside, the HF model runs as a shallower network (no cache: call with use_cache=False)."""
    layers = layer_list(adapter)
    drop = set(indices)
    if not drop <= set(range(len(layers))):
        raise ValueError(f"layer indices {sorted(drop)} out of range for {len(layers)} layers")
    original = list(layers)
    config = adapter.model.config
    attr = "n_layer" if config.model_type == "gpt2" else "num_hidden_layers"
    original_count = getattr(config, attr)
    kept = [layer for i, layer in enumerate(original) if i not in drop]
    try:
        layers._modules.clear()
        for i, layer in enumerate(kept):
            layers.add_module(str(i), layer)
        setattr(config, attr, len(kept))
        yield adapter.model
    finally:
        layers._modules.clear()
        for i, layer in enumerate(original):
            layers.add_module(str(i), layer)
        setattr(config, attr, original_count)
