# %% [markdown]
# # 09 · What the quickstart gives: the shipped default against the other controllers
#
# The README's quickstart wraps the embedded model with `ANEEConfig(...)` and asks for an energy
# budget. Here every controller that `ANEEConfig(controller=...)` names is measured the way a user
# would notice it, all through `ANEEWrapper` itself (its own executor and controller, the shipped
# defaults of `anee/defaults/`): on held-out prompts (the first words of WikiText-2 **test**
# paragraphs), how many greedy tokens equal the full model's and the realized layer fraction; on
# WikiText-2 test windows, the teacher-forced top-1 agreement with the full model; and the default's
# perplexity through the public API beside notebook 06's row for the same method and budget.
# Generation runs the prompt at full depth by default (`ANEEConfig(prefill="full")`: the budget
# governs the generated tokens); the last section runs the same prompts with the budget on the
# prompt too (`prefill="adaptive"`, the seed's meaning), which is what teacher-forced evaluation measures.
# `make reproduce` runs this notebook after notebooks 02-08 and after rebuilding the shipped
# defaults from them; in the quick profile it checks the committed defaults against the committed
# full-profile notebook 06.

# %% tags=["parameters"]
PROFILE = "quick"  # "quick" (CI) or "full" (make reproduce)
MODEL = "smollm2-135m"
DEVICE = "auto"  # "auto": CUDA when torch sees a GPU, else the CPU; or "cpu", "cuda", "cuda:1"
DTYPE = "float32"  # or "float16" / "bfloat16" on a GPU
SEED = 0
CONTROLLERS = ["budget", "heuristic", "warmstart", "rl"]  # every shipped method and the seed's budget policy
BUDGETS = [0.9, 0.8, 0.7, 0.6]
QUICKSTART_BUDGET = 0.8

# %% [colab]

# %%
import pandas as pd

from anee import ANEEConfig, ANEEWrapper, load_model
from anee.core.data import wikitext_tokens
from anee.evaluation.frontier import frontier_windows
from anee.evaluation.notebook import pick, setup
from anee.evaluation.quickstart import (api_perplexity, frontier_row, generation_summary, held_out_prompts,
                                       prompt_generations, top1_agreement)
from anee.evaluation.results import output_dir, save_figure, save_table
from anee.viz.plots import by_budget

setup(PROFILE, SEED)
# issue 15: the default against the budget policy on 20 held-out prompts
N_PROMPTS, PROMPT_WORDS = pick(PROFILE, quick=3, full=20), 8
MAX_NEW_TOKENS = pick(PROFILE, quick=12, full=32)
AGREEMENT_TOKENS, AGREEMENT_WINDOW = pick(PROFILE, quick=(256, 256), full=(1024, 512))
# notebook 06's windows (its full profile: the first 2,048 test tokens in non-overlapping windows of 512),
# in both profiles: the quick run checks the committed defaults against the committed full results
F06_TOKENS, F06_WINDOW, F06_STRIDE = frontier_windows("full")
API_BUDGETS = pick(PROFILE, quick=[QUICKSTART_BUDGET], full=[0.906, QUICKSTART_BUDGET, 0.73])
model, tokenizer = load_model(MODEL, device=DEVICE, dtype=DTYPE)


def quickstart(controller: str) -> ANEEWrapper:
    config = ANEEConfig(model_name=MODEL, energy_budget=1.0, min_layers=2, exit_budget_threshold=0.1,
                        controller=controller)
    return ANEEWrapper(config, model=model, tokenizer=tokenizer).eval()


default = quickstart("default")
full = quickstart("full")
wrappers = {c: quickstart(c) for c in CONTROLLERS}
prompts = held_out_prompts(N_PROMPTS, PROMPT_WORDS)
# test tokens after notebook 06's windows: no position is scored twice across the two notebooks
test = wikitext_tokens(tokenizer, "test", F06_TOKENS + AGREEMENT_TOKENS).to(model.device)
print(f"default controller: {default.method}; prompts: {prompts[:3]} ...")

# %% [markdown]
# ## Greedy text on held-out prompts
# With the default `prefill="full"`: `layer_fraction` is that of the generated tokens (the positions
# the budget governs), `layer_fraction_with_prompt` counts the full-depth prompt too.

# %%
generations = prompt_generations(wrappers, full, prompts, BUDGETS, MAX_NEW_TOKENS)
save_table(generations, "09_generations", PROFILE)
prefix = generation_summary(generations).set_index(["controller", "budget"])
prefix.round(3)

# %% [markdown]
# ## Teacher-forced top-1 agreement on WikiText-2 test

# %%
agreement = top1_agreement(wrappers, full, test[:, F06_TOKENS:], BUDGETS, AGREEMENT_WINDOW)
generated = prefix.reset_index().rename(columns={"layer_fraction": "layer_fraction_generated"})[
    ["controller", "budget", "layer_fraction_generated", "layer_fraction_with_prompt", "matching_prefix",
     "matching_prefix_min"]]
summary = agreement.merge(generated, on=["controller", "budget"]).rename(
    columns={"layer_fraction": "layer_fraction_test"})
summary.insert(1, "default", summary.controller == default.method)
save_table(summary, "09_quickstart_summary", PROFILE)
summary.round(3)

# %%
fig = by_budget(summary, {"matching_prefix": f"greedy tokens equal to full (of {MAX_NEW_TOKENS})",
                          "top1_agreement": "top-1 agreement with full (test)",
                          "layer_fraction_test": "realized layer fraction"}, reference="layer_fraction_test")
save_figure(fig, "09_quickstart", PROFILE)

# %% [markdown]
# ## The prompt under the budget too (`prefill="adaptive"`, the seed's meaning)
# The same prompts with every position, prompt included, under the controller and the budget.

# %%
prefill_adaptive = prompt_generations({c: wrappers[c] for c in ("budget", default.method)}, full, prompts, BUDGETS,
                                      MAX_NEW_TOKENS, prefill="adaptive")
save_table(prefill_adaptive, "09_generations_prefill_adaptive", PROFILE)
prefill_summary = generation_summary(prefill_adaptive)
save_table(prefill_summary, "09_prefill_adaptive_summary", PROFILE)
prefill_summary.round(3)

# %% [markdown]
# ## The default's perplexity through the public API against notebook 06

# %%
frontier = pd.read_csv(output_dir("results", "full") / "06_frontier.csv")
api = api_perplexity(default, test[:, :F06_TOKENS], API_BUDGETS, F06_WINDOW, F06_STRIDE)
api["ppl_06"] = [frontier_row(frontier, default.method, b).ppl for b in api.budget]
api["layer_saved_net_06"] = [frontier_row(frontier, default.method, b).layer_saved_net for b in api.budget]
api["rel_diff"] = (api.ppl / api.ppl_06 - 1).abs()
save_table(api, "09_api_vs_06", PROFILE)
API_RTOL = 1e-5  # 06's CSV keeps 6 significant digits: rounding alone moves a value by up to 5e-6 relative
# NBVAL_CHECK_OUTPUT
print(f"public API equals notebook 06 (rel <= {API_RTOL:g}):", bool((api.rel_diff <= API_RTOL).all()))

# %% [markdown]
# Read the tables by budget. The budget policy meets a budget by exiting early through the final
# norm and the LM head, so its top-1 agreement with the full model collapses as soon as the budget
# drops below 1; the planned controllers drop and skip the layers their plan marks, run the learned
# bypass in their place and keep the last layers, and agree with the full model far more often.
# Greedy text is a harsher test: one different token sends a continuation elsewhere. With the prompt
# at full depth (the default) every continuation starts with the full model's token
# (`matching_prefix_min` is 1 or more), at the price of the prompt's full compute, which
# `layer_fraction_with_prompt` shows beside the generated tokens' fraction. Tokens that attend to a
# full-depth prompt give the policy other SKIP margins than teacher-forced windows do, so the learned
# controllers carry a second SKIP-offset table for them, calibrated in notebooks 03-04 on short valid
# windows with a full-depth prompt; it keeps the generated tokens' `layer_fraction` near the budget.
# With the budget on the prompt too (`prefill="adaptive"`, the seed's meaning, last table) the first
# new token already comes from a reduced-depth prompt, and with any controller most held-out prompts
# leave the full model's text at once or after a token: the default's prefix is still longer than the
# budget policy's, but both are short. The default controller is the method with the lowest
# perplexity at 20 % net saving in notebook 06; the API check shows that what a user gets from
# `ANEEWrapper(ANEEConfig(...))` is that row (teacher-forced, so the prefill does not enter).

# %%
at_quickstart = summary[summary.budget == QUICKSTART_BUDGET].set_index("controller")
assert (api.rel_diff <= API_RTOL).all()
assert abs(at_quickstart.loc[default.method, "layer_fraction_test"] - QUICKSTART_BUDGET) <= 0.05
assert at_quickstart.loc[default.method, "matching_prefix"] > at_quickstart.loc["budget", "matching_prefix"]
assert at_quickstart.loc[default.method, "top1_agreement"] > at_quickstart.loc["budget", "top1_agreement"]
# full-depth prompt (the default): the first new token is the full model's
assert (prefix.matching_prefix_min >= 1).all()
# the generated tokens, under the second offset table
assert abs(prefix.loc[(default.method, QUICKSTART_BUDGET), "layer_fraction"] - QUICKSTART_BUDGET) <= 0.05
adaptive = prefill_summary.set_index(["controller", "budget"])
assert (adaptive.loc[(default.method, QUICKSTART_BUDGET), "matching_prefix"]
        >= adaptive.loc[("budget", QUICKSTART_BUDGET), "matching_prefix"])
