# %% [markdown]
# # 01 · Sanity check: ANEE at several energy budgets
#
# Wraps the embedded SmolLM2-135M-Instruct (no weights touched), as the README's quickstart does,
# and generates at budgets 1.0 to 0.6 with the default controller (the best method on notebook 06's
# frontier, shipped in `anee/defaults/`) beside the seed's simple budget policy, with the realized
# layer fraction of each (of the generated tokens: the prompt runs at full depth, `prefill="full"`,
# the default). Budget 1.0 must reproduce the plain HuggingFace model exactly.
# `make reproduce` runs this notebook after notebooks 02-08 and after rebuilding the shipped
# defaults from them, so it shows the defaults of the same run (notebook 09 measures them).

# %% tags=["parameters"]
PROFILE = "quick"  # "quick" (CI) or "full" (make reproduce)
MODEL = "smollm2-135m"  # offline default; on Colab e.g. "gpt2" or "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
DEVICE = "auto"  # "auto": CUDA when torch sees a GPU, else the CPU; or "cpu", "cuda", "cuda:1"
DTYPE = "float32"  # or "float16" / "bfloat16" on a GPU
SEED = 0
PROMPTS = ["The future of AI is", "The capital of France is", "In 1905, Albert Einstein"]
BUDGETS = [1.0, 0.9, 0.8, 0.7, 0.6]
CONTROLLERS = ["default", "budget"]  # the shipped default and the simple budget policy of the seed

# %% [colab]

# %%
import pandas as pd
import torch

from anee import ANEEConfig, ANEEWrapper, load_model
from anee.evaluation.notebook import pick, setup
from anee.evaluation.quickstart import generation_summary, prompt_generations
from anee.evaluation.results import save_figure, save_table
from anee.viz.plots import by_budget

setup(PROFILE, SEED)
MAX_NEW_TOKENS = pick(PROFILE, quick=20, full=32)
PROMPTS = pick(PROFILE, quick=PROMPTS[:1], full=PROMPTS)
model, tokenizer = load_model(MODEL, device=DEVICE, dtype=DTYPE)
wrappers = {c: ANEEWrapper(ANEEConfig(model_name=MODEL, energy_budget=1.0, min_layers=2, exit_budget_threshold=0.1,
                                      controller=c), model=model, tokenizer=tokenizer).eval() for c in CONTROLLERS}
anee = wrappers["budget"]
print(f"{MODEL}: {anee.num_layers} layers; default controller: {wrappers['default'].method}")

# %% [markdown]
# ## The default controller beside the budget policy
# `matching_prefix`: how many generated tokens equal the full model's greedy continuation.

# %%
table = prompt_generations(wrappers, anee, PROMPTS, BUDGETS, MAX_NEW_TOKENS)
save_table(table, "01_budget_generations", PROFILE)
summary = generation_summary(table, by=("controller", "method", "budget")).set_index(["controller", "method", "budget"])
summary.round(3)

# %%
for prompt, rows in table.groupby("prompt", sort=False):
    print(f"=== {prompt!r}")
    for row in rows.itertuples():
        print(f"--- {row.controller} ({row.method}), budget {row.budget}: layer fraction {row.layer_fraction:.2f}")
        print(prompt + row.text)

# %% [markdown]
# ## Budget 1.0 is the plain HuggingFace model

# %%
ids = tokenizer(PROMPTS[0], return_tensors="pt").input_ids.to(model.device)
hf_ids = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
with torch.no_grad():
    reference = model(hf_ids).logits
checks = []
for name, wrapper in wrappers.items():
    ours = wrapper.generate_ids(ids, MAX_NEW_TOKENS, energy_budget=1.0, eos_token_id=tokenizer.eos_token_id)
    with torch.no_grad():
        max_diff = (wrapper(hf_ids, energy_budget=1.0).logits - reference).abs().max().item()
    checks.append({"controller": name, "greedy_tokens_identical": bool((hf_ids == ours.sequences).all()),
                   "max_abs_logit_diff": max_diff, "tokens_compared": hf_ids.shape[1]})
exactness = pd.DataFrame(checks)
save_table(exactness, "01_exactness", PROFILE)
# NBVAL_CHECK_OUTPUT
print("greedy tokens identical to HF generate:", bool(exactness.greedy_tokens_identical.all()))
print("max |logit diff| <= 1e-4:", bool((exactness.max_abs_logit_diff <= 1e-4).all()))

# %%
fig = by_budget(summary.reset_index(),
                {"layer_fraction": "realized layer fraction", "matching_prefix": "tokens equal to full greedy"},
                reference="layer_fraction")
save_figure(fig, "01_layers_per_budget", PROFILE)

# %% [markdown]
# The budget policy meets a budget by processing layers while the token's budget affords them and
# then exiting through the final norm, so it stays at or under it; the default drops and skips the
# layers its plan marks, runs the learned bypass in their place and keeps the last layers, pacing
# each token around the budget, so it lands within a few hundredths of it (the K/V-only path of
# skipped layers and the controllers' own work are charged in both). Whether its text stays with
# the full model's for longer is what notebook 09 measures, over 20 held-out prompts and on
# WikiText-2 test: on a few prompts, a single changed token sends both down another path (the first
# new token is always the full model's: the prompt ran at full depth).

# %%
assert exactness.greedy_tokens_identical.all() and (exactness.max_abs_logit_diff <= 1e-4).all()
at_full = summary.xs(1.0, level="budget")
assert (at_full.layer_fraction == 1.0).all() and (at_full.matching_prefix == MAX_NEW_TOKENS).all()
policy = table[table.controller == "budget"]
assert (policy.layer_fraction <= policy.budget + 1e-9).all()
assert ((summary.layer_fraction - summary.index.get_level_values("budget")).abs() <= 0.05).all()
