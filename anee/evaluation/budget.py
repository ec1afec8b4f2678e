"""Budget adherence: does a controller spend what its energy budget says, on held-out text?"""

from __future__ import annotations

import pandas as pd
import torch

from ..engine.executor import AdaptiveExecutor
from ..engine.prefix_memo import shared_prefixes


@torch.no_grad()
def budget_adherence(executor: AdaptiveExecutor, controllers: dict, ids: torch.Tensor, budgets: list[float], window: int = 256) -> pd.DataFrame:
    """Realized layer fraction and net saving per controller and budget over ids [1, N] (non-overlapping windows)."""
    rows = []
    chunks = [ids[:, i : i + window] for i in range(0, ids.shape[1] - 1, window)]
    with shared_prefixes(executor):  # the layers every plan processes run once per chunk (same numbers)
        for name, controller in controllers.items():
            for b in budgets:
                layer = full = over = 0.0
                for c in chunks:
                    rep = executor.forward(c, controller=controller, budget=b, with_logits=False).trace.cost(executor.cost)
                    layer += float(rep.layer_macs.sum())
                    full += float(rep.full_layer_macs.sum())
                    over += float(rep.overhead_macs.sum())
                frac = layer / full
                rows.append({"controller": name, "budget": b, "layer_fraction": frac, "layer_saved_net": 1 - (layer + over) / full,
                             "overhead_fraction": over / full, "abs_error": abs(frac - b)})
    return pd.DataFrame(rows)
