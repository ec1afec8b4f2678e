"""Where the compute goes: per-layer usage, effective depth and per-token depth on hand-made decisions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anee.core.actions import DROP, EXIT, PROCESS, SKIP
from anee.evaluation.depth import effective_depth, layer_usage, per_token_depth

P, S, E, D = PROCESS, SKIP, EXIT, DROP
# four tokens over six layers, as two sequences of two tokens
TOKENS = [[P, P, S, P, E, E],  # 3 processed, the last at layer 3: depth 4
          [P, P, P, P, P, P],  # 6, depth 6
          [P, S, D, S, S, P],  # 2, depth 6 (a DROPPED layer is not processed)
          [S, S, D, E, E, E]]  # 0, depth 0


def decisions() -> torch.Tensor:
    return torch.tensor(TOKENS, dtype=torch.int8).view(2, 2, 6)


def test_layer_usage():
    usage = layer_usage(decisions())
    assert usage.shape == (6,) and usage.dtype == np.float32
    assert usage.tolist() == [0.75, 0.5, 0.25, 0.5, 0.25, 0.5]
    assert np.array_equal(layer_usage(decisions().view(4, 6)), usage)  # any leading shape
    assert layer_usage(torch.full((3, 5), SKIP)).tolist() == [0.0] * 5


def test_effective_depth():
    out = effective_depth(decisions(), 0.6)
    assert set(out) == {"budget", "mean_layers_processed", "mean_effective_depth", "std_layers_processed",
                        "first2_usage", "last2_usage", "middle_usage"}
    assert out["budget"] == 0.6
    assert out["mean_layers_processed"] == pytest.approx((3 + 6 + 2 + 0) / 4)
    assert out["mean_effective_depth"] == pytest.approx((4 + 6 + 6 + 0) / 4)
    assert out["std_layers_processed"] == pytest.approx(2.5)  # sample std of 3, 6, 2, 0: sqrt(18.75 / 3)
    assert out["first2_usage"] == pytest.approx((0.75 + 0.5) / 2)
    assert out["last2_usage"] == pytest.approx((0.25 + 0.5) / 2)
    assert out["middle_usage"] == pytest.approx((0.25 + 0.5) / 2)
    full = effective_depth(torch.zeros(1, 3, 6, dtype=torch.int8), 1.0)
    assert (full["mean_effective_depth"] == 6 and full["mean_layers_processed"] == 6
            and full["std_layers_processed"] == 0)
    assert full["first2_usage"] == full["middle_usage"] == full["last2_usage"] == 1.0


def test_per_token_depth():
    d = torch.tensor([TOKENS[0], TOKENS[3], TOKENS[2]], dtype=torch.int8)
    df = per_token_depth(d, ["The", " cat", " sat"], text=7)
    assert df.to_dict("records") == [
        {"text": 7, "position": 0, "token": "The", "layers_processed": 3, "last_processed": 4},
        {"text": 7, "position": 1, "token": " cat", "layers_processed": 0, "last_processed": 0},
        {"text": 7, "position": 2, "token": " sat", "layers_processed": 2, "last_processed": 6}]
