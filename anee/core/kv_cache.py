"""A minimal per-layer key/value cache.

Every token writes K/V at every layer, whether the layer was PROCESSED or SKIPPED, so all layers
always hold the same number of positions and later tokens attend to an aligned cache. The one
exception is a DROPPED layer: no later token attends at it, so it stops taking K/V. A layer dropped
from the first chunk on holds none; a layer kept for earlier chunks (a prompt run at full depth)
may be dropped from a later chunk on and keeps the earlier chunks' K/V, which nobody reads again.
A dropped layer cannot be kept again: the tokens that dropped it left no K/V to attend to.
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
        elif dropped and self.dropped[layer] is False:
            self.dropped[layer] = True  # kept so far, dropped from here on (its K/V so far stay, unread)
        elif self.dropped[layer] is not dropped:
            why = "was dropped for" if self.dropped[layer] else "holds no K/V (a resumed pass starts after it) for"
            raise ValueError(f"layer {layer} {why} earlier tokens of this sequence, so later tokens have no K/V to "
                             "attend to there: a dropped layer stays dropped (start a new cache to change the plan)")

    def drop(self, layer: int) -> None:
        """Record that `layer` holds no K/V for this sequence."""
        self._mark(layer, True)

    def copy(self) -> KVCache:
        """A cache that continues from this one's positions without changing it: it shares the K/V
        tensors (`update` never writes into a tensor, it concatenates), so several continuations
        of one prompt (a calibration's passes) need its forward only once."""
        new = KVCache(len(self.keys))
        new.keys, new.values, new.dropped = list(self.keys), list(self.values), list(self.dropped)
        new.padding_mask, new._length = self.padding_mask, self._length
        return new

    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this chunk's K/V at `layer` and return the full K/V for attention."""
        self._mark(layer, False)
        if self.keys[layer] is None:
            self.keys[layer], self.values[layer] = key, value
        else:
            self.keys[layer] = torch.cat([self.keys[layer], key], dim=2)
            self.values[layer] = torch.cat([self.values[layer], value], dim=2)
        return self.keys[layer], self.values[layer]
