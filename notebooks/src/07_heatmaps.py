# %% [markdown]
# # 07 · Where does the compute go? Token x layer execution maps
#
# Uses the RL controller of notebook 04 (seed `SEED`, with notebook 02's layer bypass; the heuristic
# when that checkpoint is absent) on sample texts: execution maps (PROCESS / SKIP / EXIT / DROP per
# token and layer), per-token compute, the layer-usage profile over the **test** split (is there a
# "sandwich" of dense first and last layers?), effective depth, and realized savings against the budget.

# %% tags=["parameters"]
PROFILE = "quick"  # "quick" (CI) or "full" (make reproduce)
MODEL = "smollm2-135m"
DEVICE = "auto"  # "auto": CUDA when torch sees a GPU, else the CPU; or "cpu", "cuda", "cuda:1"
DTYPE = "float32"  # or "float16" / "bfloat16" on a GPU
SEED = 0
BUDGET = 0.7
TEXTS = ["The capital of France is Paris, and the capital of Germany is Berlin.",
         "In 1905 Albert Einstein published four papers that changed physics forever."]

# %% [colab]

# %%
import matplotlib.pyplot as plt
import pandas as pd
import torch

from anee import adapter_for, load_model
from anee.core.data import wikitext_tokens
from anee.engine.controllers.heuristic import HeuristicController
from anee.engine.controllers.learned import load_controller
from anee.engine.controllers.plan import PlanConfig
from anee.evaluation.budget import budget_adherence
from anee.evaluation.depth import effective_depth, layer_usage, per_token_depth
from anee.evaluation.frontier import trained_engine
from anee.evaluation.methods.controllers import policy_file
from anee.evaluation.notebook import pick, setup
from anee.evaluation.results import output_dir, save_figure, save_table
from anee.viz.execution_maps import execution_map, layer_usage_plot, savings_plot

setup(PROFILE, SEED)
TEST_TOKENS = pick(PROFILE, quick=256, full=512)
CKPT = output_dir("results", PROFILE) / "checkpoints"
model, tokenizer = load_model(MODEL, device=DEVICE, dtype=DTYPE)
adapter = adapter_for(model)
executor, profiler = trained_engine(CKPT, adapter)  # with notebook 02's layer bypass and calibrated profiler
L = adapter.num_layers
if (CKPT / policy_file("rl", SEED)).is_file():
    NAME, controller = "rl", load_controller(CKPT / policy_file("rl", SEED), profiler)
else:
    NAME, controller = "heuristic", HeuristicController(profiler, plan=PlanConfig())
print("controller:", NAME)

# %% [markdown]
# ## Execution maps of sample texts

# %%
parts = []
fig, axes = plt.subplots(len(TEXTS), 1, figsize=(9, 4.5 * len(TEXTS)))
for i, text in enumerate(TEXTS):
    ids = tokenizer(text, return_tensors="pt").input_ids
    d = executor.forward(ids, controller=controller, budget=BUDGET, with_logits=False).trace.decisions[0]
    tokens = tokenizer.convert_ids_to_tokens(ids[0])
    execution_map(d, tokens, f"{NAME} controller, budget {BUDGET}", ax=axes[i])
    parts.append(per_token_depth(d, tokens, i))
save_figure(fig, "07_execution_maps", PROFILE)
per_token = pd.concat(parts, ignore_index=True)
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
        decisions.append(executor.forward(test[:, s : s + 256], controller=controller, budget=b,
                                          with_logits=False).trace.decisions)
    dec = torch.cat(decisions, 1)
    usage[f"budget {b}"] = layer_usage(dec)
    depth_rows.append(effective_depth(dec, b))
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
