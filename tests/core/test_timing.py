"""Wall-clock helpers: one number per callable, the callables interleaved within each round, the
warm-up untimed, `reduce` exactly min or median (on a fake clock)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import anee.core.timing as timing
from anee.core.timing import interleaved_seconds, seconds, torch_threads


@pytest.fixture()
def clock(monkeypatch):
    """A fake perf_counter that only moves when a timed callable says so."""
    now = [0.0]
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    return now


def scripted(clock, calls, durations):
    """Callables that log their calls and each take the next of their scripted durations."""
    def make(name):
        def run():
            calls.append(name)
            clock[0] += next(durations[name])
        return run
    return {name: make(name) for name in durations}


def test_interleaves_and_takes_the_minimum(clock):
    calls = []
    fns = scripted(clock, calls, {"a": iter([0.5, 5.0, 1.0, 3.0]), "b": iter([0.1, 2.0, 8.0, 4.0])})  # warm-up first
    out = interleaved_seconds(fns, rounds=3, warmup=1)
    assert calls == ["a", "b"] * 4  # warm-up, then each round alternates
    assert out == {"a": 1.0, "b": 2.0}  # the warm-up's (shorter) calls are not timed


def test_median_and_warmup_count(clock):
    calls = []
    fns = scripted(clock, calls, {1: iter([0.0, 0.0, 9.0, 5.0, 1.0]), "x": iter([0.0, 0.0, 2.0, 8.0, 4.0])})
    out = interleaved_seconds(fns, rounds=3, warmup=2, reduce="median")
    assert calls == [1, "x"] * 5
    assert out == {1: 5.0, "x": 4.0} and list(out) == [1, "x"]


def test_unknown_reduce_is_rejected_before_anything_runs():
    calls = []
    with pytest.raises(ValueError, match="reduce must be 'min' or 'median', got 'mean'"):
        interleaved_seconds({"a": lambda: calls.append("a")}, reduce="mean")
    with pytest.raises(ValueError, match="got 'mean'"):
        seconds(lambda: calls.append("b"), reduce="mean")
    assert calls == []


def test_seconds_of_one_callable(clock):
    calls = []
    fn = scripted(clock, calls, {"f": iter([7.0, 0.75, 0.25])})["f"]
    out = seconds(fn, rounds=2)
    assert isinstance(out, float) and out == 0.25
    assert calls == ["f"] * 3  # one warm-up call, two timed rounds


def test_seconds_on_the_real_clock():
    s = seconds(lambda: sum(range(1000)), rounds=2, warmup=0)
    assert isinstance(s, float) and 0.0 <= s < 5.0


def test_torch_threads_sets_and_restores_the_count():
    old = torch.get_num_threads()
    other = 2 if old == 1 else 1
    with torch_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == old
    with pytest.raises(RuntimeError), torch_threads(other):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == old  # restored after an exception too
    with torch_threads(None):
        assert torch.get_num_threads() == old
    with pytest.raises(ValueError, match="positive integer"), torch_threads(0):
        pass
