"""A teacher-forced pass that starts part-way down the stack: `resume=(layer, h)` hands it the stream
h [B, T, D] entering `layer`, taken from an earlier pass whose decisions agree on every layer before
it, so the layers before it are not run again (the same kernels on the same tensors: the same
numbers bit for bit). The executor and the hierarchical model both take one; this is its one check."""

from __future__ import annotations

import torch


def resume_layer(resume: tuple[int, torch.Tensor] | None, shape: tuple[int, int, int], num_layers: int) -> int:
    """The layer a `resume=(layer, h)` pass starts at (0 without one): a ValueError unless `layer` is in
    0..`num_layers` (`num_layers`: only the final norm and the head are left) and h has `shape` [B, T, D]."""
    if resume is None:
        return 0
    layer, h = resume
    if not 0 <= layer <= num_layers or tuple(h.shape) != tuple(shape):
        raise ValueError(f"resume needs a layer in 0..{num_layers} and a hidden state of shape {tuple(shape)} "
                         f"(the stream entering that layer), got {layer} and {tuple(h.shape)}")
    return int(layer)
