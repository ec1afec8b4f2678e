"""Warm start: the policy learns separable rules (from features, and from the residual stream only),
and the static baseline is the per-layer majority."""

import numpy as np
import pytest

from anee.engine.profiler import FEATURES
from anee.engine.training.warmstart import WarmStartConfig, train_warmstart


def test_warmstart_learns_separable_rule():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, len(FEATURES))).astype(np.float32)
    y = np.where(x[:, 0] > 0.5, 2, np.where(x[:, 1] > 0, 0, 1))
    policy, info = train_warmstart(x, y, np.arange(3000) % 10, WarmStartConfig(epochs=15, seed=0))
    assert info["val_accuracy"] > 0.9
    assert info["confusion"].sum() == 600 and info["confusion"].shape == (3, 3)


def test_warmstart_learns_a_rule_only_the_stream_shows():
    """Labels set by the direction of the residual stream: the read learns them, features alone cannot."""
    rng = np.random.default_rng(1)
    h = rng.normal(size=(3000, 24)).astype(np.float32) * rng.uniform(0.5, 3.0, size=(3000, 1)).astype(np.float32)
    x = rng.normal(size=(3000, len(FEATURES))).astype(np.float32)
    y = (h[:, 3] > 0).astype(int)  # SKIP where the stream points one way
    groups = np.arange(3000) % 10
    reading, info = train_warmstart(x, y, groups, WarmStartConfig(epochs=15, rank=4, seed=0), hidden=h)
    _, blind = train_warmstart(x, y, groups, WarmStartConfig(epochs=15, seed=0))
    assert info["val_accuracy"] > 0.9 and blind["val_accuracy"] < 0.6
    assert reading.rank == 4 and reading.hidden_size == 24
    with pytest.raises(ValueError, match="hidden states exactly"):
        train_warmstart(x, y, groups, WarmStartConfig(rank=4))


def test_static_accuracy_is_the_per_layer_majority():
    import pandas as pd

    from anee.engine.training.warmstart import static_accuracy

    # windows 0-3 train, window 4 held out; layer 1 is mostly SKIP in training, layer 2 mostly PROCESS
    rows = ([(w, 0.5, 1, lab) for w in range(4) for lab in (1, 1, 0)]
            + [(w, 0.5, 2, lab) for w in range(4) for lab in (0, 0, 1)])
    rows += [(4, 0.5, 1, 1), (4, 0.5, 1, 0), (4, 0.5, 2, 0), (4, 0.5, 2, 0)]
    df = pd.DataFrame(rows, columns=["window", "budget", "layer", "label"])
    assert static_accuracy(df) == pytest.approx(3 / 4)
