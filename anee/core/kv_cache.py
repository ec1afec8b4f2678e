"""A minimal per-layer key/value cache.

Every token writes K/V at every layer, whether the layer was PROCESSED or SKIPPED, so all layers
always hold the same number of positions and later tokens attend to an aligned cache. The one
exception is a DROPPED layer: dropped for the whole sequence, it holds no K/V at all (no token ever
attends at it), and a layer cannot switch between dropped and kept within a sequence.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values per layer, [B, Hkv, S, hd], plus the padding mask over the S positions."""

    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.dropped: list[bool | None] = [None] * num_layers  # None until the layer's first chunk
        self.padding_mask: torch.Tensor | None = None  # [B, S] bool, True = real token
        self._length = 0

    @property
    def length(self) -> int:
        """Number of cached positions."""
        return self._length

    def advance(self, tokens: int) -> None:
        """Count a finished chunk of `tokens` positions."""
        self._length += tokens

    def _mark(self, layer: int, dropped: bool) -> None:
        if self.dropped[layer] is None and self._length == 0:
            self.dropped[layer] = dropped
        elif self.dropped[layer] is not dropped:
            was = "dropped" if self.dropped[layer] else "kept"
            raise ValueError(f"layer {layer} was {was} for earlier tokens of this sequence; a layer is dropped for "
                             "the whole sequence or not at all (start a new cache to change the plan)")

    def drop(self, layer: int) -> None:
        """Record that `layer` holds no K/V for this sequence."""
        self._mark(layer, True)

    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this chunk's K/V at `layer` and return the full K/V for attention."""
        self._mark(layer, False)
        if self.keys[layer] is None:
            self.keys[layer], self.values[layer] = key, value
        else:
            self.keys[layer] = torch.cat([self.keys[layer], key], dim=2)
            self.values[layer] = torch.cat([self.values[layer], value], dim=2)
        return self.keys[layer], self.values[layer]
