"""Action codes and static decision tensors."""

from __future__ import annotations

import torch

from anee.core.actions import ACTION_NAMES, ASK, DROP, EXIT, PROCESS, SKIP, pattern_decisions, removal_decisions


def test_action_codes_and_names():
    assert (PROCESS, SKIP, EXIT, DROP) == (0, 1, 2, 3)
    assert [ACTION_NAMES[a] for a in (PROCESS, SKIP, EXIT, DROP)] == ["PROCESS", "SKIP", "EXIT", "DROP"]
    assert ASK not in (PROCESS, SKIP, EXIT, DROP)
    assert all(torch.iinfo(torch.int8).min <= a <= torch.iinfo(torch.int8).max
               for a in (PROCESS, SKIP, EXIT, DROP, ASK))


def test_pattern_decisions_shape_dtype_values():
    pattern = [PROCESS, SKIP, EXIT, DROP, PROCESS]
    d = pattern_decisions(pattern, tokens=3, batch=2)
    assert d.shape == (2, 3, 5) and d.dtype == torch.int8
    assert d.tolist() == [[pattern] * 3] * 2
    assert torch.equal(pattern_decisions(torch.tensor(pattern), 3, 2), d)  # a tensor pattern is the same
    one = pattern_decisions([SKIP, PROCESS], 4)
    assert one.shape == (1, 4, 2) and one.dtype == torch.int8 and one.tolist() == [[[SKIP, PROCESS]] * 4]
    wide = pattern_decisions(torch.tensor([EXIT], dtype=torch.long), 2, 3)
    assert wide.dtype == torch.int8 and wide.shape == (3, 2, 1) and (wide == EXIT).all()


def test_removal_decisions_drop_a_prefix_of_the_order():
    d = removal_decisions([2, 0, 3, 1], 2, 4, 5)
    assert d.shape == (1, 5, 4) and d.dtype == torch.int8
    assert (d == torch.tensor([DROP, PROCESS, DROP, PROCESS], dtype=torch.int8)).all()
    assert (removal_decisions([2, 0, 3, 1], 0, 4, 3) == PROCESS).all()
    assert (removal_decisions([2, 0, 3, 1], 4, 4, 3) == DROP).all()
