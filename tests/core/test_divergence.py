"""Per-token KL divergences and entropies, against torch's own formulation and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anee.core.divergence import (
    KLReference,
    entropy,
    kl_log_probs,
    log_probs,
    nll_log_probs,
    nll_sum,
    token_kl,
)


def test_token_kl_exact():
    a = torch.randn(1, 3, 5)
    assert torch.allclose(token_kl(a, a), torch.zeros(1, 3), atol=1e-6)
    p, q = torch.tensor([[[0.0, 0.0]]]), torch.log(torch.tensor([[[0.25, 0.75]]]))
    assert token_kl(p, q).item() == pytest.approx(0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75), abs=1e-6)


def test_token_kl_equals_torch_kl_div():
    g = torch.Generator().manual_seed(0)
    reference, logits = 3 * torch.randn(2, 5, 11, generator=g), 3 * torch.randn(2, 5, 11, generator=g)
    kl = token_kl(reference, logits)
    assert kl.shape == (2, 5) and kl.dtype == torch.float32
    ref_logp = F.log_softmax(reference, -1)
    torch_kl = F.kl_div(F.log_softmax(logits, -1), ref_logp, log_target=True, reduction="none").sum(-1)
    assert torch.allclose(kl, torch_kl, atol=1e-5)
    # from log-probabilities (a teacher's, computed once): torch's kl_div, bit for bit, gradient included
    x = logits.clone().requires_grad_()
    ours = kl_log_probs(ref_logp, log_probs(x))
    ours.sum().backward()
    ours_grad, x.grad = x.grad, None
    theirs = F.kl_div(F.log_softmax(x, -1), ref_logp, log_target=True, reduction="none").sum(-1)
    theirs.sum().backward()
    assert torch.equal(ours, theirs.detach()) and torch.equal(ours_grad, x.grad)
    p, q = reference[1, 3].double().softmax(-1), logits[1, 3].double().softmax(-1)
    assert kl[1, 3].item() == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-5)  # KL(reference || model)
    assert (kl > 0).all() and not torch.allclose(token_kl(logits, reference), kl, atol=1e-3)  # not symmetric
    half = token_kl(reference.half(), logits.half())  # low-precision logits are scored in float32
    assert half.dtype == torch.float32 and torch.allclose(half, kl, atol=5e-2)


def test_kl_of_identical_distributions_is_zero():
    x = 5 * torch.randn(3, 4, 7, generator=torch.Generator().manual_seed(1))
    zero = torch.zeros(3, 4)
    assert torch.allclose(token_kl(x, x), zero, atol=1e-6)
    # a constant shift of the logits is the same distribution
    assert torch.allclose(token_kl(x, x + 2.5), zero, atol=1e-5)
    assert torch.allclose(kl_log_probs(F.log_softmax(x, -1), log_probs(x)), zero, atol=1e-6)


def test_entropy_closed_forms():
    V = 13
    assert torch.allclose(entropy(torch.zeros(2, 3, V)), torch.full((2, 3), math.log(V)))
    assert torch.allclose(entropy(torch.full((4, V), -7.5)), torch.full((4,), math.log(V)))  # uniform at any level
    assert entropy(torch.zeros(V, dtype=torch.float16)).dtype == torch.float32
    assert entropy(torch.tensor([0.5, 0.25, 0.25]).log()).item() == pytest.approx(1.5 * math.log(2), abs=1e-6)
    peaked = torch.tensor([100.0] + [0.0] * (V - 1))
    assert entropy(peaked).item() == pytest.approx(0.0, abs=1e-6)


def test_reference_and_nll_from_log_probs_equal_token_kl_and_cross_entropy_bit_for_bit():
    """The cached forms the trace and oracle loops use give exactly the numbers of the direct ones."""
    g = torch.Generator().manual_seed(2)
    reference, logits = 4 * torch.randn(1, 9, 37, generator=g), 4 * torch.randn(1, 9, 37, generator=g)
    targets = torch.randint(0, 37, (9,), generator=g)
    logp = log_probs(logits)
    assert torch.equal(KLReference(reference).kl(logp), token_kl(reference, logits))
    assert torch.equal(kl_log_probs(log_probs(reference), logp), token_kl(reference, logits))
    # rows scored from a longer window's log-probabilities equal cross-entropy on the sliced logits
    assert torch.equal(nll_log_probs(logp[0, :-1], targets[1:]),
                       F.cross_entropy(logits[0, :-1], targets[1:], reduction="none"))
    assert nll_log_probs(logp, targets.unsqueeze(0)).shape == (1, 9)
    assert log_probs(logits.half()).dtype == torch.float32


def test_nll_sum_is_the_perplexity_numerator():
    # two positions over a 2-token vocabulary: targets with probabilities 1/4 and 1/2
    logits = torch.log(torch.tensor([[0.25, 0.75], [0.5, 0.5]]))
    assert nll_sum(logits, torch.tensor([0, 1])) == pytest.approx(math.log(4) + math.log(2), abs=1e-6)
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(7, 11, generator=g), torch.randint(0, 11, (7,), generator=g)
    assert nll_sum(x, t) == pytest.approx(float(nll_log_probs(log_probs(x), t).sum()), rel=1e-6)
    half = x.to(torch.bfloat16)  # scored in float32 whatever the logits' dtype
    assert nll_sum(half, t) == float(F.cross_entropy(half.float(), t, reduction="sum"))
    assert isinstance(nll_sum(x, t), float)
