"""Small helpers every notebook calls first: seeds, threads, profile-dependent sizes, Colab detection."""

from __future__ import annotations

import random
import sys
from typing import TypeVar

import numpy as np
import torch

from .heap import start_heap_trimmer
from .results import check_profile

T = TypeVar("T")


DEFAULT_THREADS = 2  # the reference machine's cores: every run uses the same count, whatever the machine has


def setup(profile: str, seed: int = 0, threads: int | None = DEFAULT_THREADS, deterministic: bool = False) -> str:
    """Validate the profile, fix every global seed (the package's own functions take explicit seeds;
    this covers library code that draws from the global generators) and a fixed CPU thread count.
    Some kernels split a float reduction by thread and some do not: notebook 05 (quick profile) at
    one and at two threads differs in the 6th digit, notebooks 03 and 04 (full) were bit-identical.

    `deterministic=True` also turns on `torch.use_deterministic_algorithms` (a warning, not an
    error, where an op has no deterministic version). It is off by default: on this CPU the ops
    used here already give bit-identical reruns at a fixed thread count (checked by rerunning the
    quick profile), while deterministic mode made a bypass-tuning step (backward through the
    30-layer model) 2.5x slower (52 s against 21 s per step, measured in one run under load).

    Under `make`'s allocator setting it also starts the heap trimmer (`heap.start_heap_trimmer`)."""
    check_profile(profile)
    start_heap_trimmer()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if threads:
        torch.set_num_threads(threads)
    return profile


def seeds(profile: str, given: list[int] | None = None) -> list[int]:
    """The seeds a notebook trains with: `given`, else one in the quick profile and two in the full
    one (every trained number is then reported as mean and spread over them). Two, not three: with
    two, `make reproduce` takes about an hour on the reference 2-core CPU (its measured wall time is
    in results/timings_reproduce_make.json), and each further seed retrains the bypass, warm-start,
    REINFORCE, the hierarchical routers and BranchyNet, and adds their frontier rows."""
    default = pick(profile, quick=[0], full=[0, 1])  # also checks the profile
    chosen = list(given) if given is not None else default
    if not chosen or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in chosen):
        raise ValueError(f"SEEDS must be a non-empty list of non-negative integers, got {given!r}")
    return chosen


def pick(profile: str, quick: T, full: T) -> T:
    """The value for the active profile."""
    return quick if check_profile(profile) == "quick" else full


def on_colab() -> bool:
    return "google.colab" in sys.modules
