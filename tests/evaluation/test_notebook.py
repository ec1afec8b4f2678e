"""The notebooks' first call: the profile's seeds (or the given ones, checked) and global setup (seeds,
a fixed thread count, deterministic algorithms)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from anee.evaluation.notebook import DEFAULT_THREADS, pick, seeds, setup


def test_seeds_default_to_the_profile():
    assert seeds("quick") == [0] and seeds("full") == [0, 1]
    assert seeds("quick", [3, 5]) == [3, 5] and seeds("full", (7,)) == [7]
    given = [1, 2]
    out = seeds("full", given)
    assert out == given and out is not given  # a copy
    assert pick("quick", quick="q", full="f") == "q" and pick("full", quick="q", full="f") == "f"


@pytest.mark.parametrize("bad", [[], [-1], [0, 1.0], [True], ["0"], [0, None]])
def test_seeds_refuse_bad_input(bad):
    with pytest.raises(ValueError, match="SEEDS must be a non-empty list of non-negative integers, got"):
        seeds("quick", bad)


def test_seeds_refuse_an_unknown_profile():
    with pytest.raises(ValueError, match="PROFILE must be one of"):
        seeds("medium")


@pytest.fixture
def global_state():
    """Restore every global `setup` touches."""
    state = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.get_rng_state(), np.random.get_state(),
             random.getstate())
    yield
    threads, det, warn, torch_rng, np_rng, py_rng = state
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det, warn_only=warn)
    torch.set_rng_state(torch_rng)
    np.random.set_state(np_rng)
    random.setstate(py_rng)


def test_setup_fixes_seeds_threads_and_determinism(global_state):
    assert setup("quick", seed=3, threads=1) == "quick"
    assert torch.get_num_threads() == 1
    assert not torch.are_deterministic_algorithms_enabled()  # off by default: 2.5x slower training, no gain on CPU
    setup("quick", seed=3, threads=1, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    draws = (torch.rand(3), np.random.rand(2), random.random())
    setup("full", seed=3, threads=1)
    again = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]
    torch.manual_seed(3)
    assert torch.equal(torch.rand(3), draws[0])  # the same seed as torch.manual_seed
    setup("quick", seed=4, threads=1)
    assert not torch.equal(torch.rand(3), draws[0])
    assert DEFAULT_THREADS == 2
    torch.set_num_threads(1)
    setup("quick", threads=None)  # None (or 0): the thread count is left alone
    assert torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="PROFILE must be one of"):
        setup("fast")
