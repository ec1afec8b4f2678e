"""What a user of the README's quickstart gets: each controller `ANEEWrapper` can run by name, at
several energy budgets, measured against the full model the way a reader would notice the
difference (notebooks 01 and 09, issue 15's acceptance).

- `prompt_generations`: greedy text per prompt, controller and budget, with the realized layer
  fraction and how many leading tokens equal the full model's greedy continuation;
- `top1_agreement`: teacher-forced, the share of positions whose top-1 token equals the full
  model's, on WikiText-2 test windows;
- `api_perplexity`: perplexity through the public wrapper (what `anee eval` prints), to be set
  beside notebook 06's row for the same method and budget.

Every number comes from `ANEEWrapper` itself (its executor and controller), never from a
re-assembled method, so these rows are what the quickstart runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import torch

from ..core.data import load_wikitext
from ..engine.arguments import check_prefill
from ..engine.prefix_memo import shared_prefixes
from ..engine.wrapper import ANEEWrapper
from .methods.controllers import executor_method
from .perplexity import evaluate


def held_out_prompts(n: int, words: int = 8, split: str = "test") -> list[str]:
    """The first `words` words of `n` body paragraphs of WikiText-2 `split`, evenly spaced over it
    (headings, paragraphs shorter than `4 * words` words and openings with an out-of-vocabulary
    `<unk>` are passed over). Fixed, never tuned on."""
    if n < 1 or words < 1:
        raise ValueError(f"need n >= 1 and words >= 1, got n={n}, words={words}")
    paragraphs = [_detokenize(line).split() for line in load_wikitext(split).split("\n")]
    body = [p for p in paragraphs if len(p) >= 4 * words and not p[0].startswith("=")
            and "<unk>" not in " ".join(p[:words])]
    if len(body) < n:
        raise ValueError(f"WikiText-2 {split} has {len(body)} body paragraphs of >= {4 * words} words, "
                         f"fewer than n={n}")
    step = len(body) // n
    return [" ".join(body[i * step][:words]) for i in range(n)]


def _detokenize(text: str) -> str:
    """Undo the common cases of WikiText's tokenisation ("1 @,@ 000", "turn @-@ of", "it 's", " , ")."""
    for spaced, plain in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" 's", "'s"), (" ,", ","), (" .", "."),
                          (" ;", ";")):
        text = text.replace(spaced, plain)
    return text


def matching_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """Number of leading positions where two 1-D token sequences agree."""
    n = min(a.numel(), b.numel())
    differs = (a[:n] != b[:n]).nonzero()
    return int(differs[0]) if len(differs) else n


def prompt_generations(wrappers: Mapping[str, ANEEWrapper], reference: ANEEWrapper, prompts: Sequence[str],
                       budgets: Sequence[float], max_new_tokens: int, prefill: str | None = None) -> pd.DataFrame:
    """One row per (prompt, controller, budget): greedy text, the length of the prefix equal to
    `reference`'s greedy continuation (the full model at 1.0), and the realized layer fraction and net
    saving of the positions the budget governs: prompt and generated tokens under prefill="adaptive",
    the generated tokens fed back under prefill="full" (`prefill`: the wrappers' own when None), whose
    `layer_fraction_with_prompt` counts the full-depth prompt too. The prompts go as one left-padded
    batch (as `ANEEWrapper.generate` takes a list); no early stop at EOS, so every row has
    `max_new_tokens` tokens."""
    def run(wrapper: ANEEWrapper, budget: float, prefill: str | None):
        return wrapper.generate(prompt=list(prompts), max_new_tokens=max_new_tokens, energy_budget=budget,
                                return_result=True, eos_token_id=None, prefill=prefill)[1]

    prefill = None if prefill is None else check_prefill(prefill)  # before any generation
    full = run(reference, 1.0, "adaptive").new_tokens
    tokenizer = reference.tokenizer
    rows = []
    for name, wrapper in wrappers.items():
        for budget in budgets:
            out = run(wrapper, budget, prefill)
            real, governed = out.real(), out.governed()
            for p, prompt in enumerate(prompts):
                row = torch.zeros_like(real)
                row[p] = True
                extra = {} if out.prefill == "adaptive" else {
                    "prefill": out.prefill,
                    "layer_fraction_with_prompt": out.trace.cost(wrapper.cost_model, real & row).layer_fraction}
                rows.append({"prompt_index": p, "prompt": prompt, "controller": name, "method": wrapper.method,
                             "budget": budget, **out.trace.cost(wrapper.cost_model, governed & row).as_dict(), **extra,
                             "new_tokens": out.new_tokens.shape[1],
                             "matching_prefix": matching_prefix(out.new_tokens[p], full[p]),
                             "text": tokenizer.decode(out.new_tokens[p], skip_special_tokens=True)})
    return pd.DataFrame(rows)


GENERATION_MEANS = ("layer_fraction", "layer_fraction_with_prompt", "layer_saved_net", "matching_prefix")


def generation_summary(generations: pd.DataFrame, by: Sequence[str] = ("controller", "budget")) -> pd.DataFrame:
    """`prompt_generations`' rows aggregated over prompts per `by`: the mean of each of
    `GENERATION_MEANS` the table has, and the matching prefix's min and median (a mean of a few
    prompts hides the one continuation that left the full model's text at its first token)."""
    means = [c for c in GENERATION_MEANS if c in generations.columns]
    if "matching_prefix" not in means:
        raise ValueError("not a prompt_generations table: it has no matching_prefix column")
    return generations.groupby(list(by), sort=False).agg(
        **{c: (c, "mean") for c in means}, matching_prefix_min=("matching_prefix", "min"),
        matching_prefix_median=("matching_prefix", "median")).reset_index()


@torch.no_grad()
def top1_agreement(wrappers: Mapping[str, ANEEWrapper], reference: ANEEWrapper, ids: torch.Tensor,
                   budgets: Sequence[float], window: int) -> pd.DataFrame:
    """Teacher-forced: per controller and budget, the share of positions in non-overlapping windows of
    `ids` [1, N] whose top-1 next token equals `reference`'s at budget 1.0, and the realized costs."""
    if ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] < window:
        raise ValueError(f"ids must be [1, N] with N >= window ({window}), got {tuple(ids.shape)}")
    chunks = [ids[:, i : i + window] for i in range(0, ids.shape[1] - window + 1, window)]
    rows = []
    # the layers each budget's plan runs in full are computed once per window (the numbers do not change)
    with shared_prefixes(reference.executor, *(w.executor for w in wrappers.values())):
        full = [reference(c, energy_budget=1.0).logits.argmax(-1) for c in chunks]
        for name, wrapper in wrappers.items():
            for budget in budgets:
                agree, reports = 0, []
                for chunk, top in zip(chunks, full):
                    out = wrapper(chunk, energy_budget=budget)
                    agree += int((out.logits.argmax(-1) == top).sum())
                    reports.append(out.trace.cost(wrapper.cost_model).as_dict())
                costs = pd.DataFrame(reports).mean().to_dict()  # equal-length windows: the mean is the pooled value
                rows.append({"controller": name, "method": wrapper.method, "budget": budget, **costs,
                             "top1_agreement": agree / (len(chunks) * window), "positions": len(chunks) * window})
    return pd.DataFrame(rows)


def api_perplexity(wrapper: ANEEWrapper, ids: torch.Tensor, budgets: Sequence[float], window: int,
                   stride: int) -> pd.DataFrame:
    """Sliding-window perplexity of the wrapper's own executor and controller at each budget (what
    `anee eval` prints): one row per budget."""
    rows = []
    with shared_prefixes(wrapper.executor):  # as in notebook 06's frontier, whose rows these must equal
        for budget in budgets:
            r = evaluate(executor_method(wrapper.executor, wrapper.controller, budget), ids, window, stride,
                         name=wrapper.method)
            rows.append({"method": wrapper.method, "budget": budget, "ppl": r.ppl, "tokens": r.tokens,
                         "layer_fraction": r.layer_fraction, "layer_saved_net": r.layer_saved_net,
                         "total_saved_net": r.total_saved_net})
    return pd.DataFrame(rows)


def frontier_row(frontier: pd.DataFrame, method: str, budget: float, seed: int = 0) -> pd.Series:
    """Notebook 06's frontier row of a shipped method ("heuristic", "warmstart", "rl") at `budget`:
    the variant with the layer bypass, training seed `seed` (the heuristic trains nothing: seed -1)."""
    label = f"anee_{method}+bypass"
    rows = frontier[(frontier.method == label) & (frontier.setting == f"budget={budget:g}")
                    & frontier.seed.isin([seed, -1])]
    if len(rows) != 1:
        raise ValueError(f"notebook 06's frontier has {len(rows)} rows for {label} at budget={budget:g}, seed {seed}: "
                         "rerun notebook 06 with this budget in PLANNED_BUDGETS")
    return rows.iloc[0]
