# %% [markdown]
# # 07 · Where does the compute go? Token x layer execution maps
#
# Uses the RL controller of notebook 04 (the heuristic when that checkpoint is absent) on sample
# texts: execution maps (PROCESS / SKIP / EXIT / DROP per token and layer), per-token compute, the
# layer-usage profile over the **test** split (is there a "sandwich" of dense first and last
# layers?), effective depth, and realized savings against the budget.

# %% tags=["parameters"]
PROFILE = "quick"  # "quick" (CI) or "full" (make reproduce)
MODEL = "smollm2-135m"
SEED = 0
BUDGET = 0.7
TEXTS = ["The capital of France is Paris, and the capital of Germany is Berlin.",
         "In 1905 Albert Einstein published four papers that changed physics forever."]

# %% [colab]

# %%
import matplotlib.pyplot as plt
import pandas as pd
import torch

from anee import AdaptiveExecutor, adapter_for, load_model
from anee.controller import HeuristicController, PlanConfig
from anee.cost import PROCESS
from anee.data import wikitext_tokens
from anee.evaluation import budget_adherence
from anee.heatmaps import execution_map, layer_usage, layer_usage_plot, savings_plot
from anee.io import output_dir, save_figure, save_table
from anee.notebook import pick, setup
from anee.policy_io import load_controller
from anee.profiler import Profiler

setup(PROFILE, SEED)
TEST_TOKENS = pick(PROFILE, quick=256, full=512)
CKPT = output_dir("results", PROFILE) / "checkpoints"
model, tokenizer = load_model(MODEL)
executor = AdaptiveExecutor(adapter_for(model))
L = executor.adapter.num_layers
profiler = Profiler.load(CKPT / "profiler.safetensors", executor)
if (CKPT / "rl.safetensors").is_file():
    NAME, controller = "rl", load_controller(CKPT / "rl.safetensors", profiler)
else:
    NAME, controller = "heuristic", HeuristicController(profiler, plan=PlanConfig())
print("controller:", NAME)

# %% [markdown]
# ## Execution maps of sample texts

# %%
rows = []
fig, axes = plt.subplots(len(TEXTS), 1, figsize=(9, 4.5 * len(TEXTS)))
for i, text in enumerate(TEXTS):
    ids = tokenizer(text, return_tensors="pt").input_ids
    out = executor.forward(ids, controller=controller, budget=BUDGET)
    d = out.trace.decisions[0]
    tokens = tokenizer.convert_ids_to_tokens(ids[0])
    execution_map(d, tokens, f"{NAME} controller, budget {BUDGET}", ax=axes[i])
    for t, tok in enumerate(tokens):
        rows.append({"text": i, "position": t, "token": tok, "layers_processed": int((d[t] == PROCESS).sum()),
                     "last_processed": int((d[t] == PROCESS).nonzero().max()) + 1 if (d[t] == PROCESS).any() else 0})
save_figure(fig, "07_execution_maps", PROFILE)
per_token = pd.DataFrame(rows)
save_table(per_token, "07_per_token_compute", PROFILE)
per_token.groupby("text").layers_processed.describe()

# %% [markdown]
# ## Layer-usage profile and effective depth on the test split

# %%
test = wikitext_tokens(tokenizer, "test", TEST_TOKENS)
usage, depth_rows = {}, []
for b in (0.5, 0.7, 0.9):
    decisions = []
    for s in range(0, TEST_TOKENS, 256):
        decisions.append(executor.forward(test[:, s : s + 256], controller=controller, budget=b).trace.decisions)
    dec = torch.cat(decisions, 1)
    usage[f"budget {b}"] = layer_usage(dec)
    processed = (dec == PROCESS)
    idx = torch.arange(L).expand_as(processed)
    last = torch.where(processed, idx + 1, 0).amax(-1).float()
    depth_rows.append({"budget": b, "mean_layers_processed": processed.sum(-1).float().mean().item(),
                       "mean_effective_depth": last.mean().item(), "std_layers_processed": processed.sum(-1).float().std().item(),
                       "first2_usage": usage[f"budget {b}"][:2].mean(), "last2_usage": usage[f"budget {b}"][-2:].mean(),
                       "middle_usage": usage[f"budget {b}"][2:-2].mean()})
depth = pd.DataFrame(depth_rows)
save_table(depth, "07_effective_depth", PROFILE)
save_table(pd.DataFrame({"layer": range(L), **usage}), "07_layer_usage", PROFILE)
fig, ax = plt.subplots(figsize=(7, 3))
layer_usage_plot(usage, ax=ax)
save_figure(fig, "07_layer_usage", PROFILE)
depth

# %% [markdown]
# ## Savings against the budget

# %%
sav = budget_adherence(executor, {NAME: controller}, test, [0.3, 0.5, 0.7, 0.9, 1.0], window=256)
save_table(sav, "07_savings_vs_budget", PROFILE)
fig, ax = plt.subplots(figsize=(5, 4))
savings_plot(sav, ax=ax)
save_figure(fig, "07_savings_vs_budget", PROFILE)
sav

# %%
assert (sav.abs_error <= 0.05).all()
assert depth.mean_layers_processed.is_monotonic_increasing
assert (depth.first2_usage >= depth.middle_usage).all()  # dense first layers: the bottom of the sandwich
assert per_token.layers_processed.between(0, L).all()
