"""Validation of the public generation arguments, in one place: every entry point accepts the same
inputs and refuses the same ones, before any model work, with a message that names the fix.
Numbers go through `anee.core.scalars` (any real scalar, Python, NumPy or a 0-d tensor, accepted
alike); prompts through `check_prompts` (a str, or any iterable of str).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from ..core.scalars import integer, real


def check_budget(budget) -> float:
    """An energy budget is a fraction of full layer compute in [0, 1]."""
    return real("energy_budget", budget, 0.0, 1.0, what=" (fraction of full layer compute)")


PREFILLS = ("adaptive", "full")  # how generation runs the prompt (see ANEEConfig.prefill)


def check_prefill(prefill) -> str:
    if not isinstance(prefill, str) or prefill not in PREFILLS:
        raise ValueError(f"prefill must be one of {', '.join(repr(p) for p in PREFILLS)}, got {prefill!r}")
    return prefill


def check_seed(seed) -> int:
    """A seed for `torch.Generator.manual_seed`: an integer in [0, 2**64 - 1]."""
    return integer("seed", seed, 0, 2**64 - 1)


def check_prompts(prompt) -> tuple[list[str], bool]:
    """(prompts, single): a str gives ([prompt], True), and its text comes back as a str; any other
    iterable of str (list, tuple, generator) gives its items, and their texts come back as a list."""
    if isinstance(prompt, str):
        prompts, single = [prompt], True
    elif isinstance(prompt, (bytes, bytearray, memoryview)):
        raise TypeError("prompt is bytes: decode it to text first, e.g. prompt.decode('utf-8')")
    elif isinstance(prompt, torch.Tensor):
        raise TypeError("prompt is a tensor of token ids: pass it to generate_ids(input_ids, ...) instead")
    elif isinstance(prompt, Iterable) and not isinstance(prompt, Mapping):
        prompts, single = list(prompt), False
    else:
        raise TypeError(f"prompt must be a str or a sequence of str (list, tuple, generator), "
                        f"got {type(prompt).__name__}")
    if not prompts:
        raise ValueError("empty prompt: give at least one non-blank prompt")
    for i, p in enumerate(prompts):
        _check_text("prompt" if single else f"prompt[{i}]", p)
    return [str(p) for p in prompts], single


def _check_text(where: str, text) -> None:
    if isinstance(text, (bytes, bytearray)):
        raise TypeError(f"{where} is bytes: decode it to text first, e.g. .decode('utf-8')")
    if not isinstance(text, str):
        raise TypeError(f"{where} must be a str, got {type(text).__name__} {text!r}")
    if not text.strip():
        raise ValueError(f"empty prompt: {where} is blank; give non-blank text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{where} holds a lone surrogate {text[e.start]!r} at character {e.start}, which no tokenizer "
                         "can encode; remove it, or decode the source bytes with errors='replace'") from None
