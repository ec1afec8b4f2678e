"""Static controller patterns."""

from __future__ import annotations

import pytest

from anee import PROCESS, SKIP, skip_pattern


def test_skip_pattern_spreads_skips_over_the_middle():
    p = skip_pattern(30, 9)
    assert p.count(SKIP) == 9 and p[:2] == [PROCESS, PROCESS] and p[-1] == PROCESS
    with pytest.raises(ValueError):
        skip_pattern(6, 5)
