"""Layer importance: Block Influence's order, removal perplexity, the greedy removal order, and
importance from a searched removal order that the profiler (and so every plan) ranks layers by."""

import math

import pytest
import torch
import torch.nn.functional as F
from _anee_tiny import removal_setup, tiny_setup
from conftest import VOCAB

from anee.core.actions import ASK, DROP, PROCESS
from anee.engine.controllers.plan import PlanConfig, budget_plan, marginal_order
from anee.engine.importance import (
    block_influence,
    greedy_removal_order,
    order_by_rank,
    order_importance,
    removal_order,
    removal_ppl,
    removal_scores,
)
from anee.engine.prefix_memo import PrefixMemo
from anee.engine.profiler import Profiler


@pytest.fixture(scope="module")
def tiny():
    return tiny_setup()


def test_block_influence_is_one_minus_mean_cosine(tiny):
    _, ex, _, _ = tiny
    ids = torch.randint(0, VOCAB, (1, 64), generator=torch.Generator().manual_seed(0))
    hs = ex.forward(ids[:, :32], collect_hidden=True, with_logits=False).hidden_states
    hs2 = ex.forward(ids[:, 32:], collect_hidden=True, with_logits=False).hidden_states
    by_hand = torch.stack([1 - torch.cat([F.cosine_similarity(a[i].double(), a[i + 1].double(), dim=-1).flatten()
                                          for a in (hs, hs2)]).mean()
                           for i in range(len(hs) - 1)])
    assert torch.allclose(block_influence(ex, ids, window=32), by_hand, atol=1e-12)
    with pytest.raises(ValueError, match="shorter than one window"):
        block_influence(ex, ids[:, :10], window=32)


def test_order_importance_gives_the_order_back_to_the_profiler_and_the_plan(tiny):
    _, ex, prof, _ = tiny
    order = [4, 1, 5, 0, 3, 2]
    importance = order_importance(order)
    assert importance.tolist() == pytest.approx([0.6, 0.2, 1.0, 0.8, 0.0, 0.4])
    assert removal_order(importance) == order
    profiler = Profiler(prof.entropy, importance, ex)
    assert profiler.removal_order == order
    plan = budget_plan(profiler.rank, 0.5, PlanConfig(marginal=1, skip_share=1.0), skip_fraction=0.0)
    assert plan.tolist() == [PROCESS, DROP, PROCESS, PROCESS, DROP, ASK]  # DROP 4 and 1 (first in the order), ASK 5
    for bad in ([0, 1, 1, 2, 3, 4], [1, 2, 3, 4, 5, 6]):
        with pytest.raises(ValueError, match="every layer"):
            order_importance(bad)
    with pytest.raises(ValueError, match="one value per layer"):
        Profiler(prof.entropy, order_importance([0, 1, 2]), ex)


def test_order_by_rank_puts_the_least_important_first_and_keeps_index_order_on_ties():
    rank = torch.tensor([2, 0, 3, 1])  # 0 = most important
    assert order_by_rank(rank).tolist() == [2, 0, 3, 1]
    assert order_by_rank(torch.tensor([1, 0, 1, 0])).tolist() == [0, 2, 1, 3]  # ties: lower index first
    plan = torch.tensor([PROCESS, ASK, ASK, ASK])
    assert marginal_order(plan, rank) == [2, 3, 1]  # the asked layers 1, 2, 3 in the same order


ORDER = [2, 1, 3, 0]
setup = pytest.fixture(scope="module")(removal_setup)


def _ppl(logits_per_window, windows) -> float:
    nll = sum(float(F.cross_entropy(lg[0, :-1], w[1:], reduction="sum")) for lg, w in zip(logits_per_window, windows))
    return math.exp(nll / (windows.numel() - len(windows)))


@torch.no_grad()
def test_removal_ppl_scores_each_window_with_the_layers_removed(setup):
    model, ex, bx, _, windows = setup
    full = _ppl([model(w[None]).logits for w in windows], windows)
    assert removal_ppl(ex, windows, ORDER, 0) == pytest.approx(full, rel=1e-5)
    assert removal_ppl(bx, windows, ORDER, 0) == pytest.approx(full, rel=1e-5)  # nothing removed: no bypass runs
    pattern = torch.tensor([PROCESS, DROP, DROP, PROCESS], dtype=torch.int8).expand(1, 16, 4)  # the first 2 of ORDER
    for executor in (ex, bx):
        by_hand = _ppl([executor.forward(w[None], decisions=pattern).logits for w in windows], windows)
        assert removal_ppl(executor, windows, ORDER, 2) == pytest.approx(by_hand, rel=1e-6)
    assert removal_ppl(bx, windows, ORDER, 2) != pytest.approx(removal_ppl(ex, windows, ORDER, 2), rel=1e-4)


@torch.no_grad()
def test_greedy_removal_order_adds_the_cheapest_layer_given_the_chosen(setup):
    _, ex, bx, _, windows = setup
    fallback = [3, 0, 2, 1]
    order = greedy_removal_order(bx, windows, 2, fallback)
    chosen = []
    for _ in range(2):  # by hand: every remaining layer tried on top of the chosen ones
        scores = {i: removal_ppl(bx, windows, chosen + [i], len(chosen) + 1) for i in range(4) if i not in chosen}
        chosen.append(min(scores, key=scores.get))
    assert order == chosen + [i for i in fallback if i not in chosen] and sorted(order) == [0, 1, 2, 3]
    assert greedy_removal_order(bx, windows, 2, fallback, memo=PrefixMemo()) == order  # the memo changes no number
    assert greedy_removal_order(bx, windows, 0, fallback) == fallback
    # the bypass matters
    assert greedy_removal_order(ex, windows, 4, fallback) != greedy_removal_order(bx, windows, 4, fallback)
    with pytest.raises(ValueError, match="steps must be in 0..4"):
        greedy_removal_order(bx, windows, 5, fallback)
    with pytest.raises(ValueError, match="order of all 4 layers"):
        greedy_removal_order(bx, windows, 1, [0, 1, 2])


@torch.no_grad()
def test_removal_scores_are_removal_ppl_bit_for_bit(setup):
    _, ex, bx, _, windows = setup
    for executor in (ex, bx):
        for removed in ([], [2], [3, 1]):
            scores = removal_scores(executor, windows, removed, [i for i in range(4) if i not in removed])
            assert sorted(scores) == [i for i in range(4) if i not in removed]
            assert scores == {i: removal_ppl(executor, windows, removed + [i], len(removed) + 1) for i in scores}


@torch.no_grad()
def test_greedy_candidates_are_the_first_layers_of_the_fallback(setup):
    _, _, bx, _, windows = setup
    scores = removal_scores(bx, windows, [], range(4))
    best = min(scores, key=scores.get)
    fallback = [i for i in range(4) if i != best] + [best]  # the best single removal last in the fallback
    assert greedy_removal_order(bx, windows, 1, fallback)[0] == best
    narrowed = greedy_removal_order(bx, windows, 1, fallback, candidates=3)
    others = {i: s for i, s in scores.items() if i != best}
    assert narrowed == [min(others, key=others.get)] + [i for i in fallback if i != narrowed[0]]
    assert (greedy_removal_order(bx, windows, 2, fallback, candidates=4)
            == greedy_removal_order(bx, windows, 2, fallback))
    with pytest.raises(ValueError, match="candidates must be in 2..4"):
        greedy_removal_order(bx, windows, 2, fallback, candidates=1)
    with pytest.raises(ValueError, match="candidates must be in 1..4"):
        greedy_removal_order(bx, windows, 1, fallback, candidates=5)
