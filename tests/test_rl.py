import numpy as np
import pytest
import torch
from _anee_tiny import tiny_setup

from anee.controller import HeuristicController, PacingConfig, PlanConfig, PolicyNet
from anee.controller_methods import learned_controller, shared_plan
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
    assert shared_plan(ctx) == PlanConfig()  # no warm-start yet: the default plan
    plan, pacing = PlanConfig(marginal=2), PacingConfig(slack=0.08)
    save_policy(tmp_path / "warmstart.safetensors", PolicyNet(len(FEATURES)), "warmstart", 6, plan=plan, pacing=pacing)
    save_policy(tmp_path / "warmstart_profiler_only.safetensors", PolicyNet(len(FEATURES)), "warmstart", 6, plan=plan, pacing=pacing)
    save_policy(tmp_path / "rl.safetensors", PolicyNet(len(FEATURES), 32, 32, 4), "rl", 6, plan=plan, pacing=pacing)
    assert shared_plan(ctx) == plan  # the heuristic runs under the learned controllers' plan
    rl = learned_controller(ctx, "rl.safetensors")
    assert (rl.plan_config, rl.pacing, rl.policy.rank) == (plan, pacing, 4)
    for name in ("anee_heuristic", "anee_warmstart", "anee_warmstart_profiler_only", "anee_rl"):
        r = evaluate(METHODS[name](ctx, budget=0.5), ids[:, :65], window=32, stride=32)
        assert abs(r.layer_fraction - 0.5) <= 0.08 and r.layer_saved_net < 1 - r.layer_fraction
    with pytest.raises(ValueError, match="checkpoint_dir"):
        METHODS["anee_heuristic"](EvalContext(model, None, ex), budget=0.5)


def test_warmstart_learns_a_rule_only_the_stream_shows():
    """Labels set by the direction of the residual stream: the read learns them, features alone cannot."""
    rng = np.random.default_rng(1)
    h = rng.normal(size=(3000, 24)).astype(np.float32) * rng.uniform(0.5, 3.0, size=(3000, 1)).astype(np.float32)
    x = rng.normal(size=(3000, len(FEATURES))).astype(np.float32)
    y = (h[:, 3] > 0).astype(int)  # SKIP where the stream points one way
    groups = np.arange(3000) % 10
    reading, info = train_warmstart(x, y, groups, WarmStartConfig(epochs=15, rank=4, seed=0), hidden=h)
    _, blind = train_warmstart(x, y, groups, WarmStartConfig(epochs=15, seed=0))
    assert info["val_accuracy"] > 0.9 and blind["val_accuracy"] < 0.6
    assert reading.rank == 4 and reading.hidden_size == 24
    with pytest.raises(ValueError, match="hidden states exactly"):
        train_warmstart(x, y, groups, WarmStartConfig(rank=4))


def test_log_prob_reaches_the_read():
    torch.manual_seed(0)
    p = PolicyNet(len(FEATURES), 32, hidden_size=16, rank=3)
    rec = {"features": torch.randn(1, 4, len(FEATURES)), "hidden": torch.randn(1, 4, 16), "raw": torch.tensor([[0, 1, 1, 0]]),
           "free": torch.ones(1, 4, dtype=torch.bool)}
    total, _ = log_prob(p, [rec])
    ref = torch.log_softmax(p(rec["features"], rec["hidden"]), -1).gather(-1, rec["raw"].unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(total, ref)
    total.sum().backward()
    assert p.read.weight.grad is not None and p.read.weight.grad.abs().sum() > 0


def test_dual_price_per_budget_pushes_share_to_the_plan(tiny):
    """A policy that never skips: the price of each training budget starts at its own initial value
    and rises (a skip is worth more) while the greedy share of SKIPs is below the plan's."""
    from anee.controller import PacingConfig, PlanConfig
    from anee.rl import price_to_lam

    _, ex, prof, ids = tiny
    torch.manual_seed(0)
    p = PolicyNet(len(FEATURES))
    with torch.no_grad():
        p.net[-1].bias.copy_(torch.tensor([20.0, 0.0, 0.0]))  # PROCESS everywhere
    cfg = RLConfig(steps=6, batch=1, seq_len=16, lr=1e-6, lam_lr=1.0, mu=0.0, self_critical=True, shared_budget=True,
                   budgets=(0.5, 0.7), lam_by_budget={0.5: 2.0, 0.7: 5.0})
    _, hist = train_reinforce(ex, p, prof, ids[0, :128].reshape(4, 32), cfg, pacing=PacingConfig(slack=0.5), plan=PlanConfig())
    for b, start in ((0.5, 2.0), (0.7, 5.0)):
        lams = [h["lam"] for h in hist if h["budget"] == b]
        assert lams[0] == pytest.approx(start) and all(later > earlier for earlier, later in zip(lams, lams[1:]))
        assert all(h["greedy_skip_share"] == 0.0 for h in hist if h["budget"] == b)
    assert price_to_lam(0.1, ex.cost, 6) == pytest.approx(0.1 * 6 / (1 - ex.cost.kv_only / ex.cost.layer_static))


def test_trace_dataset_keeps_the_stream(tmp_path):
    from datasets import Dataset

    from anee.traces import hidden_column

    tr = {"action": np.array([0, 1, 1]), "token_kl": np.array([0.1, 0.2, 0.3]),
          "hidden": np.arange(12, dtype=np.float16).reshape(3, 4)}
    to_dataset(tr).to_parquet(str(tmp_path / "h.parquet"))
    back = Dataset.from_parquet(str(tmp_path / "h.parquet"))
    h = hidden_column(back)
    assert h.shape == (3, 4) and h.dtype == np.float32 and np.array_equal(h, tr["hidden"].astype(np.float32))
    assert back["action"] == [0, 1, 1]


def test_static_accuracy_is_the_per_layer_majority():
    import pandas as pd

    from anee.traces import static_accuracy

    # windows 0-3 train, window 4 held out; layer 1 is mostly SKIP in training, layer 2 mostly PROCESS
    rows = [(w, 0.5, 1, lab) for w in range(4) for lab in (1, 1, 0)] + [(w, 0.5, 2, lab) for w in range(4) for lab in (0, 0, 1)]
    rows += [(4, 0.5, 1, 1), (4, 0.5, 1, 0), (4, 0.5, 2, 0), (4, 0.5, 2, 0)]
    df = pd.DataFrame(rows, columns=["window", "budget", "layer", "label"])
    assert static_accuracy(df) == pytest.approx(3 / 4)
