"""Real scalars, accepted alike wherever a number enters: a Python int or float, a NumPy integer or
floating scalar (or 0-d array), or a 0-d real torch tensor. Anything else (bool, str, complex, a
tensor of several values) is a TypeError listing these types; a scalar of the right kind outside
its range, NaN or infinite, is a ValueError. Integer arguments take integer types only (2.5 and 2.0
alike are refused, as transformers' warpers refuse a float top_k).
"""

from __future__ import annotations

import math

import numpy as np
import torch

REALS = "a Python int or float, a NumPy scalar or a 0-d torch tensor"
INTEGERS = "a Python int, a NumPy integer or a 0-d integer torch tensor"


def _scalar(value) -> int | float | None:
    """The Python number a real scalar holds (int for integer types), None for anything else."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return _scalar(value[()])  # the NumPy scalar of its dtype
    if isinstance(value, torch.Tensor) and value.ndim == 0 and value.dtype != torch.bool and not value.is_complex():
        return value.item()  # int for integer dtypes, float for floating ones
    return None


def real(name: str, value, low: float = -math.inf, high: float = math.inf, open_low: bool = False,
         what: str = "") -> float:
    """`value` as a finite float in [low, high] (low excluded with `open_low`); `what` says what it means."""
    x = _scalar(value)
    need = f"{name} must be a finite number{_interval(low, high, open_low)}{what}"
    if x is None:
        raise TypeError(f"{need}: {REALS}; got {type(value).__name__} {value!r}")
    try:
        x = float(x)
    except OverflowError:
        raise ValueError(f"{need}, got {value!r}") from None
    if not (math.isfinite(x) and (low < x if open_low else low <= x) and x <= high):
        raise ValueError(f"{need}, got {value!r}")
    return x


def _interval(low: float, high: float, open_low: bool) -> str:
    if low == -math.inf:
        return "" if high == math.inf else f" <= {high:g}"
    if high == math.inf:
        return f" {'>' if open_low else '>='} {low:g}"
    return f" in {'(' if open_low else '['}{low:g}, {high:g}]"


def integer(name: str, value, low: int = 0, high: float = math.inf, what: str = "") -> int:
    """`value` as an int in [low, high]; `what` says what it means."""
    x = _scalar(value)
    need = f"{name} must be an integer >= {low}" + (f" and <= {high}" if high < math.inf else "") + what
    if not isinstance(x, int):
        raise TypeError(f"{need}: {INTEGERS}; got {type(value).__name__} {value!r}")
    if not low <= x <= high:
        raise ValueError(f"{need}, got {x}")
    return x


def flag(name: str, value) -> bool:
    """`value` as a bool (Python or NumPy); TypeError otherwise (1 or "yes" are not flags)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)
