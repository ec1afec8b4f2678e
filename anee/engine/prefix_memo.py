"""Passes that share their first layers compute them once.

A grid of settings scored on the same windows (notebook 06's frontier, a calibration's 27 passes,
a budget-adherence sweep) runs every setting from the embedding up, although a planned controller
processes every token at every layer before its plan's first DROP or ASK layer (and static removal
before its first removed layer): those layers give the full model's states, the same for every
setting. Inside `with shared_prefixes(executor, ...):` an executor keeps, per input chunk, the
hidden state entering each such layer and the layer's K/V, as the first pass that ran them wrote
them; a later pass on the same chunk starts after the longest stored prefix its own decisions share.
The same kernels ran on the same tensors, so every output is the same bit for bit; only the work
is not repeated. On exit the memo is released and the executors run as before.

Only a fresh, unpadded, teacher-forced chunk takes part (a decode step or a continuation of a cache
runs as always).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..core.kv_cache import KVCache


@dataclass
class Prefix:
    """One chunk's fully processed layers: `states[l]` enters layer l (states[0] is the embedding),
    `kv[l]` is what layer l wrote to the cache; len(states) == len(kv) + 1."""

    states: list[torch.Tensor]
    kv: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def restore(self, layers: int, cache: KVCache, hidden_states: list | None) -> int:
        """Write the first min(`layers`, stored) layers' K/V into `cache` (and their input states into
        `hidden_states`) as running them would; returns how many layers were restored."""
        n = min(layers, len(self.kv))
        for layer in range(n):
            if hidden_states is not None:
                hidden_states.append(self.states[layer])
            cache.update(layer, *self.kv[layer])
        return n

    def extend(self, layer: int, out: torch.Tensor, cache: KVCache) -> None:
        """Record a fully processed `layer` (its output `out` and the K/V it wrote) if it is the next unknown one."""
        if layer == len(self.kv):
            self.kv.append((cache.keys[layer], cache.values[layer]))
            self.states.append(out)


class PrefixMemo:
    """Prefixes per (weights, chunk): executors on one adapter with the same `weights` share them (a
    bypass acts only where a layer is not processed, so it does not change a prefix)."""

    def __init__(self):
        self._prefixes: dict[tuple, Prefix] = {}

    def prefix(self, model, weights, input_ids: torch.Tensor, embedded: torch.Tensor) -> Prefix:
        """The chunk's prefix on `model` with `weights`, started from its embedding `embedded` when it is new."""
        key = (id(model), id(weights), tuple(input_ids.shape), str(input_ids.device), input_ids.cpu().numpy().tobytes())
        if key not in self._prefixes:
            self._prefixes[key] = Prefix([embedded])
        return self._prefixes[key]


@contextmanager
def shared_prefixes(*executors, memo: PrefixMemo | None = None) -> Iterator[PrefixMemo]:
    """One `PrefixMemo` on every given executor (None entries are ignored) for the block: `memo`, to
    share prefixes with blocks that ran earlier (e.g. executors created one after another), or a new
    one. Each executor's own memo (normally none) is put back on exit, also after an exception."""
    executors = [e for e in executors if e is not None]
    memo, saved = memo if memo is not None else PrefixMemo(), [e.prefix_memo for e in executors]
    for e in executors:
        e.prefix_memo = memo
    try:
        yield memo
    finally:
        for e, old in zip(executors, saved):
            e.prefix_memo = old
