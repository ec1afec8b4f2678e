"""The vendored out-of-domain text (Python source) is tokenised whole or as a prefix, and a missing
or too short file is reported; random windows are reproducible."""

from __future__ import annotations

import pytest
import torch

from anee.core import data
from anee.core.data import (
    VALID_BYPASS_CHOICE,
    VALID_BYPASS_FIT,
    VALID_IMPORTANCE,
    code_tokens,
    sample_windows,
    span_windows,
)


class CharTokenizer:
    """A stand-in for a HF tokenizer: one token per character (its code point); records its calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, text, add_special_tokens=True, return_tensors=None):
        self.calls.append({"add_special_tokens": add_special_tokens, "return_tensors": return_tensors,
                           "chars": len(text)})
        return {"input_ids": torch.tensor([[ord(c) for c in text]])}


def test_code_tokens_tokenise_the_vendored_python_source():
    path = data.data_dir().parent / "python-stdlib" / "code.txt"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# ---- textwrap.py (CPython 3.11.7 standard library)")
    tok = CharTokenizer()
    ids = code_tokens(tok)
    assert ids.shape == (1, len(text)) and ids[0, :6].tolist() == [ord(c) for c in "# ----"]
    assert tok.calls == [{"add_special_tokens": False, "return_tensors": "pt", "chars": len(text)}]
    first = code_tokens(CharTokenizer(), max_tokens=100)
    assert torch.equal(first, ids[:, :100])
    with pytest.raises(ValueError, match=f"the code text has {len(text)} tokens, fewer than {len(text) + 1}"):
        code_tokens(CharTokenizer(), max_tokens=len(text) + 1)


def test_code_tokens_need_the_vendored_file(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "data_dir", lambda: tmp_path / "wikitext-2")
    with pytest.raises(FileNotFoundError, match="python-stdlib/code.txt is missing: run from a checkout"):
        code_tokens(CharTokenizer())
    (tmp_path / "python-stdlib").mkdir()
    (tmp_path / "python-stdlib" / "code.txt").write_text("x = 1\n", encoding="utf-8")
    assert code_tokens(CharTokenizer()).tolist() == [[ord(c) for c in "x = 1\n"]]
    with pytest.raises(ValueError, match="the code text has 6 tokens, fewer than 7"):
        code_tokens(CharTokenizer(), max_tokens=7)


def test_sample_windows_are_reproducible_slices():
    ids = torch.arange(100)[None]
    a, b = sample_windows(ids, 10, 4, seed=3), sample_windows(ids, 10, 4, seed=3)
    assert a.shape == (4, 10) and torch.equal(a, b)
    assert all(torch.equal(w, torch.arange(int(w[0]), int(w[0]) + 10)) for w in a)  # contiguous slices of ids
    assert not torch.equal(a, sample_windows(ids, 10, 4, seed=4))
    assert sample_windows(ids, 100, 2).tolist() == [list(range(100))] * 2
    with pytest.raises(ValueError, match="need at least 101 tokens, have 100"):
        sample_windows(ids, 101, 1)


def test_span_windows_are_the_spans_first_tokens_and_refuse_to_run_past_it():
    ids = torch.arange(50_000).unsqueeze(0)
    w = span_windows(ids, VALID_BYPASS_FIT, 3, 100)
    assert torch.equal(w, torch.arange(4096, 4396).view(3, 100))
    assert torch.equal(span_windows(ids, VALID_BYPASS_CHOICE, 2, 2000)[1], torch.arange(42_000, 44_000))
    assert VALID_IMPORTANCE.stop == VALID_BYPASS_FIT.start  # the spans tile valid in order
    with pytest.raises(ValueError, match="need 4096 tokens, the span 40000:44000 has 4000: "
                                         "ask for fewer or shorter windows"):
        span_windows(ids, VALID_BYPASS_CHOICE, 8, 512)
    # a split shorter than the span
    with pytest.raises(ValueError, match="the span 0:4096 has 1000: pass more of the split"):
        span_windows(ids[:, :1000], VALID_IMPORTANCE, 2, 512)
    open_ended = slice(49_000, None)  # to the end of the split
    assert torch.equal(span_windows(ids, open_ended, 2, 500)[1], torch.arange(49_500, 50_000))
    with pytest.raises(ValueError, match="need 1002 tokens, the span 49000: has 1000: pass more of the split"):
        span_windows(ids, open_ended, 2, 501)
