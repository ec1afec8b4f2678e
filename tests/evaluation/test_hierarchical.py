"""Notebook 05's tables on hand-made results (known percentages) and the causality check on a tiny
hierarchical model."""

from __future__ import annotations

import pytest
import torch
from _anee_tiny import hier_llama, randomize, token_ids

from anee.evaluation.hierarchical import (
    CAPACITY_COLUMNS,
    EXIT_COLUMNS,
    SettingResult,
    capacity_table,
    causality_check,
    exit_table,
)
from anee.hierarchical.model import HierarchicalModel


def result(**row) -> SettingResult:
    """A setting's result; only its table row matters here."""
    return SettingResult(dict(row), torch.ones(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64),
                         torch.full((10,), 4), torch.zeros(4, dtype=torch.float64))


def row(capacity, ppl, realized, compute, layer, exited=0.0, depth=4.0):
    """A row as `evaluate_setting` writes it."""
    return dict(setting=f"c={capacity}", capacity=capacity, exits=exited > 0, lens="tuned", ppl=ppl, tokens=500,
                realized_capacity=realized, layer_saved_net=1 - 1 / layer, total_saved_net=1 - 1 / compute,
                layer_speedup=layer, compute_speedup=compute, exited_fraction=exited, mean_depth=depth)


def test_capacity_table():
    reference = result(**row(1.0, 20.0, 1.0, 1.0, 1.0))
    results = {0.7: result(**row(0.7, 21.0, 0.71, 1.2, 1.3)), 0.4: result(**row(0.4, 25.0, 0.42, 1.8, 2.1))}
    table = capacity_table(reference, results)
    assert list(table.columns) == CAPACITY_COLUMNS
    assert table.capacity.tolist() == [1.0, 0.7, 0.4]  # the reference first
    assert table.ppl_increase_pct.tolist() == pytest.approx([0.0, 5.0, 25.0])
    assert table.realized_capacity.tolist() == [1.0, 0.71, 0.42]
    assert table.compute_speedup.tolist() == [1.0, 1.2, 1.8] and table.layer_speedup.tolist() == [1.0, 1.3, 2.1]
    assert table.seed_speedup_tinyllama.tolist() == ["1.0x", "1.3x", "1.8x"]
    assert table.seed_ppl_increase_tinyllama.tolist() == ["0 %", "~3 %", "~12 %"]
    assert table.tokens.tolist() == [500] * 3
    assert "ppl_increase_pct" not in reference.row and "ppl_increase_pct" not in results[0.7].row  # rows not modified
    unclaimed = capacity_table(reference, {0.5: result(**row(0.5, 23.0, 0.5, 1.4, 1.5))})
    assert unclaimed.seed_speedup_tinyllama.tolist() == ["1.0x", "n/a"]  # the seed made no claim at 0.5


def test_exit_table():
    results = {"exits (logit lens)": result(**row(1.0, 22.0, 1.0, 1.25, 1.3, exited=0.3, depth=4.5)),
               "exits + routing": result(**row(0.7, 24.0, 0.69, 1.5, 1.7, exited=0.25, depth=5.0))}
    table = exit_table(results, reference_ppl=20.0)
    assert list(table.columns) == EXIT_COLUMNS
    assert table.variant.tolist() == ["exits (logit lens)", "exits + routing"]
    assert table.ppl_increase_pct.tolist() == pytest.approx([10.0, 20.0])
    assert table.exited_fraction.tolist() == [0.3, 0.25] and table.mean_depth.tolist() == [4.5, 5.0]
    assert table.capacity.tolist() == [1.0, 0.7] and table.compute_speedup.tolist() == [1.25, 1.5]


@pytest.fixture(scope="module")
def model():
    return randomize(HierarchicalModel(hier_llama()))


def test_causality_check_on_a_tiny_model(model):
    thresholds = model.calibrate(token_ids(2, 64, 3), 0.55, exits=True)
    ids = token_ids(1, 96, 11)
    check = causality_check(model, ids, thresholds, length=64)
    assert set(check) == {"first_half_ffn_identical", "first_half_exits_identical", "first_half_max_logit_diff",
                          "second_half_decisions_changed"}
    assert check["first_half_ffn_identical"] is True and check["first_half_exits_identical"] is True
    assert 0.0 <= check["first_half_max_logit_diff"] <= 1e-5
    assert check["second_half_decisions_changed"] is True  # the other text did change the later decisions
    same = torch.cat([ids[:, :64], ids[:, 32:64]], 1)  # "other text" equal to the original second half
    control = causality_check(model, same, thresholds, length=64)
    assert control["second_half_decisions_changed"] is False and control["first_half_max_logit_diff"] == 0.0
