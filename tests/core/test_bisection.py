"""anee.core.bisection: the shared bisection loop and its upper-end search."""

import math

from anee.core.bisection import bisect, grow_upper


def test_bisect_brackets_the_switch_of_a_monotone_predicate():
    lo, hi = bisect(lambda x: x * x < 2.0, 0.0, 2.0, 50)
    assert lo < math.sqrt(2.0) <= hi and hi - lo == 2.0 / 2**50  # halved once per step
    assert bisect(lambda x: True, 0.0, 1.0, 3) == (0.875, 1.0)  # never past the target: hi stays put
    assert bisect(lambda x: False, 0.0, 1.0, 3) == (0.0, 0.125)
    assert bisect(lambda x: x < 0.3, 0.0, 1.0, 0) == (0.0, 1.0)  # no steps, no change


def test_grow_upper_doubles_until_past_the_target_or_the_limit():
    assert grow_upper(lambda x: x < 5.0, 1.0) == 8.0
    assert grow_upper(lambda x: x < 0.5, 1.0) == 1.0  # already past
    assert grow_upper(lambda x: True, 1.0, limit=100.0) == 128.0  # a predicate that never turns stops at the limit
