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

`WindowPasses` shares more, for one window scored under many uniform decision rows (nested skip sets,
counterfactual outcomes): each pass resumes from whichever earlier pass agrees with it on the most
leading layers, skipped layers included, so k+1 nested skips start where the k-th pass's last skip was.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..core.actions import DROP, EXIT, SKIP
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


def uniform_key(row: torch.Tensor) -> torch.Tensor:
    """A uniform decision row [L] with every SKIP before its first EXIT written as DROP: when every
    token SKIPS a layer, the K/V it writes there are read by no token (none processes it), and both
    give h + bypass(h) with the same kernels, so the two passes agree bit for bit."""
    before_exit = ~(row == EXIT).to(torch.int8).cummax(0).values.bool()
    return torch.where((row == SKIP) & before_exit, DROP, row)


class WindowPasses:
    """Teacher-forced passes over one window [1, T] under decisions uniform over its tokens, each resumed
    (`AdaptiveExecutor.forward`'s `resume`) from the earlier pass that shares the longest prefix of layer
    decisions (`uniform_key`: a SKIP all tokens take counts as a DROP; nested outcomes under budgets whose
    plans DROP what another budget's SKIPS repeat whole passes): the same logits as running each pass
    from the embedding, for a fraction of the layers. Keeps every pass's layer inputs (a pass shares the
    tensors of the prefix it resumed from), so keep one per window."""

    def __init__(self, executor, ids: torch.Tensor):
        self.executor, self.ids = executor, ids
        self.passes: list[tuple[torch.Tensor, list[torch.Tensor]]] = []  # (uniform_key [L], input of layers 0..L)

    def forward(self, decisions: torch.Tensor) -> torch.Tensor:
        """The logits [1, T, V] of the pass under `decisions` [1, T, L] (every token's row the same)."""
        row = decisions[0, 0]
        if not bool((decisions == row).all()):
            raise ValueError("WindowPasses runs decisions that are the same for every token of the window")
        key = uniform_key(row)
        start, states = 0, []
        for done_key, done_states in self.passes:
            differ = (done_key != key).nonzero()
            shared = int(differ[0]) if len(differ) else len(key)
            if shared > start:
                start, states = shared, done_states[:shared + 1]
        out = self.executor.forward(self.ids, decisions=decisions, collect_hidden=True,
                                    resume=(start, states[start]) if start else None)
        self.passes.append((key, states[:start] + out.hidden_states))
        return out.logits

    def layer_inputs(self, i: int) -> list[torch.Tensor]:
        """The input of each layer 0..L-1, then the final stream, of the `i`-th pass run."""
        return self.passes[i][1]
