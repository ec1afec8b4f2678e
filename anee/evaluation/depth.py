"""Where the compute goes (notebook 07): per-layer usage, per-token depth, the sandwich profile."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..core.actions import PROCESS


def layer_usage(decisions: torch.Tensor) -> np.ndarray:
    """Fraction of tokens PROCESSING each layer, from decisions [..., L]."""
    return (decisions == PROCESS).reshape(-1, decisions.shape[-1]).float().mean(0).cpu().numpy()


def effective_depth(decisions: torch.Tensor, budget: float) -> dict:
    """Summary of decisions [B, T, L] at one budget: mean and spread of layers processed per token,
    mean effective depth (index of the last processed layer + 1), and the mean usage of the first
    two, the last two and the middle layers (is there a dense 'sandwich'?)."""
    usage = layer_usage(decisions)
    processed = decisions == PROCESS
    L = decisions.shape[-1]
    idx = torch.arange(L, device=decisions.device).expand_as(processed)
    last = torch.where(processed, idx + 1, 0).amax(-1).float()
    return {"budget": budget, "mean_layers_processed": processed.sum(-1).float().mean().item(),
            "mean_effective_depth": last.mean().item(), "std_layers_processed": processed.sum(-1).float().std().item(),
            "first2_usage": usage[:2].mean(), "last2_usage": usage[-2:].mean(), "middle_usage": usage[2:-2].mean()}


def per_token_depth(decisions: torch.Tensor, tokens: list[str], text: int) -> pd.DataFrame:
    """One row per token of one text (decisions [T, L]): layers processed and the last processed layer."""
    rows = []
    for t, tok in enumerate(tokens):
        processed = decisions[t] == PROCESS
        rows.append({"text": text, "position": t, "token": tok, "layers_processed": int(processed.sum()),
                     "last_processed": int(processed.nonzero().max()) + 1 if processed.any() else 0})
    return pd.DataFrame(rows)



