"""The one home for per-token divergences and entropies of next-token distributions (nats)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(`logits`) over the last axis [...]."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def token_kl(reference_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(reference || model) per position [...]: how far `logits` are from the full model's."""
    p = torch.log_softmax(reference_logits.float(), -1)
    q = torch.log_softmax(logits.float(), -1)
    return (p.exp() * (p - q)).sum(-1)


def kl_from_logprobs(reference_logp: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(reference || model) per position from the reference's log-probabilities (computed once
    per batch when many students are scored against one teacher, as in distillation)."""
    q = torch.log_softmax(logits.float(), -1)
    return F.kl_div(q, reference_logp, log_target=True, reduction="none").sum(-1)
