"""Per-token KL divergences and entropies, against torch's own formulation and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anee.core.divergence import entropy, kl_from_logprobs, token_kl


def test_token_kl_exact():
    a = torch.randn(1, 3, 5)
    assert torch.allclose(token_kl(a, a), torch.zeros(1, 3), atol=1e-6)
    p, q = torch.tensor([[[0.0, 0.0]]]), torch.log(torch.tensor([[[0.25, 0.75]]]))
    assert token_kl(p, q).item() == pytest.approx(0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75), abs=1e-6)


def test_token_kl_equals_torch_kl_div_and_kl_from_logprobs():
    g = torch.Generator().manual_seed(0)
    reference, logits = 3 * torch.randn(2, 5, 11, generator=g), 3 * torch.randn(2, 5, 11, generator=g)
    kl = token_kl(reference, logits)
    assert kl.shape == (2, 5) and kl.dtype == torch.float32
    ref_logp = F.log_softmax(reference, -1)
    torch_kl = F.kl_div(F.log_softmax(logits, -1), ref_logp, log_target=True, reduction="none").sum(-1)
    assert torch.allclose(kl, torch_kl, atol=1e-5)
    assert torch.allclose(kl_from_logprobs(ref_logp, logits), kl, atol=1e-5)
    p, q = reference[1, 3].double().softmax(-1), logits[1, 3].double().softmax(-1)
    assert kl[1, 3].item() == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-5)  # KL(reference || model)
    assert (kl > 0).all() and not torch.allclose(token_kl(logits, reference), kl, atol=1e-3)  # not symmetric
    half = token_kl(reference.half(), logits.half())  # low-precision logits are scored in float32
    assert half.dtype == torch.float32 and torch.allclose(half, kl, atol=5e-2)


def test_kl_of_identical_distributions_is_zero():
    x = 5 * torch.randn(3, 4, 7, generator=torch.Generator().manual_seed(1))
    zero = torch.zeros(3, 4)
    assert torch.allclose(token_kl(x, x), zero, atol=1e-6)
    assert torch.allclose(token_kl(x, x + 2.5), zero, atol=1e-5)  # a constant shift of the logits is the same distribution
    assert torch.allclose(kl_from_logprobs(F.log_softmax(x, -1), x), zero, atol=1e-6)


def test_entropy_closed_forms():
    V = 13
    assert torch.allclose(entropy(torch.zeros(2, 3, V)), torch.full((2, 3), math.log(V)))
    assert torch.allclose(entropy(torch.full((4, V), -7.5)), torch.full((4,), math.log(V)))  # uniform at any level
    assert entropy(torch.zeros(V, dtype=torch.float16)).dtype == torch.float32
    assert entropy(torch.tensor([0.5, 0.25, 0.25]).log()).item() == pytest.approx(1.5 * math.log(2), abs=1e-6)
    peaked = torch.tensor([100.0] + [0.0] * (V - 1))
    assert entropy(peaked).item() == pytest.approx(0.0, abs=1e-6)
