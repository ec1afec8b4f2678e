import pytest
import torch
from _anee_tiny import tiny_setup

from anee import BudgetController
from anee.cache import KVCache
from anee.controller import (
    EXIT,
    PROCESS,
    SKIP,
    Guards,
    HeuristicConfig,
    HeuristicController,
    LearnedController,
    PacingConfig,
    PolicyNet,
    apply_guards,
)
from anee.policy_io import load_policy, save_policy
from anee.profiler import FEATURES


@pytest.fixture(scope="module")
def tiny():
    return tiny_setup(layers=10)


def _controllers(prof):
    torch.manual_seed(0)
    return {"heuristic": HeuristicController(prof), "learned": LearnedController(PolicyNet(len(FEATURES)), prof)}


@pytest.mark.parametrize("budget", [0.3, 0.5, 0.7, 0.9, 1.0])
def test_budget_band_per_token(tiny, budget):
    _, ex, prof, ids = tiny
    for name, c in _controllers(prof).items():
        out = ex.forward(ids[:, :64].reshape(2, 32), controller=c, budget=budget)
        rep = out.trace.cost(ex.cost)
        frac = rep.layer_macs / rep.full_layer_macs
        assert (frac >= budget - 0.05 - 1e-9).all() and (frac <= min(budget + 0.05, 1.0) + 1e-9).all(), name
        assert abs(rep.layer_fraction - budget) <= 0.05


def test_overhead_charged_per_live_call(tiny):
    _, ex, prof, ids = tiny
    c = _controllers(prof)["learned"]
    out = ex.forward(ids[:, :32], controller=c, budget=0.5)
    d = out.trace.decisions[0]
    first_exit = [(row == EXIT).nonzero().min().item() + 1 if (row == EXIT).any() else 10 for row in d]
    expected = torch.tensor(first_exit, dtype=torch.float64) * c.overhead_macs
    assert torch.equal(out.trace.overhead_macs[0], expected)
    assert c.overhead_macs == prof.overhead_macs + c.policy.macs


def test_parallel_equals_sequential(tiny):
    _, ex, prof, ids = tiny
    c = HeuristicController(prof)
    x = ids[:, :12]
    par = ex.forward(x, controller=c, budget=0.6)
    cache, outs = KVCache(10), []
    for t in range(12):
        outs.append(ex.forward(x[:, t : t + 1], cache=cache, controller=c, budget=0.6))
    seq = torch.cat([o.trace.decisions for o in outs], 1)
    assert torch.equal(par.trace.decisions, seq)
    assert torch.allclose(par.logits, torch.cat([o.logits for o in outs], 1), atol=1e-4)


def test_heuristic_keeps_important_layers_and_checks_shift(tiny):
    _, ex, prof, ids = tiny
    x = ids[:, :32]
    top = int(torch.argmin(prof.rank))  # the most important layer (Block Influence)
    for budget in (0.5, 0.7, 0.9):
        d = ex.forward(x, controller=HeuristicController(prof), budget=budget).trace.decisions[0]
        assert (d[:, top] == PROCESS).all(), budget
    shifted = HeuristicController(prof, HeuristicConfig(entropy_shift=0.05))
    par = ex.forward(x, controller=shifted, budget=0.6).trace.decisions
    cache = KVCache(10)
    seq = torch.cat([ex.forward(x[:, t : t + 1], cache=cache, controller=shifted, budget=0.6).trace.decisions for t in range(32)], 1)
    assert torch.equal(par, seq)
    with pytest.raises(ValueError, match="entropy_shift"):
        HeuristicController(prof, HeuristicConfig(entropy_shift=0.1))


def test_apply_guards_exact():
    raw = torch.tensor([SKIP, PROCESS, EXIT, EXIT, PROCESS])
    g = Guards(must_process=torch.tensor([True, False, False, False, False]),
               may_process=torch.tensor([True, False, True, True, True]),
               may_exit=torch.tensor([True, True, False, True, True]))
    assert apply_guards(raw, g).tolist() == [PROCESS, EXIT, SKIP, EXIT, PROCESS]
    assert g.free.tolist() == [False, False, True, True, True]


def test_full_budget_processes_everything(tiny):
    _, ex, prof, ids = tiny
    c = HeuristicController(prof, pacing=PacingConfig(slack=0.0))
    out = ex.forward(ids[:, :16], controller=c, budget=1.0)
    assert (out.trace.decisions == PROCESS).all()
    assert torch.allclose(out.logits, ex.forward(ids[:, :16]).logits, atol=1e-5)


def test_existing_budget_controller_still_works(tiny):
    _, ex, _, ids = tiny
    rep = ex.forward(ids[:, :16], controller=BudgetController(), budget=0.5).trace.cost(ex.cost)
    assert rep.layer_fraction <= 0.5 + 1e-9


def test_policy_size_and_checkpoint(tmp_path):
    p = PolicyNet(len(FEATURES))
    assert sum(t.numel() for t in p.parameters()) <= 10_000
    assert p.macs == len(FEATURES) * 32 + 32 * 32 + 32 * 3
    path = save_policy(tmp_path / "w.safetensors", p, "warmstart", 30)
    q = load_policy(path, 30, kind="warmstart")
    x = torch.randn(4, len(FEATURES))
    assert torch.equal(p(x), q(x))
    with pytest.raises(ValueError, match="num_layers"):
        load_policy(path, 24)
    with pytest.raises(ValueError, match="kind"):
        load_policy(path, 30, kind="rl")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a valid safetensors.*notebook 03"):
        load_policy(bad, 30)
    from anee.checkpoints import save_checkpoint
    sd = dict(p.state_dict())
    sd["net.0.weight"] = torch.zeros(32, 5)
    import json

    from anee.profiler import VERSION
    meta = {"format": "anee-policy", "version": VERSION, "kind": "rl", "features": json.dumps(list(FEATURES)),
            "num_features": str(len(FEATURES)), "hidden": "32", "num_layers": "30"}
    save_checkpoint(tmp_path / "p.safetensors", sd, meta)
    with pytest.raises(ValueError, match=r"tensor 'net.0.weight' has shape \(32, 5\)"):
        load_policy(tmp_path / "p.safetensors", 30)
    save_checkpoint(tmp_path / "v1.safetensors", dict(p.state_dict()), {**meta, "version": "1"})
    with pytest.raises(ValueError, match="version='1'.*notebook 03"):
        load_policy(tmp_path / "v1.safetensors", 30)
    save_checkpoint(tmp_path / "rank.safetensors", dict(p.state_dict()), {**meta, "hidden_size": "32", "rank": "x"})
    with pytest.raises(ValueError, match="malformed policy metadata"):
        load_policy(tmp_path / "rank.safetensors", 30)


def test_policy_reads_the_residual_stream(tmp_path):
    """A rank-r read of the RMS-normalized stream: within the size limit at SmolLM2's width (576),
    scale-invariant, exact MAC count, required when configured, and saved / loaded with its shape."""
    torch.manual_seed(0)
    p = PolicyNet(len(FEATURES), 32, hidden_size=576, rank=12)
    assert sum(t.numel() for t in p.parameters()) <= 10_000
    assert p.macs == (len(FEATURES) + 12) * 32 + 32 * 32 + 32 * 3 + 576 * 12 + 3 * 576
    f, h = torch.randn(5, len(FEATURES)), torch.randn(5, 576)
    with torch.no_grad():
        p.read.weight.normal_()
        p.h_mean.normal_()
    assert torch.allclose(p(f, h), p(f, 3.0 * h), atol=1e-5)  # the read sees the stream's direction only
    assert not torch.allclose(p(f, h), p(f, torch.randn(5, 576)))
    with pytest.raises(ValueError, match="pass hidden"):
        p(f)
    with pytest.raises(ValueError, match="hidden_size and rank"):
        PolicyNet(len(FEATURES), 32, hidden_size=576, rank=0)
    path = save_policy(tmp_path / "r.safetensors", p, "rl", 30)
    q = load_policy(path, 30)
    assert (q.hidden_size, q.rank) == (576, 12) and torch.equal(p(f, h), q(f, h))


def test_reading_controller_is_causal_and_records_the_stream(tiny):
    """With a residual-stream read, sequential decode still makes the decisions of parallel mode, and
    the records carry the stream each decision saw."""
    _, ex, prof, ids = tiny
    torch.manual_seed(2)
    p = PolicyNet(len(FEATURES), 32, hidden_size=32, rank=4)
    with torch.no_grad():
        p.read.weight.mul_(20.0)  # make the read matter
    c = LearnedController(p, prof, record=True)
    x = ids[:, :12]
    par = ex.forward(x, controller=c, budget=0.6, collect_hidden=True)
    assert [int(r["layer"]) for r in c.records] == list(range(10))
    assert all(torch.equal(r["hidden"], par.hidden_states[int(r["layer"])]) for r in c.records)
    c.record = False
    cache = KVCache(10)
    seq = torch.cat([ex.forward(x[:, t : t + 1], cache=cache, controller=c, budget=0.6).trace.decisions for t in range(12)], 1)
    assert torch.equal(par.trace.decisions, seq)
    assert len(par.trace.decisions.unique()) > 1


def test_skip_offsets_interpolate_and_shift_only_skip(tmp_path):
    p = PolicyNet(len(FEATURES))
    b = torch.tensor([0.2, 0.5, 0.6, 0.7, 1.0])
    assert torch.equal(p.skip_offset(b), torch.zeros(5))  # uncalibrated
    p.set_skip_offsets(torch.tensor([0.5, 0.7]), torch.tensor([1.0, 3.0]))
    assert torch.allclose(p.skip_offset(b), torch.tensor([1.0, 1.0, 2.0, 3.0, 3.0]))  # clamped outside, linear inside
    with pytest.raises(ValueError, match="increasing"):
        p.set_skip_offsets(torch.tensor([0.7, 0.5]), torch.tensor([1.0, 3.0]))
    path = save_policy(tmp_path / "o.safetensors", p, "rl", 30)
    assert torch.equal(load_policy(path, 30).skip_offset(b), p.skip_offset(b))


def test_learned_controller_adds_the_offset_to_skip_only(tiny):
    _, _, prof, _ = tiny
    torch.manual_seed(0)
    p = PolicyNet(len(FEATURES))
    c = LearnedController(p, prof)
    f = torch.randn(2, 3, len(FEATURES))
    f[..., prof.budget_index] = 0.6
    before = c.logits(f)
    p.set_skip_offsets(torch.tensor([0.5, 0.7]), torch.tensor([1.0, 3.0]))
    diff = c.logits(f) - before
    assert torch.allclose(diff[..., SKIP], torch.full((2, 3), 2.0)) and diff[..., PROCESS].abs().max() == 0 and diff[..., EXIT].abs().max() == 0


def test_calibration_brings_the_share_to_the_plan(tiny):
    """A policy that skips almost everywhere: after calibration its greedy share of SKIPs on the
    calibration windows is near the plan's, at each calibrated budget and in between."""
    from anee.controller import PlanConfig, skip_share
    from anee.skip_calibration import calibrate_skip_offsets

    _, ex, prof, ids = tiny
    torch.manual_seed(0)
    p = PolicyNet(len(FEATURES), 32, hidden_size=32, rank=4)
    with torch.no_grad():
        p.net[-1].bias.copy_(torch.tensor([0.0, 3.0, 0.0]))  # SKIP-leaning
    c = LearnedController(p, prof, pacing=PacingConfig(slack=0.5), plan=PlanConfig(marginal=4))
    windows = ids[0, :128].reshape(2, 64)
    table = calibrate_skip_offsets(ex, c, windows, [0.4, 0.7, 1.0])
    assert sorted(table.budget.unique()) == [0.4, 0.7]  # budget 1.0 asks nothing
    first, last = table[table["round"] == 0], table[table["round"] == table["round"].max()]
    assert (first.skip_share > 0.8).all() and ((last.skip_share - 0.5).abs() < 0.1).all()
    between = ex.forward(windows, controller=c, budget=0.55)
    assert abs(skip_share(between.trace.decisions, c.plan(0.55, 10)) - 0.5) < 0.2
    with pytest.raises(ValueError, match="planned"):
        calibrate_skip_offsets(ex, LearnedController(p, prof), windows, [0.5])
