"""Static controller patterns; the overhead a controller reports per layer; what a view says is alive."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from anee import PROCESS, SKIP, FullController, skip_pattern
from anee.engine.controllers.base import LayerView, layer_overhead


def test_skip_pattern_spreads_skips_over_the_middle():
    p = skip_pattern(30, 9)
    assert p.count(SKIP) == 9 and p[:2] == [PROCESS, PROCESS] and p[-1] == PROCESS
    with pytest.raises(ValueError):
        skip_pattern(6, 5)


def test_layer_overhead_prefers_the_per_layer_report():
    view = SimpleNamespace(layer=3)
    assert layer_overhead(FullController(), view) == 0
    assert layer_overhead(SimpleNamespace(overhead_macs=7), view) == 7
    per_layer = SimpleNamespace(overhead_macs=7, layer_overhead=lambda v: 100 * v.layer)
    assert layer_overhead(per_layer, view) == 300


def test_view_alive_without_exits():
    spent = torch.zeros(2, 3)
    view = LayerView(0, 4, torch.zeros(2, 3, 8), torch.zeros(2, 3, 8), spent, spent, spent, torch.ones(2, 1),
                     None, None)
    assert view.alive().all() and view.alive().shape == (2, 3)
    view.exited = torch.tensor([[True, False, False], [False, False, True]])
    assert torch.equal(view.alive(), ~view.exited)
