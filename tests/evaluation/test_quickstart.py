"""The quickstart measurements: prompts, matching prefixes, top-1 agreement, perplexity through the wrapper."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from _anee_tiny import tiny_tokenizer
from conftest import tiny_llama, wrap

from anee.evaluation.quickstart import (
    api_perplexity,
    frontier_row,
    generation_summary,
    held_out_prompts,
    matching_prefix,
    prompt_generations,
    top1_agreement,
)


@pytest.fixture(scope="module")
def wrappers():
    model = tiny_llama(n_layer=6)
    tok = tiny_tokenizer()
    full = wrap(model, controller="full")
    full.tokenizer = tok
    budget = wrap(model, controller="budget", exit_budget_threshold=0.0)
    budget.tokenizer = tok
    return full, budget


def test_matching_prefix_counts_leading_equal_tokens():
    t = torch.tensor
    assert matching_prefix(t([5, 6, 7, 8]), t([5, 6, 9, 8])) == 2
    assert matching_prefix(t([5, 6, 7]), t([5, 6, 7])) == 3
    assert matching_prefix(t([4, 6]), t([5, 6])) == 0
    assert matching_prefix(t([5, 6, 7]), t([5, 6])) == 2  # a shorter one (an early EOS) ends the match


def test_held_out_prompts_are_fixed_distinct_body_text():
    prompts = held_out_prompts(20, words=8)
    assert prompts == held_out_prompts(20, words=8)
    assert len(set(prompts)) == 20
    assert all(not p.startswith("=") and len(p.split()) <= 8 for p in prompts)
    assert all(" @-@ " not in p and " ," not in p and "<unk>" not in p for p in prompts)
    with pytest.raises(ValueError, match="fewer than n"):
        held_out_prompts(10**6)
    with pytest.raises(ValueError, match="n >= 1"):
        held_out_prompts(0)


def test_generations_of_the_full_model_match_it_and_a_low_budget_stays_within_it(wrappers):
    full, budget = wrappers
    prompts = ["w3 w4 w5 w6", "w10 w11"]
    table = prompt_generations({"full": full, "budget": budget}, full, prompts, [1.0, 0.4],
                               max_new_tokens=6, prefill="adaptive")
    assert len(table) == 2 * 2 * 2 and set(table.controller) == {"full", "budget"}
    same = table[(table.controller == "full") | (table.budget == 1.0)]
    assert (same.matching_prefix == same.new_tokens).all() and (same.new_tokens == 6).all()
    low = table[(table.controller == "budget") & (table.budget == 0.4)]
    assert (low.layer_fraction <= 0.4 + 1e-9).all()
    # the second prompt is left-padded in the batch: its row is what the wrapper gives for a batch
    text, direct = budget.generate(prompt=prompts, max_new_tokens=6, energy_budget=0.4, return_result=True,
                                   eos_token_id=None, prefill="adaptive")
    row = low[low.prompt_index == 1].iloc[0]
    assert row.text == full.tokenizer.decode(direct.new_tokens[1], skip_special_tokens=True)
    reference = full.generate(prompt=prompts, max_new_tokens=6, return_result=True, eos_token_id=None)[1].new_tokens[1]
    assert row.matching_prefix == matching_prefix(direct.new_tokens[1], reference)
    real = direct.padding_mask[:, : direct.trace.decisions.shape[1]].clone()
    real[0] = False
    assert row.layer_fraction == pytest.approx(direct.trace.cost(budget.cost_model, real).layer_fraction)
    assert "layer_fraction_with_prompt" not in table  # prefill="adaptive": the budget governs every position
    # prefill="full": the prompt runs every layer, the first new token is the full model's, and the
    # fractions are those of the generated tokens (the prompt's counted beside them)
    table = prompt_generations({"budget": budget}, full, prompts, [0.4], max_new_tokens=6, prefill="full")
    direct = budget.generate(prompt=prompts, max_new_tokens=6, energy_budget=0.4, return_result=True, eos_token_id=None,
                             prefill="full")[1]
    row = table[table.prompt_index == 1].iloc[0]
    assert (table.prefill == "full").all() and (table.matching_prefix >= 1).all()
    real = direct.padding_mask[:, : direct.trace.decisions.shape[1]].clone()
    real[0] = False
    assert row.layer_fraction_with_prompt == pytest.approx(direct.trace.cost(budget.cost_model, real).layer_fraction)
    real[:, : direct.sequences.shape[1] - 6] = False
    assert row.layer_fraction == pytest.approx(direct.trace.cost(budget.cost_model, real).layer_fraction)
    assert row.layer_fraction < row.layer_fraction_with_prompt


def test_top1_agreement_is_one_for_the_full_model_and_counted_exactly_below(wrappers):
    full, budget = wrappers
    ids = torch.randint(2, 97, (1, 100), generator=torch.Generator().manual_seed(3))
    table = top1_agreement({"full": full, "budget": budget}, full, ids, [1.0, 0.3], window=32)
    assert (table.positions == 96).all()  # three whole windows; the last 4 tokens are left out
    at_full = table[(table.controller == "full") | (table.budget == 1.0)]
    assert (at_full.top1_agreement == 1.0).all()
    low = table[(table.controller == "budget") & (table.budget == 0.3)].iloc[0]
    with torch.no_grad():
        expected = sum(int((budget(ids[:, i : i + 32], energy_budget=0.3).logits.argmax(-1)
                            == full.model(ids[:, i : i + 32]).logits.argmax(-1)).sum()) for i in (0, 32, 64)) / 96
    assert low.top1_agreement == pytest.approx(expected) and low.top1_agreement < 1.0
    assert low.layer_fraction <= 0.3 + 1e-9
    with pytest.raises(ValueError, match="ids must be"):
        top1_agreement({"full": full}, full, ids[:, :10], [1.0], window=32)


def test_api_perplexity_at_budget_one_is_the_models_own(wrappers):
    full, budget = wrappers
    ids = torch.randint(2, 97, (1, 64), generator=torch.Generator().manual_seed(4))
    table = api_perplexity(budget, ids, [1.0, 0.5], window=32, stride=32)
    with torch.no_grad():  # stride = window: each window scores its last 31 tokens (its first has no context)
        nll = sum(float(full.model(ids[:, i : i + 32], labels=ids[:, i : i + 32]).loss) * 31 for i in (0, 32))
    row = table[table.budget == 1.0].iloc[0]
    assert row.tokens == 62 and row.ppl == pytest.approx(math.exp(nll / 62), rel=1e-5)
    assert table.loc[table.budget == 0.5, "layer_fraction"].item() <= 0.5 + 1e-9


def test_frontier_row_picks_the_bypass_variant_of_one_seed():
    frontier = pd.DataFrame({"method": ["anee_rl+bypass", "anee_rl+bypass", "anee_rl", "anee_heuristic+bypass"],
                             "setting": ["budget=0.8"] * 4, "seed": [0, 1, 0, -1], "ppl": [30.0, 31.0, 50.0, 33.0]})
    assert frontier_row(frontier, "rl", 0.8).ppl == 30.0
    assert frontier_row(frontier, "rl", 0.8, seed=1).ppl == 31.0
    assert frontier_row(frontier, "heuristic", 0.8).ppl == 33.0
    with pytest.raises(ValueError, match="PLANNED_BUDGETS"):
        frontier_row(frontier, "rl", 0.7)


def test_generation_summary_means_the_columns_it_has_and_keeps_the_worst_prompt():
    rows = pd.DataFrame({"controller": ["a", "a", "a", "b"], "budget": [0.8, 0.8, 0.8, 0.8],
                         "layer_fraction": [0.7, 0.8, 0.9, 1.0], "matching_prefix": [1, 4, 10, 32], "text": ["x"] * 4})
    summary = generation_summary(rows)
    assert list(summary.columns) == ["controller", "budget", "layer_fraction", "matching_prefix", "matching_prefix_min",
                                     "matching_prefix_median"]
    a = summary.set_index("controller").loc["a"]
    assert a.layer_fraction == pytest.approx(0.8) and a.matching_prefix == 5 and a.matching_prefix_min == 1
    assert a.matching_prefix_median == 4
    with_prompt = generation_summary(rows.assign(layer_fraction_with_prompt=[0.9, 0.9, 1.0, 1.0]), by=("controller",))
    assert with_prompt.layer_fraction_with_prompt.tolist() == pytest.approx([0.9333333333, 1.0])
    with pytest.raises(ValueError, match="matching_prefix"):
        generation_summary(rows.drop(columns="matching_prefix"))
