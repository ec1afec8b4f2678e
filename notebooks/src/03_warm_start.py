# %% [markdown]
# # 03 · Supervised warm-start of the learned controller
#
# Trains a small MLP (under 10 K parameters) on the counterfactual traces of notebook 02 (valid
# split): for each token, the PROCESS / SKIP combination on the marginal layers that would have
# been best in hindsight (least KL to the full model at one compute price for all tokens, set so
# that half of the marginal decisions are SKIPs). The MLP sees only the profiler state, so it has
# to *predict* which tokens can skip. Whole windows are held out for validation; budget adherence
# is measured on the **test** split.

# %% tags=["parameters"]
PROFILE = "quick"  # "quick" (CI) or "full" (make reproduce)
MODEL = "smollm2-135m"
SEED = 0
PLAN_MARGINAL = 2  # as in notebook 02
SKIP_SHARE = 0.5  # share of marginal decisions labelled SKIP (the plan's own share)

# %% [colab]

# %%
import datasets
import numpy as np
import pandas as pd

from anee import AdaptiveExecutor, adapter_for, load_model
from anee.controller import HeuristicController, LearnedController, PlanConfig
from anee.data import wikitext_tokens
from anee.evaluation import budget_adherence
from anee.io import output_dir, save_json, save_table
from anee.notebook import pick, setup
from anee.policy_io import load_policy, save_policy
from anee.profiler import FEATURES, Profiler
from anee.traces import WarmStartConfig, hindsight_labels, train_warmstart

setup(PROFILE, SEED)
EPOCHS = pick(PROFILE, quick=8, full=20)
TEST_TOKENS = pick(PROFILE, quick=256, full=512)
CKPT = output_dir("results", PROFILE) / "checkpoints"
PLAN = PlanConfig(marginal=PLAN_MARGINAL)
model, tokenizer = load_model(MODEL)
executor = AdaptiveExecutor(adapter_for(model))
profiler = Profiler.load(CKPT / "profiler.safetensors", executor)
test = wikitext_tokens(tokenizer, "test", TEST_TOKENS + 1)
trace_path = output_dir("results", PROFILE) / "traces" / "02_counterfactual_traces.parquet"
traces = datasets.Dataset.from_parquet(str(trace_path)).to_pandas()
labels = hindsight_labels(traces, SKIP_SHARE)
print(len(traces), "counterfactual rows ->", len(labels), "labelled decisions")

# %%
X = labels[list(FEATURES)].to_numpy(np.float32)
policy, info = train_warmstart(X, labels.label.to_numpy(), labels.window.to_numpy(), WarmStartConfig(epochs=EPOCHS, seed=SEED))
n_params = sum(p.numel() for p in policy.parameters())
history = pd.DataFrame(info["history"])
save_table(history, "03_warmstart_history", PROFILE)
confusion = pd.DataFrame(info["confusion"], index=["PROCESS", "SKIP", "EXIT"], columns=["pred_PROCESS", "pred_SKIP", "pred_EXIT"])
save_table(confusion.reset_index(names="hindsight"), "03_confusion", PROFILE)
path = save_policy(CKPT / "warmstart.safetensors", policy, "warmstart", executor.adapter.num_layers, plan=PLAN)
policy = load_policy(path, executor.adapter.num_layers)  # round-trip through the checked loader
chance = max(labels.label.mean(), 1 - labels.label.mean())
print(f"{n_params} parameters, {policy.macs} MACs per call; held-out accuracy {info['val_accuracy']:.3f} (majority class {chance:.3f})")
confusion

# %%
BUDGETS = pick(PROFILE, quick=[0.3, 0.6, 1.0], full=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
adherence = budget_adherence(executor, {"heuristic": HeuristicController(profiler, plan=PLAN), "warmstart": LearnedController(policy, profiler, plan=PLAN)},
                             test, BUDGETS, window=256)
save_table(adherence, "03_budget_adherence", PROFILE)
save_json({"params": n_params, "val_accuracy": info["val_accuracy"], "majority_class": float(chance), "policy_macs": policy.macs,
           "overhead_macs_per_call": profiler.overhead_macs + policy.macs}, "03_warmstart_summary", PROFILE)
adherence.pivot(index="budget", columns="controller", values="layer_fraction")

# %%
assert n_params <= 10_000
assert set(np.unique(labels.label)) <= {0, 1} and len(labels) * 2**PLAN_MARGINAL == len(traces)
assert history.train_loss.iloc[-1] < history.train_loss.iloc[0]
assert (adherence.abs_error <= 0.05).all()

# %% [markdown]
# The hindsight labels are hard to predict from the profiler state: held-out accuracy is only a
# little above the majority class (see the summary above). Notebook 06 measures what that is worth
# in perplexity at equal net compute.
