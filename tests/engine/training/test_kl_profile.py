"""Fitting the KL-profile controller: the ridge map is least squares, the table's choices are the
ones the fitted controller then makes, and they save what the table says they do."""

import numpy as np
import pytest
import torch
from _anee_tiny import tiny_setup

from anee.core.actions import DROP, SKIP
from anee.engine.training.kl_profile import fit_kl_profile, ridge_map


def test_ridge_map_is_least_squares_with_an_unpenalised_bias():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(200, 5, generator=g, dtype=torch.float64), torch.ones(200, 1, dtype=torch.float64)], 1)
    w = torch.randn(6, 3, generator=g, dtype=torch.float64)
    assert torch.allclose(ridge_map(x, x @ w, 0.0), w)
    shrunk = ridge_map(x, x @ w, 10.0)
    assert shrunk[:5].norm() < w[:5].norm() / 2  # the ridge shrinks the weights ...
    assert torch.allclose((x @ shrunk).mean(0), (x @ w).mean(0))  # ... but not the bias: the mean is kept


@pytest.fixture(scope="module")
def fitted():
    _, ex, prof, ids = tiny_setup(layers=8)
    windows = [ids[:, 32 * i : 32 * (i + 1)] for i in range(8)]
    return ex, windows, fit_kl_profile(ex, windows, prof.removal_order, max_depth=5, budgets=(0.6, 0.7, 0.8, 0.9, 0.95),
                                       max_dropped=3)


def test_the_fitted_controller_makes_the_tables_choices_and_saves_what_it_says(fitted):
    ex, windows, fit = fitted
    c = fit.controller
    assert c.anchor_layer == min(c.order) and len(c.order) == 5 and c.window == 32
    assert fit.ridge in fit.ridge_scores and fit.ridge_scores[fit.ridge] == min(fit.ridge_scores.values())
    assert len(fit.correlation) == 5 and all(-1 <= r <= 1 for r in fit.correlation)
    selection = windows[6:]  # the windows the table was calibrated on (the map was fitted on the first 6)
    for row in fit.table:
        saved = []
        depths = []
        for w in selection:
            out = ex.forward(w, controller=c, budget=row["budget"])
            d = out.trace.decisions[0, :-1]  # the table scores positions 0..T-2
            assert ((d == DROP).sum(-1) == row["dropped"]).all()
            depths.append(((d == SKIP) | (d == DROP)).sum(-1).double())
            rep = out.trace.cost(ex.cost)
            saved.append(1 - (rep.layer_macs[0, :-1] + rep.overhead_macs[0, :-1]) / rep.full_layer_macs[0, :-1])
        assert float(torch.cat(depths).mean()) == pytest.approx(row["mean_depth"], abs=1e-9)
        assert float(torch.cat(saved).mean()) == pytest.approx(row["net_saved"], abs=0.01)
        assert row["net_saved"] >= 1 - row["budget"] - 0.01
    assert [r["budget"] for r in fit.table] == sorted(r["budget"] for r in fit.table)


def test_bad_arguments_name_the_fix(fitted):
    ex, windows, _ = fitted
    with pytest.raises(ValueError, match="max_depth"):
        fit_kl_profile(ex, windows, [1, 2, 3], max_depth=3)
    with pytest.raises(ValueError, match="at least two windows"):
        fit_kl_profile(ex, windows[:1], [1, 2, 3], max_depth=2)
    with pytest.raises(ValueError, match="fit_windows"):
        fit_kl_profile(ex, windows[:2], [1, 2, 3], max_depth=2, fit_windows=2)
    with pytest.raises(ValueError, match="no budget in 0.1..0.2 is reachable"):
        fit_kl_profile(ex, windows[:2], [1, 2, 3], max_depth=2, budgets=(0.1, 0.2))
    assert np.isfinite([r["price"] for r in fit_kl_profile(ex, windows[:2], [1, 2, 3], max_depth=2,
                                                           budgets=(0.9,)).table]).all()
