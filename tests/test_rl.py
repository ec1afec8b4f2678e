import numpy as np
import pytest
import torch
from _anee_tiny import tiny_setup

import anee.controller_methods  # noqa: F401
from anee.controller import HeuristicController, PolicyNet
from anee.perplexity import METHODS, EvalContext, evaluate
from anee.policy_io import save_policy
from anee.profiler import FEATURES
from anee.rl import RLConfig, log_prob, train_reinforce
from anee.traces import WarmStartConfig, collect_traces, to_dataset, token_kl, train_warmstart


@pytest.fixture(scope="module")
def tiny():
    return tiny_setup(layers=6)


def test_token_kl_exact():
    a = torch.randn(1, 3, 5)
    assert torch.allclose(token_kl(a, a), torch.zeros(1, 3), atol=1e-6)
    p, q = torch.tensor([[[0.0, 0.0]]]), torch.log(torch.tensor([[[0.25, 0.75]]]))
    assert token_kl(p, q).item() == pytest.approx(0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75), abs=1e-6)


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


def test_warmstart_learns_separable_rule():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, len(FEATURES))).astype(np.float32)
    y = np.where(x[:, 0] > 0.5, 2, np.where(x[:, 1] > 0, 0, 1))
    policy, info = train_warmstart(x, y, np.arange(3000) % 10, WarmStartConfig(epochs=15, seed=0))
    assert info["val_accuracy"] > 0.9
    assert info["confusion"].sum() == 600 and info["confusion"].shape == (3, 3)


def test_log_prob_only_free_decisions():
    torch.manual_seed(0)
    p = PolicyNet(len(FEATURES))
    f = torch.randn(1, 4, len(FEATURES))
    raw = torch.tensor([[0, 1, 2, 0]])
    free = torch.tensor([[True, False, True, False]])
    total, _ = log_prob(p, [{"features": f, "raw": raw, "free": free}])
    ref = torch.log_softmax(p(f), -1).gather(-1, raw.unsqueeze(-1)).squeeze(-1) * free
    assert torch.allclose(total, ref) and total[0, 1] == 0 and total[0, 3] == 0
    total.sum().backward()
    assert p.net[0].weight.grad is not None and p.mean.grad is None


def test_reinforce_runs_deterministically(tiny):
    _, ex, prof, ids = tiny
    torch.manual_seed(0)
    start = PolicyNet(len(FEATURES))
    windows = ids[0, :128].reshape(4, 32)
    cfg = RLConfig(steps=3, batch=2, seq_len=16, lr=1e-2, budget_low=0.4, budget_high=0.9)
    p1, h1 = train_reinforce(ex, start, prof, windows, cfg)
    p2, h2 = train_reinforce(ex, start, prof, windows, cfg)
    assert [h["reward"] for h in h1] == [h["reward"] for h in h2] and len(h1) == 3
    assert all(0.35 - 1e-9 <= h["layer_fraction"] <= 0.95 + 1e-9 for h in h1)
    assert not torch.equal(p1.net[0].weight, start.net[0].weight)  # it learned something
    assert torch.equal(p1.net[0].weight, p2.net[0].weight)


def test_frontier_methods_use_checkpoints(tiny, tmp_path):
    model, ex, prof, ids = tiny
    torch.manual_seed(0)
    ctx = EvalContext(model, None, ex, ids, extras={"checkpoint_dir": tmp_path})
    with pytest.raises(ValueError, match="notebook 03"):
        METHODS["anee_warmstart"](ctx, budget=0.5)
    prof.save(tmp_path / "profiler.safetensors")
    save_policy(tmp_path / "warmstart.safetensors", PolicyNet(len(FEATURES)), "warmstart", 6)
    save_policy(tmp_path / "rl.safetensors", PolicyNet(len(FEATURES)), "rl", 6)
    for name in ("anee_heuristic", "anee_warmstart", "anee_rl"):
        r = evaluate(METHODS[name](ctx, budget=0.5), ids[:, :65], window=32, stride=32)
        assert abs(r.layer_fraction - 0.5) <= 0.05 and r.layer_saved_net < 1 - r.layer_fraction
    with pytest.raises(ValueError, match="checkpoint_dir"):
        METHODS["anee_heuristic"](EvalContext(model, None, ex), budget=0.5)
