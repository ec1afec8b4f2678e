"""Real scalars are accepted alike (Python, NumPy of any width, 0-d arrays and tensors); anything else
is a TypeError that lists the accepted types, a value out of range a ValueError."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from anee.core.scalars import flag, integer, real

REALS = [0.25, np.float16(0.25), np.float32(0.25), np.float64(0.25), np.longdouble(0.25), np.array(0.25),
         torch.tensor(0.25), torch.tensor(0.25, dtype=torch.float64), torch.tensor(0.25, dtype=torch.bfloat16)]
INTS = [3, np.int8(3), np.int16(3), np.int32(3), np.int64(3), np.uint8(3), np.uint64(3), np.array(3), torch.tensor(3),
        torch.tensor(3, dtype=torch.uint8)]
NOT_NUMBERS = [True, np.bool_(False), torch.tensor(True), "0.25", None, [0.25], (3,), 1j, np.complex64(1),
               torch.tensor(1j),
               torch.tensor([0.25]), np.array([3]), object()]


@pytest.mark.parametrize("value", REALS + INTS)
def test_real_accepts_every_real_scalar(value):
    assert real("x", value) == float(value) and type(real("x", value)) is float


@pytest.mark.parametrize("value", INTS)
def test_integer_accepts_every_integer_scalar(value):
    assert integer("n", value) == 3 and type(integer("n", value)) is int


@pytest.mark.parametrize("value", NOT_NUMBERS)
def test_other_types_are_a_type_error_listing_the_accepted_ones(value):
    with pytest.raises(TypeError, match="x must be a finite number: a Python int or float, a NumPy scalar "
                                        "or a 0-d torch tensor; got"):
        real("x", value)
    with pytest.raises(TypeError, match="n must be an integer >= 0: a Python int, a NumPy integer "
                                        "or a 0-d integer torch tensor; got"):
        integer("n", value)


@pytest.mark.parametrize("value", [2.5, 2.0, np.float32(2), torch.tensor(2.0)])
def test_integer_refuses_floats(value):
    with pytest.raises(TypeError, match="n must be an integer"):
        integer("n", value)


def test_ranges_and_finiteness():
    assert real("p", 1.0, 0.0, 1.0, open_low=True) == 1.0
    for bad in (0.0, 1.5, math.nan, math.inf, -math.inf, 10**400):
        with pytest.raises(ValueError, match=r"p must be a finite number in \(0, 1\], got"):
            real("p", bad, 0.0, 1.0, open_low=True)
    with pytest.raises(ValueError, match="t must be a finite number > 0 .hot., got -1"):
        real("t", -1, 0.0, open_low=True, what=" (hot)")
    with pytest.raises(ValueError, match="n must be an integer >= 1 and <= 4, got 5"):
        integer("n", np.int8(5), 1, 4)


def test_flag():
    assert flag("f", np.bool_(True)) is True and flag("f", False) is False
    for bad in (1, 0, "yes", None, torch.tensor(True)):
        with pytest.raises(TypeError, match="f must be True or False"):
            flag("f", bad)


@given(st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.text(max_size=3),
                 st.none(), st.complex_numbers(), st.lists(st.floats(), max_size=2)))
def test_nothing_but_value_and_type_errors(value):
    """Property: any value is accepted as a float in range, or refused with a ValueError / TypeError."""
    for check in (lambda v: real("x", v, 0.0, 1.0), lambda v: integer("n", v, 1, 10)):
        try:
            out = check(value)
        except (TypeError, ValueError) as err:
            assert str(err)
        else:
            assert math.isfinite(out)
