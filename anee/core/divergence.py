"""The one home for per-token divergences and entropies of next-token distributions (nats)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(`logits`) over the last axis [...]."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Next-token log-probabilities [..., V], in float32 whatever the logits' dtype."""
    return torch.log_softmax(logits.float(), -1)


def token_kl(reference_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(reference || model) per position [...]: how far `logits` are from the full model's."""
    return kl_log_probs(log_probs(reference_logits), log_probs(logits))


def nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Summed negative log-likelihood (nats) of `targets` [T] under `logits` [T, V] (row t scores
    target t), in float32: the numerator of a perplexity."""
    return float(F.cross_entropy(logits.float(), targets, reduction="sum"))


def nll_log_probs(logp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-position negative log-likelihood of `targets` [...] under `logp` [..., V]: what
    `F.cross_entropy(logits, targets, reduction="none")` gives (bit for bit), from log-probabilities
    already computed for a KL."""
    return -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


class KLReference:
    """One reference distribution (the full model's, over a window) scored against many passes: its
    log-probabilities and probabilities are computed once; `kl(logp)` equals
    `token_kl(reference_logits, logits)` bit for bit for `logp = log_probs(logits)`."""

    def __init__(self, reference_logits: torch.Tensor):
        self.logp = log_probs(reference_logits)
        self.p = self.logp.exp()

    def kl(self, logp: torch.Tensor) -> torch.Tensor:
        return kl_log_probs(self.logp, logp, self.p)


def kl_log_probs(reference_logp: torch.Tensor, logp: torch.Tensor,
                 reference_p: torch.Tensor | None = None) -> torch.Tensor:
    """`token_kl` from both sides' `log_probs`, with the same arithmetic (equal bit for bit), for
    callers that score many passes against one reference (`reference_p`: its `exp()`, computed once
    too) or need the model's log-probabilities for its NLL as well."""
    p = reference_logp.exp() if reference_p is None else reference_p
    return (p * (reference_logp - logp)).sum(-1)

