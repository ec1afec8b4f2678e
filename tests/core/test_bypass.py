"""The bypass families: closed-form fits recover maps they can represent, reduced-rank regression
beats a truncated SVD on the fit data, MAC counts, config validation and checkpoints."""

from __future__ import annotations

import pytest
import torch
from _anee_tiny import random_bypass

from anee.core.bypass import (
    BypassBank,
    BypassConfig,
    BypassStats,
    bypass_label,
    check_same_bypass,
    normalized,
    reduced_rank,
)

D, R = 8, 2


def inputs(n: int = 400, seed: int = 0) -> torch.Tensor:
    """Streams h [n, D] with a mean and very different scales per coordinate, so the normalised
    inputs are far from isotropic (a truncated SVD of W is then not the best rank-r map)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-1, 1, D)
    return torch.randn(n, D, generator=g) * scales + 0.5 * torch.randn(D, generator=g)


def stats_of(h: torch.Tensor, u: torch.Tensor) -> BypassStats:
    s = BypassStats(D)
    s.add_(h, u)
    return s


def fitted(family: str, h: torch.Tensor, u: torch.Tensor, rank: int = 0, ridge: float = 0.0) -> BypassBank:
    bank = BypassBank(BypassConfig(family, rank, ridge=ridge), D, 1)
    bank.fit_([stats_of(h, u)])
    return bank


def test_normalized_is_rms_normalisation():
    h = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    assert torch.allclose(normalized(h),
                          torch.tensor([[3.0, 4.0], [0.0, -2.0]]) / torch.tensor([[12.5**0.5], [2.0**0.5]]))


def test_stats_accumulate_gram_cross_and_count():
    h, u = inputs(30), torch.randn(30, D, generator=torch.Generator().manual_seed(1))
    s = BypassStats(D)
    s.add_(h[:10], u[:10])
    s.add_(h[10:].view(4, 5, D), u[10:].view(4, 5, D))  # any leading shape
    x = torch.cat([normalized(h).double(), torch.ones(30, 1, dtype=torch.float64)], 1)
    assert s.count == 30 and s.gram.dtype == torch.float64
    assert torch.allclose(s.gram, x.T @ x) and torch.allclose(s.cross, x.T @ u.double())


@torch.no_grad()
def test_linear_fit_recovers_an_exact_affine_map():
    g = torch.Generator().manual_seed(2)
    W, b = torch.randn(D, D, generator=g), torch.randn(D, generator=g)
    h = inputs()
    u = normalized(h) @ W.T + b
    block = fitted("linear", h, u).blocks[0]
    assert torch.allclose(block.proj.weight, W, atol=1e-4) and torch.allclose(block.proj.bias, b, atol=1e-4)
    bank = fitted("linear", h, u)
    assert torch.allclose(bank.update(0, 3.0 * h), u, atol=1e-4)  # reads h / rms(h): scale-free
    # a ridge shrinks the weights (toward 0), never the bias
    shrunk = fitted("linear", h, u, ridge=10.0).blocks[0]
    assert shrunk.proj.weight.norm() < 0.5 * W.norm()


@torch.no_grad()
def test_diag_lowrank_recovers_a_diagonal_plus_low_rank_map_on_uncorrelated_inputs():
    """Inputs +-c e_i (their coordinates uncorrelated) and a rank-2 part with a zero diagonal: the
    per-coordinate fit is then exact, the residual has rank 2 and reduced-rank regression finds it."""
    g = torch.Generator().manual_seed(3)
    eye = torch.eye(D)
    h = torch.cat([eye * 2.0, -eye * 0.5, eye * 7.0, -eye * 3.0])  # 4 D samples, any scale
    d, b = torch.randn(D, generator=g), torch.randn(D, generator=g)
    left, right = torch.randn(D, R, generator=g), torch.randn(R, D, generator=g)
    left[D // 2 :], right[:, : D // 2] = 0.0, 0.0  # (left @ right) has a zero diagonal, rank 2
    x = normalized(h)
    u = d * x + x @ (left @ right).T + b
    bank = fitted("diag_lowrank", h, u, rank=R)
    block = bank.blocks[0]
    assert torch.allclose(block.diag, d, atol=1e-4)
    assert torch.allclose(block.up.weight @ block.down.weight, left @ right, atol=1e-4)
    assert torch.allclose(bank.update(0, h), u, atol=1e-4)


@torch.no_grad()
def test_diag_lowrank_fit_approaches_a_generic_diagonal_plus_low_rank_map():
    """Alternating least squares: every round lowers the error, the default ten do much better than the
    one-stage fit, and enough rounds recover an exactly diagonal plus rank-r map."""
    from anee.core.bypass import _diag_lowrank_fit

    g = torch.Generator().manual_seed(4)
    h = inputs()
    d, b = torch.randn(D, generator=g), torch.randn(D, generator=g)
    low = torch.randn(D, R, generator=g) @ torch.randn(R, D, generator=g)
    x = normalized(h)
    u = d * x + x @ low.T + b
    s = stats_of(h, u)
    xa = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)

    def error(rounds):
        dd, bb, down, up = _diag_lowrank_fit(s, R, 0.0, rounds)
        return float((dd * x.double() + bb + xa @ down @ up - u.double()).pow(2).mean() / u.double().pow(2).mean())

    errors = [error(r) for r in (1, 2, 5, 10)]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:]))
    assert errors[-1] < errors[0] / 3
    assert error(300) < 1e-8
    bank = fitted("diag_lowrank", h, u, rank=R)  # fit_ runs the default rounds
    assert (float((bank.update(0, h) - u).pow(2).mean() / u.pow(2).mean())
            == pytest.approx(errors[-1], rel=1e-3, abs=1e-6))


def _sq_error(s: BypassStats, coef: torch.Tensor, h: torch.Tensor, u: torch.Tensor) -> float:
    x = torch.cat([normalized(h).double(), torch.ones(len(h), 1, dtype=torch.float64)], 1)
    return float((x @ coef - u.double()).pow(2).sum())


def test_reduced_rank_regression_beats_a_truncated_svd():
    g = torch.Generator().manual_seed(5)
    h = inputs(600)
    W = torch.randn(D, D, generator=g)
    u = normalized(h) @ W.T + 0.3 + 0.05 * torch.randn(600, D, generator=g)
    s = stats_of(h, u)
    coef = s.ridge(0.0)
    for rank in (1, 2, 4):
        down, up = reduced_rank(s, coef, rank)
        assert down.shape == (D + 1, rank) and up.shape == (rank, D)
        assert torch.allclose(up @ up.T, torch.eye(rank, dtype=torch.float64), atol=1e-8)  # orthonormal directions
        U, S, Vh = torch.linalg.svd(coef, full_matrices=False)
        svd = U[:, :rank] @ torch.diag(S[:rank]) @ Vh[:rank]
        rrr, trunc = _sq_error(s, down @ up, h, u), _sq_error(s, svd, h, u)
        assert rrr <= trunc * (1 + 1e-9)
        if rank < D // 2:
            assert rrr < 0.98 * trunc  # anisotropic inputs: strictly better, not the same map
    down, up = reduced_rank(s, coef, D)  # full rank: the least-squares map itself
    assert torch.allclose(down @ up, coef, atol=1e-8)


@torch.no_grad()
def test_mlp_starts_from_the_reduced_rank_linear_map():
    g = torch.Generator().manual_seed(6)
    h = inputs()
    u = normalized(h) @ (0.3 * torch.randn(D, D, generator=g)).T + 0.1
    s = stats_of(h, u)
    bank = fitted("mlp", h, u, rank=R, ridge=1e-2)
    down, up = reduced_rank(s, s.ridge(1e-2), R)
    block = bank.blocks[0]
    assert torch.allclose(block.down.weight, 0.1 * down[:D].T.float())
    assert torch.allclose(block.up.weight, 20.0 * up.T.float())
    assert torch.allclose(block.up.bias, (down[D] @ up).float())
    x = torch.cat([normalized(h).double(), torch.ones(len(h), 1, dtype=torch.float64)], 1)
    linear = (x @ down @ up).float()
    out = bank.update(0, h)
    assert (out - linear).norm() / linear.norm() < 0.15  # a start near the linear map, not the map itself
    # 20 silu(0.1 y) = y + 0.05 y^2 + O(1e-4 y^4): the gap is silu's curvature, nothing else
    y = x @ down
    second_order = (linear.double() + 0.05 * y.pow(2) @ up).float()
    assert (out - second_order).norm() / linear.norm() < 0.01


def test_identity_is_free_and_adds_nothing():
    bank = BypassBank(BypassConfig("identity"), D, 3)
    h = inputs(5)
    assert bank.is_identity and bank.macs == 0 and list(bank.parameters()) == []
    assert torch.equal(bank.update(2, h), torch.zeros_like(h))
    bank.fit_([BypassStats(D)] * 3)  # nothing to fit, even without samples


@pytest.mark.parametrize("family, rank, macs", [("identity", 0, 0), ("linear", 0, D * D),
                                                 ("diag_lowrank", R, D + 2 * R * D),
                                                 ("mlp", R, 2 * R * D)])
def test_mac_counts(family, rank, macs):
    bank = BypassBank(BypassConfig(family, rank), D, 2)
    assert bank.macs == macs and all(b.macs == macs for b in bank.blocks)
    assert BypassConfig(family, rank).label == (family if not rank else f"{family}-{rank}")


@pytest.mark.parametrize("kwargs, match", [
    ({"family": "conv"}, "family must be one of"),
    ({"family": "linear", "target": "attention"}, "target must be one of"),
    ({"family": "linear", "rank": 2}, "rank must be a positive integer"),
    ({"family": "identity", "rank": 1}, "rank must be a positive integer"),
    ({"family": "diag_lowrank", "rank": 0}, "rank must be a positive integer"),
    ({"family": "mlp", "rank": -1}, "rank must be a positive integer"),
    ({"family": "mlp", "rank": 2.0}, "rank must be a positive integer"),
    ({"family": "linear", "ridge": -1e-3}, "ridge must be >= 0"),
    ({"family": "linear", "ridge": float("nan")}, "ridge must be >= 0"),
])
def test_invalid_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BypassConfig(**kwargs)


def test_fit_needs_one_statistic_per_block_and_enough_samples():
    bank = BypassBank(BypassConfig("linear"), D, 2)
    with pytest.raises(ValueError, match="need statistics for 2 blocks, got 1"):
        bank.fit_([BypassStats(D)])
    with pytest.raises(ValueError, match=f"a diag_lowrank-{D + 1} bypass needs rank <= the hidden size {D}: "
                                         "pass a smaller rank"):
        BypassBank(BypassConfig("diag_lowrank", D + 1), D, 2)
    few = stats_of(inputs(D), torch.zeros(D, D))
    with pytest.raises(ValueError, match=f"{D} samples cannot fit a {D}-dimensional bypass"):
        bank.fit_([few, few])


@pytest.mark.parametrize("family, rank", [("linear", 0), ("diag_lowrank", R), ("mlp", R), ("identity", 0)])
def test_checkpoint_round_trip_is_exact(tmp_path, family, rank):
    bank = (random_bypass(family, D, 3, rank=rank, seed=7) if family != "identity"
            else BypassBank(BypassConfig("identity"), D, 3))
    bank.info = {"fit_tokens": 123, "tune_steps": 4}
    path = bank.save(tmp_path / "bypass.safetensors")
    loaded = BypassBank.from_checkpoint(path, D, 3)
    assert loaded.config == bank.config and loaded.info == bank.info and (loaded.hidden, loaded.num_layers) == (D, 3)
    assert loaded.state_dict().keys() == bank.state_dict().keys()
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in bank.state_dict().items())
    h = inputs(6)
    with torch.no_grad():
        assert torch.equal(loaded.update(1, h), bank.update(1, h))
    assert BypassBank.from_checkpoint(path).num_layers == 3  # the shapes can also come from the file


def test_checkpoint_for_another_model_is_refused(tmp_path):
    path = random_bypass("linear", D, 3).save(tmp_path / "bypass.safetensors")
    with pytest.raises(ValueError, match=r"hidden=8 does not match the model's 16.*re-run notebook 02"):
        BypassBank.from_checkpoint(path, 16, 3)
    with pytest.raises(ValueError, match=r"num_layers=3 does not match the model's 4.*re-run notebook 02"):
        BypassBank.from_checkpoint(path, D, 4)
    with pytest.raises(ValueError, match="not found.*re-run notebook 02"):
        BypassBank.from_checkpoint(tmp_path / "missing.safetensors", D, 3)


def test_check_same_bypass_compares_family_and_rank_and_ignores_the_tuned_suffix():
    bank = BypassBank(BypassConfig("diag_lowrank", 4), D, 3)
    assert bypass_label(bank) == "diag_lowrank-4" and bypass_label(None) is None
    check_same_bypass("diag_lowrank-4 tuned", bank, "p.safetensors", "fix")
    check_same_bypass(None, None, "p.safetensors", "fix")
    with pytest.raises(ValueError, match="p.safetensors was trained with the layer bypass 'diag_lowrank-16', "
                                         "the executor runs 'diag_lowrank-4': fix"):
        check_same_bypass("diag_lowrank-16", bank, "p.safetensors", "fix")
    with pytest.raises(ValueError, match="trained with the layer bypass None, the executor runs 'diag_lowrank-4'"):
        check_same_bypass(None, bank, "p.safetensors", "fix")
    with pytest.raises(ValueError, match="trained with the layer bypass 'linear', the executor runs None"):
        check_same_bypass("linear", None, "p.safetensors", "fix")
