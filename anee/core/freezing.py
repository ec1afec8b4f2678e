"""Training a small module on a frozen base: the base's gradients off for the duration, always restored."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def frozen(module: torch.nn.Module):
    """Temporarily turn off gradients of every parameter of `module` (the base stays untouched);
    each parameter's own flag comes back on exit, also when the body raises."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
