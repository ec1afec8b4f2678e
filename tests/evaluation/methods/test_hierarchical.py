"""The registered hierarchical method loads its checkpoint."""

from __future__ import annotations

import pytest
from _anee_tiny import hier_llama as tiny_llama
from _anee_tiny import randomize
from _anee_tiny import token_ids as ids
from conftest import VOCAB

from anee.core.adapters import adapter_for
from anee.engine.executor import AdaptiveExecutor
from anee.evaluation.context import EvalContext
from anee.evaluation.methods import METHODS
from anee.evaluation.methods.hierarchical import checkpoint_path
from anee.hierarchical.model import HierarchicalModel


def test_registered_method_loads_checkpoint(tmp_path):
    base = tiny_llama()
    model = randomize(HierarchicalModel(base))
    model.save(checkpoint_path(tmp_path, "tuned"))
    ctx = EvalContext(base, None, AdaptiveExecutor(adapter_for(base)), calibration_ids=ids(1, 512, 8),
                      extras={"checkpoint_dir": tmp_path})
    x = ids(1, 64, 9)
    full = METHODS["hierarchical"](ctx, capacity=1.0, exits=False)(x)
    assert (full.logits - base(x).logits).abs().max() <= 1e-4
    out = METHODS["hierarchical"](ctx, capacity=0.55, exits=True, calib_window=64)(x)
    assert out.logits.shape == (1, 64, VOCAB) and 0 < out.cost.total_saved < 1
    fast = METHODS["hierarchical"](ctx, target_speedup=1.2, calib_window=64)
    assert 0.1 <= fast.capacity <= 0.9
    with pytest.raises(ValueError, match="not found.*notebook 05"):
        METHODS["hierarchical"](ctx, lens="logit")
