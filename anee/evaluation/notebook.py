"""Small helpers every notebook calls first: seeds, threads, profile-dependent sizes, Colab detection."""

from __future__ import annotations

import random
import sys
from typing import TypeVar

import numpy as np
import torch

from .results import check_profile

T = TypeVar("T")


def setup(profile: str, seed: int = 0, threads: int | None = None) -> str:
    """Validate the profile, fix every seed and (optionally) the CPU thread count."""
    check_profile(profile)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    return profile


def pick(profile: str, quick: T, full: T) -> T:
    """The value for the active profile."""
    return quick if check_profile(profile) == "quick" else full


def on_colab() -> bool:
    return "google.colab" in sys.modules
