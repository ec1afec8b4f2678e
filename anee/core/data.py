"""WikiText-2 (Merity et al. 2016, CC BY-SA 3.0), vendored under `data/wikitext-2/`.

Loaded with `datasets` from the vendored files by default; `source="hub"` asks the HF Hub for
`wikitext-2-v1` (the same tokenized release) when online. `valid` is for calibration and training,
`test` for every reported number.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

SPLITS = ("valid", "test")
_HUB_SPLIT = {"valid": "validation", "test": "test"}
# Spans of the valid split (token offsets) that notebooks 02-03 keep apart, so that what one fit
# tunes on is unseen text for the next: layer importance (with the greedy removal search and the
# profiler), the bypass's closed-form fit, its end-to-end tuning, the choice of its family and removal
# order, then the KL-profile controller's windows (`anee.evaluation.budget.kl_profile_windows`; open-ended:
# the rest of the split).
VALID_IMPORTANCE = slice(0, 4096)
VALID_BYPASS_FIT = slice(4096, 20_000)
VALID_BYPASS_TUNING = slice(20_000, 40_000)
VALID_BYPASS_CHOICE = slice(40_000, 44_000)
VALID_KL_PROFILE = slice(VALID_BYPASS_CHOICE.stop, None)
# Held-out states for the error of the profiler's entropy estimator (notebook 02): an evaluation only,
# inside the KL-profile span (nothing is fitted on both; the estimator is fitted on VALID_IMPORTANCE).
VALID_ESTIMATOR_CHECK = slice(50_000, None)


def data_dir() -> Path:
    """`data/wikitext-2` next to the package (a checkout or an editable install)."""
    return Path(__file__).resolve().parents[2] / "data" / "wikitext-2"


@lru_cache(maxsize=4)
def load_wikitext(split: str = "test", source: str = "vendored") -> str:
    """The whole split as one string."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    from datasets import load_dataset

    if source == "hub":
        ds = load_dataset("wikitext", "wikitext-2-v1", split=_HUB_SPLIT[split])
        return "\n".join(ds["text"])
    if source != "vendored":
        raise ValueError("source must be 'vendored' or 'hub'")
    path = data_dir() / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run from a checkout of the anee repository "
                                "(data/ is vendored there)")
    ds = load_dataset("text", data_files={split: str(path)}, sample_by="document", split=split)
    return ds[0]["text"]


def wikitext_tokens(tokenizer, split: str = "test", max_tokens: int | None = None,
                    source: str = "vendored") -> torch.Tensor:
    """Token ids [1, N] of a split (the first `max_tokens` when given), without special tokens."""
    text = load_wikitext(split, source)
    if max_tokens is not None:
        text = text[: max_tokens * 8]  # ~4 chars/token: tokenise a prefix only, then trim exactly
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    if max_tokens is not None:
        if ids.shape[1] < max_tokens:
            raise ValueError(f"{split} split has fewer than {max_tokens} tokens in the tokenised prefix")
        ids = ids[:, :max_tokens]
    return ids


def code_tokens(tokenizer, max_tokens: int | None = None) -> torch.Tensor:
    """Token ids [1, N] of the vendored Python source (`data/python-stdlib/code.txt`): text of another
    kind than WikiText-2, for out-of-domain evaluation only (the first `max_tokens` when given)."""
    path = data_dir().parent / "python-stdlib" / "code.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run from a checkout of the anee repository "
                                "(data/ is vendored there)")
    ids = tokenizer(path.read_text(), add_special_tokens=False, return_tensors="pt")["input_ids"]
    if max_tokens is not None:
        if ids.shape[1] < max_tokens:
            raise ValueError(f"the code text has {ids.shape[1]} tokens, fewer than {max_tokens}")
        ids = ids[:, :max_tokens]
    return ids


def span_windows(ids: torch.Tensor, span: slice, count: int, length: int) -> torch.Tensor:
    """The first `count` consecutive windows [count, length] of `span` (one of the `VALID_*` spans;
    `stop` None: to the end of the split) in token ids [1, N]; ValueError when they would run past
    the span (into text kept for another use) or past the ids."""
    ids_end_first = span.stop is None or ids.shape[1] < span.stop
    have = (ids.shape[1] if ids_end_first else span.stop) - span.start
    if count * length > have:
        fix = ("pass more of the split (wikitext_tokens(tokenizer, 'valid') without a token limit)" if ids_end_first
               else "ask for fewer or shorter windows")
        raise ValueError(f"{count} windows of {length} tokens need {count * length} tokens, the span "
                         f"{span.start}:{'' if span.stop is None else span.stop} has {have}: {fix}")
    return ids[0, span.start : span.start + count * length].view(count, length)


def sample_windows(ids: torch.Tensor, length: int, count: int, seed: int = 0) -> torch.Tensor:
    """`count` random windows [count, length] from token ids [1, N] (deterministic for a seed)."""
    n = ids.shape[1]
    if n < length:
        raise ValueError(f"need at least {length} tokens, have {n}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, n - length + 1, (count,), generator=g)
    return torch.stack([ids[0, s : s + length] for s in starts.tolist()])
