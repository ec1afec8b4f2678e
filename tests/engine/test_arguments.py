"""Generation arguments: prompts are a str or any iterable of str, checked before tokenizing;
budgets and seeds are real scalars in range."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anee.engine.arguments import check_budget, check_prompts, check_seed


def test_prompts_of_any_iterable_are_a_list():
    assert check_prompts("a b") == (["a b"], True)
    for prompts in (["a", "b"], ("a", "b"), (p for p in "ab"), iter(["a", "b"]), np.array(["a", "b"])):
        assert check_prompts(prompts) == (["a", "b"], False)


@pytest.mark.parametrize("prompt, error, match", [
    (b"hi", TypeError, r"prompt is bytes: decode it to text first"),
    (bytearray(b"hi"), TypeError, "prompt is bytes"),
    (["a", b"hi"], TypeError, r"prompt\[1\] is bytes"),
    (["a", None], TypeError, r"prompt\[1\] must be a str, got NoneType None"),
    ({"a": 1}, TypeError, "prompt must be a str or a sequence of str"),
    (3, TypeError, "prompt must be a str or a sequence of str .list, tuple, generator., got int"),
    (torch.tensor([1, 2]), TypeError, "tensor of token ids: pass it to generate_ids"),
    ("", ValueError, "empty prompt: prompt is blank"),
    ([], ValueError, "empty prompt: give at least one non-blank prompt"),
    (["a", "\t"], ValueError, r"empty prompt: prompt\[1\] is blank"),
    ("a\udfffb", ValueError, r"prompt holds a lone surrogate '\\udfff' at character 1"),
])
def test_bad_prompts_name_the_fix(prompt, error, match):
    with pytest.raises(error, match=match):
        check_prompts(prompt)


def test_budget_and_seed():
    assert check_budget(np.float32(0.5)) == 0.5 and check_budget(torch.tensor(1)) == 1.0
    assert check_seed(np.uint64(2**63)) == 2**63
    with pytest.raises(ValueError, match="seed must be an integer >= 0 and <= 18446744073709551615"):
        check_seed(2**64)
