"""A minimal per-layer key/value cache.

Every token writes K/V at every layer, whether the layer was PROCESSED or SKIPPED, so all layers
always hold the same number of positions and later tokens attend to an aligned cache.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values per layer, [B, Hkv, S, hd], plus the padding mask over the S positions."""

    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.padding_mask: torch.Tensor | None = None  # [B, S] bool, True = real token

    @property
    def length(self) -> int:
        """Number of cached positions."""
        return 0 if self.keys[0] is None else self.keys[0].shape[2]

    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this chunk's K/V at `layer` and return the full K/V for attention."""
        if self.keys[layer] is None:
            self.keys[layer], self.values[layer] = key, value
        else:
            self.keys[layer] = torch.cat([self.keys[layer], key], dim=2)
            self.values[layer] = torch.cat([self.values[layer], value], dim=2)
        return self.keys[layer], self.values[layer]
