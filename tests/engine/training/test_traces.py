"""Trace collection: the heuristic's traces and their dataset, nested counterfactual outcomes,
hindsight allocations and the traces that play them, the per-budget summary."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _anee_tiny import tiny_setup

from anee.core.actions import DROP, PROCESS, SKIP
from anee.core.divergence import token_kl
from anee.engine.controllers.heuristic import HeuristicController
from anee.engine.controllers.pacing import PacingConfig
from anee.engine.controllers.plan import PlanConfig, marginal_order
from anee.engine.profiler import FEATURES
from anee.engine.training.traces import collect_traces, to_dataset


@pytest.fixture(scope="module")
def tiny10():
    return tiny_setup(layers=10)


@pytest.fixture(scope="module")
def tiny():
    return tiny_setup(layers=6)


def test_collect_traces_and_dataset(tiny, tmp_path):
    _, ex, prof, ids = tiny
    windows = ids[0, :64].reshape(2, 32)
    tr = collect_traces(ex, HeuristicController(prof), windows, [0.5, 0.9])
    n = len(tr["action"])
    assert all(len(v) == n for v in tr.values()) and set(FEATURES) <= set(tr)
    assert set(np.unique(tr["action"])) <= {0, 1, 2} and np.allclose(np.unique(tr["budget"]), [0.5, 0.9])
    # every token is asked at layer 0, once per budget and window
    assert (tr["layer"] == 0).sum() == 2 * 2 * 32
    assert tr["token_fraction"][tr["budget"] == 0.9].mean() > tr["token_fraction"][tr["budget"] == 0.5].mean()
    ds = to_dataset(tr)
    ds.to_parquet(str(tmp_path / "t.parquet"))
    from datasets import Dataset
    back = Dataset.from_parquet(str(tmp_path / "t.parquet"))
    assert back.num_rows == n and np.allclose(back["token_kl"], tr["token_kl"])


def test_trace_dataset_keeps_the_stream(tmp_path):
    from datasets import Dataset

    from anee.engine.training.traces import hidden_column

    tr = {"action": np.array([0, 1, 1]), "token_kl": np.array([0.1, 0.2, 0.3]),
          "hidden": np.arange(12, dtype=np.float16).reshape(3, 4)}
    to_dataset(tr).to_parquet(str(tmp_path / "h.parquet"))
    back = Dataset.from_parquet(str(tmp_path / "h.parquet"))
    h = hidden_column(back)
    assert h.shape == (3, 4) and h.dtype == np.float32 and np.array_equal(h, tr["hidden"].astype(np.float32))
    assert back["action"] == [0, 1, 1]


def test_nested_outcomes_match_direct_runs(tiny10):
    """Option j of a budget's plan = its j least important marginal layers SKIPPED for every token;
    j = 0 processes them all, j = m is static removal of the dropped and the marginal layers. The
    passes resume from each other's shared layers, so each must equal its direct run bit for bit."""
    import torch.nn.functional as F

    from anee.engine.training.traces import nested_outcomes

    _, ex, prof, ids = tiny10
    cfg = PlanConfig(marginal=3)
    windows = ids[0, :64].reshape(2, 32)
    oc = nested_outcomes(ex, prof, cfg, windows, [0.6, 1.0])
    assert sorted(oc[oc.budget == 0.6].skips.unique()) == [0, 1, 2, 3] and set(oc[oc.budget == 1.0].skips) == {0}
    assert len(oc) == 2 * 32 * (4 + 1)
    plan = HeuristicController(prof, plan=cfg).plan(torch.tensor([[0.6]]), 10)
    order = marginal_order(plan, prof.rank)
    assert [int(prof.rank[i]) for i in order] == sorted((int(prof.rank[i]) for i in order), reverse=True)
    w = windows[1:2]
    full = ex.forward(w).logits
    for j in range(4):
        skipped = set(order[:j]) | set((plan == DROP).nonzero().flatten().tolist())
        pattern = torch.tensor([SKIP if i in skipped else PROCESS for i in range(10)],
                               dtype=torch.int8).expand(1, 32, 10)
        logits = ex.forward(w, decisions=pattern).logits
        rows = oc[(oc.window == 1) & (oc.budget == 0.6) & (oc.skips == j)].sort_values("token")
        assert torch.equal(torch.tensor(rows.token_kl.to_numpy()), token_kl(full, logits)[0])
        nll = F.cross_entropy(logits[0, :-1], w[0, 1:], reduction="none")
        assert torch.equal(torch.tensor(rows.token_nll.to_numpy()[:-1], dtype=torch.float32), nll)
        assert np.isnan(rows.token_nll.to_numpy()[-1])
    assert (oc[(oc.budget == 1.0)].token_kl.abs() < 1e-5).all()  # budget 1.0: nothing asked, the full model


def test_allocation_traces_play_the_allocation_and_record_the_stream(tiny10):
    """Every token skips exactly its allocated number of marginal layers, the least important ones;
    the recorded residual stream is the input of that layer in a teacher-forced run of the same
    decisions, and the recorded KL is that run's."""
    import pandas as pd

    from anee.engine.training.traces import allocation_traces, to_dataset

    _, ex, prof, ids = tiny10
    cfg = PlanConfig(marginal=3)
    windows = ids[0, :64].reshape(2, 32)
    skips = torch.randint(0, 4, (2, 32), generator=torch.Generator().manual_seed(0))
    alloc = pd.DataFrame({"window": np.repeat([0, 1], 32), "budget": 0.6, "token": np.tile(np.arange(32), 2),
                          "skips": skips.flatten().numpy()})
    tr = allocation_traces(ex, prof, cfg, windows, alloc, PacingConfig(slack=0.5))
    assert (len(tr["label"]) == 2 * 32 * 3 and tr["hidden"].shape == (2 * 32 * 3, 32)
            and tr["hidden"].dtype == np.float16)
    df = pd.DataFrame({k: v for k, v in tr.items() if k != "hidden"})
    per_token = df.assign(s=df.label == SKIP).groupby(["window", "token"]).s.sum().to_numpy()
    assert np.array_equal(per_token, skips.flatten().numpy())
    plan = HeuristicController(prof, plan=cfg).plan(torch.tensor([[0.6]]), 10)
    order = marginal_order(plan, prof.rank)
    w1 = df.window.to_numpy() == 1
    d = plan.expand(32, 10).clone()
    for slot, layer in enumerate(order):
        d[:, layer] = torch.where(skips[1] > slot, SKIP, PROCESS)
    out = ex.forward(windows[1:2], decisions=d.to(torch.int8).unsqueeze(0), collect_hidden=True)
    for layer in order:
        rows = np.flatnonzero(w1 & (df.layer.to_numpy() == layer))
        assert np.allclose(tr["hidden"][rows].astype(np.float32), out.hidden_states[layer][0].numpy(),
                           atol=2e-2, rtol=1e-2)
    kl = token_kl(ex.forward(windows[1:2]).logits, out.logits)[0]
    first = df[w1 & (df.layer == order[0])].sort_values("token")
    assert torch.allclose(torch.tensor(first.token_kl.to_numpy()), kl, atol=1e-5)
    assert to_dataset(tr).features["hidden"].length == 32


def test_hindsight_allocation_gives_tolerant_tokens_the_skips():
    import pandas as pd

    from anee.engine.training.traces import hindsight_allocation

    # two tokens, two marginal layers: token 0 tolerates both skips, token 1 neither
    kl = {(0, 0): 0.10, (0, 1): 0.11, (0, 2): 0.13, (1, 0): 0.10, (1, 1): 0.60, (1, 2): 1.50}
    rows = pd.DataFrame([{"window": 0, "budget": 0.5, "token": t, "skips": j, "token_kl": v}
                         for (t, j), v in kl.items()])
    alloc, prices = hindsight_allocation(rows, skip_share=0.5)
    assert alloc.sort_values("token").skips.tolist() == [2, 0]  # mean 1 = half of the 2 marginal layers
    assert prices.marginal.tolist() == [2] and prices.mean_skips.tolist() == [1.0]
    assert 0.015 - 1e-6 <= prices.price.item() <= 0.5 + 1e-6  # between token 0's and token 1's marginal cost
    assert hindsight_allocation(rows, skip_share=1.0)[0].skips.tolist() == [2, 2]
    assert hindsight_allocation(rows, skip_share=0.0)[0].skips.tolist() == [0, 0]


def test_trace_summary_per_budget():
    import pandas as pd

    from anee.core.actions import EXIT
    from anee.engine.training.traces import trace_summary

    rows = pd.DataFrame({"budget": [0.5, 0.5, 0.9, 0.5, 0.5, 0.9],
                         "action": [PROCESS, SKIP, PROCESS, SKIP, EXIT, PROCESS],
                         "free": [True, True, True, False, False, False],
                         "token_kl": [0.1, 0.2, 0.0, 0.3, 0.4, 0.05],
                         "token_fraction": [0.5, 0.4, 1.0, 0.6, 0.5, 0.9],
                         "layer": [0, 1, 0, 2, 3, 1]})  # other columns are ignored
    s = trace_summary(rows)
    assert list(s.columns) == ["budget", "rows", "process", "skip", "exit", "free", "token_kl", "token_fraction"]
    assert s.budget.tolist() == [0.5, 0.9] and s.rows.tolist() == [4, 2]
    assert s.process.tolist() == pytest.approx([0.25, 1.0])
    assert s.skip.tolist() == pytest.approx([0.5, 0.0]) and s["exit"].tolist() == pytest.approx([0.25, 0.0])
    assert s.free.tolist() == pytest.approx([0.5, 0.5])
    assert (s.token_kl.tolist() == pytest.approx([0.25, 0.025])
            and s.token_fraction.tolist() == pytest.approx([0.5, 0.95]))
