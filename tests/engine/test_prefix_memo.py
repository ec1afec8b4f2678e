"""shared_prefixes: passes on the same chunk compute their common fully processed layers once, and
every output (logits, trace, cache, hidden states) is bit for bit what a pass without it gives."""

import pytest
import torch
from _anee_tiny import random_bypass, tiny_setup

from anee import AdaptiveExecutor
from anee.core.actions import DROP, EXIT, PROCESS, SKIP
from anee.core.kv_cache import KVCache
from anee.engine.controllers.base import FullController
from anee.engine.controllers.heuristic import HeuristicController
from anee.engine.controllers.learned import LearnedController
from anee.engine.controllers.pacing import PacingConfig
from anee.engine.controllers.plan import PlanConfig
from anee.engine.controllers.policy import PolicyNet
from anee.engine.prefix_memo import WindowPasses, shared_prefixes, uniform_key
from anee.engine.profiler import FEATURES

L = 10


@pytest.fixture(scope="module")
def tiny():
    model, ex, prof, ids = tiny_setup(layers=L)
    bypass = random_bypass("diag_lowrank", ex.adapter.dims.hidden, L, rank=4, seed=3)
    # min_layers=3: every plan processes layers 0-2 for every token, so passes share at least those
    executor = AdaptiveExecutor(ex.adapter, min_layers=3, bypass=bypass)
    torch.manual_seed(0)
    policy = PolicyNet(len(FEATURES), 32, hidden_size=32, rank=4)
    learned = LearnedController(policy, prof, pacing=PacingConfig(slack=0.5), plan=PlanConfig(marginal=4))
    static = torch.full((2, 24, L), PROCESS, dtype=torch.int8)
    static[:, ::3, 5:] = SKIP  # layers 0-4 processed by every token
    passes = [dict(controller=HeuristicController(prof, plan=PlanConfig(marginal=4)), budget=0.7),
              dict(controller=HeuristicController(prof, plan=PlanConfig(marginal=4)), budget=0.5),
              dict(controller=learned, budget=0.6), dict(decisions=static), dict(controller=FullController())]
    return executor, ids[:, :48].reshape(2, 24), passes


def same(a, b):
    assert torch.equal(a.logits, b.logits) and torch.equal(a.trace.decisions, b.trace.decisions)
    assert torch.equal(a.trace.overhead_macs, b.trace.overhead_macs) and torch.equal(a.trace.context, b.trace.context)
    assert len(a.hidden_states) == len(b.hidden_states) == L + 1
    assert all(torch.equal(x, y) for x, y in zip(a.hidden_states, b.hidden_states))
    assert a.cache.dropped == b.cache.dropped and a.cache.length == b.cache.length
    for ka, kb, va, vb in zip(a.cache.keys, b.cache.keys, a.cache.values, b.cache.values):
        assert (ka is None) == (kb is None)
        assert ka is None or (torch.equal(ka, kb) and torch.equal(va, vb))


def test_every_pass_is_bit_identical_inside_and_outside(tiny):
    executor, windows, passes = tiny
    direct = [executor.forward(windows, collect_hidden=True, **p) for p in passes]
    with shared_prefixes(executor):
        for _ in range(2):  # the second round restores even more from the memo
            for p, d in zip(passes, direct):
                same(executor.forward(windows, collect_hidden=True, **p), d)
    for p, d in zip(passes[3:], direct[3:]):  # and a pass after the block is the same again
        same(executor.forward(windows, collect_hidden=True, **p), d)


def test_the_shared_layers_run_once(tiny, monkeypatch):
    """The FFN runs only for layers no earlier pass on the chunk has run in full: the full model's
    second pass runs none, a plan's pass only its layers after the shared prefix."""
    executor, windows, passes = tiny
    calls = []
    mlp = executor.adapter.mlp
    monkeypatch.setattr(executor.adapter, "mlp", lambda layer, x: calls.append(layer) or mlp(layer, x))
    with shared_prefixes(executor):
        executor.forward(windows, controller=FullController())
        assert sorted(calls) == list(range(L))
        calls.clear()
        executor.forward(windows, controller=FullController())
        assert calls == []
        executor.forward(windows, **passes[0])
        assert calls and min(calls) >= 3  # min_layers=3: layers 0-2 came from the memo
        calls.clear()
        executor.forward(windows[:1], controller=FullController())  # another chunk: nothing to share
        assert sorted(calls) == list(range(L))
    calls.clear()
    executor.forward(windows, controller=FullController())  # after the block: no memo
    assert sorted(calls) == list(range(L))


def test_continuations_and_decode_steps_do_not_take_part(tiny):
    """A chunk that continues a cache (a decode step, a governed continuation of a prompt) runs as always."""
    executor, windows, passes = tiny
    prompt = executor.forward(windows[:, :8])
    outside = executor.forward(windows[:, 8:], cache=prompt.cache.copy(), **passes[2])
    step = executor.forward(windows[:, 8:9], cache=prompt.cache.copy(), **passes[0])
    with shared_prefixes(executor) as memo:
        same_logits = executor.forward(windows[:, 8:], cache=prompt.cache.copy(), **passes[2])
        same_step = executor.forward(windows[:, 8:9], cache=prompt.cache.copy(), **passes[0])
        assert memo._prefixes == {}
    assert torch.equal(outside.logits, same_logits.logits) and torch.equal(step.logits, same_step.logits)


def test_the_executor_gets_its_own_memo_back_even_after_an_error(tiny):
    executor, windows, _ = tiny
    other = AdaptiveExecutor(executor.adapter)
    with pytest.raises(RuntimeError, match="boom"):
        with shared_prefixes(executor, None, other) as memo:
            assert executor.prefix_memo is memo and other.prefix_memo is memo
            raise RuntimeError("boom")
    assert executor.prefix_memo is None and other.prefix_memo is None
    with pytest.raises(ValueError, match="must be"):  # bad input still fails as it does outside
        with shared_prefixes(executor):
            executor.forward(windows, controller=FullController(), budget=2.0)
    assert KVCache(L).keys == [None] * L


def seen_features(executor, windows, p):
    """The profiler features the learned controller saw at each asked layer (they read h and the previous
    layer's input)."""
    c = p["controller"]
    c.record = True
    c.reset_records()
    executor.forward(windows, **p)
    features = [r["features"].clone() for r in c.records]
    c.record = False
    c.reset_records()
    return features


def test_the_controller_sees_the_same_state_after_a_restored_prefix(tiny):
    executor, windows, passes = tiny
    outside = seen_features(executor, windows, passes[2])
    with shared_prefixes(executor):
        executor.forward(windows, controller=FullController())  # every layer in the memo
        inside = seen_features(executor, windows, passes[2])
    assert outside and len(inside) == len(outside) and all(torch.equal(a, b) for a, b in zip(inside, outside))


class Recording:
    """The executor, noting the layer each pass starts at."""

    def __init__(self, executor):
        self.executor, self.starts = executor, []

    def forward(self, *args, resume=None, **kwargs):
        self.starts.append(0 if resume is None else resume[0])
        return self.executor.forward(*args, resume=resume, **kwargs)


def test_window_passes_resume_from_the_longest_shared_prefix(tiny):
    """Nested skip sets, each pass resumed where it first differs from an earlier one (a skipped layer
    included): the logits and layer inputs of a pass from the embedding, bit for bit; a decision row that
    differs between tokens is refused."""
    executor, ids, _ = tiny
    x = ids[:1]
    recording = Recording(executor)
    passes = WindowPasses(recording, x)
    order = (6, 8, 4, 9)
    rows = [[SKIP if j in order[:k] else PROCESS for j in range(L)] for k in range(len(order) + 1)]
    for i, row in enumerate(rows):
        decisions = torch.tensor(row, dtype=torch.int8).expand(1, x.shape[1], L)
        direct = executor.forward(x, decisions=decisions, collect_hidden=True)
        assert torch.equal(passes.forward(decisions), direct.logits)
        assert all(torch.equal(a, b) for a, b in zip(passes.layer_inputs(i), direct.hidden_states, strict=True))
    # the full pass from the embedding; {6} at 6; {6, 8} at 8 (after the pass of {6}); {4, 6, 8} at 4; {4, 6, 8, 9} at 9
    assert recording.starts == [0, 6, 8, 4, 9]
    mixed = torch.full((1, x.shape[1], L), PROCESS, dtype=torch.int8)
    mixed[:, ::2, 5] = SKIP
    with pytest.raises(ValueError, match="same for every token"):
        passes.forward(mixed)


def test_window_passes_count_a_skip_every_token_takes_as_a_drop(tiny):
    """A layer SKIPPED by every token writes K/V no token reads: the pass equals the one that DROPS it,
    bit for bit (with the bypass), so a DROP-for-SKIP twin resumes from the last layer (only the head
    runs) and a pass that adds a SKIP to a DROPPED prefix resumes at that SKIP. Not after an EXIT."""
    executor, ids, _ = tiny
    x = ids[:1]
    T = x.shape[1]

    def uniform(row):
        return torch.tensor(row, dtype=torch.int8).expand(1, T, L)

    skip = [PROCESS] * L
    skip[4], skip[7] = SKIP, SKIP
    drop = [DROP if a == SKIP else a for a in skip]
    more = list(drop)
    more[8] = SKIP
    recording = Recording(executor)
    passes = WindowPasses(recording, x)
    for row in (skip, drop, more):
        direct = executor.forward(x, decisions=uniform(row)).logits
        assert torch.equal(passes.forward(uniform(row)), direct)
    assert torch.equal(executor.forward(x, decisions=uniform(skip)).logits,
                       executor.forward(x, decisions=uniform(drop)).logits)
    assert recording.starts == [0, L, 8]
    exit_then_skip = torch.tensor([PROCESS, SKIP, EXIT, SKIP, DROP] + [EXIT] * (L - 5), dtype=torch.int8)
    assert uniform_key(exit_then_skip).tolist() == [PROCESS, DROP, EXIT, SKIP, DROP] + [EXIT] * (L - 5)
