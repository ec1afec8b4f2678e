# %% [markdown]
# # 03 · Supervised warm-start of the learned controller
#
# Trains a small MLP (PROCESS / SKIP / EXIT, under 10 K parameters) to imitate the heuristic's
# actions from the traces of notebook 02 (valid split), holding out whole windows for validation.
# Reports accuracy, the confusion matrix and budget adherence on the **test** split.

# %% tags=["parameters"]
PROFILE = "quick"  # "quick" (CI) or "full" (make reproduce)
MODEL = "smollm2-135m"
SEED = 0

# %% [colab]

# %%
import datasets
import numpy as np
import pandas as pd

from anee import AdaptiveExecutor, adapter_for, load_model
from anee.controller import HeuristicController, LearnedController
from anee.data import wikitext_tokens
from anee.evaluation import budget_adherence
from anee.io import output_dir, save_json, save_table
from anee.notebook import pick, setup
from anee.policy_io import load_policy, save_policy
from anee.profiler import FEATURES, Profiler
from anee.traces import WarmStartConfig, train_warmstart

setup(PROFILE, SEED)
EPOCHS = pick(PROFILE, quick=8, full=20)
TEST_TOKENS = pick(PROFILE, quick=256, full=512)
CKPT = output_dir("results", PROFILE) / "checkpoints"
model, tokenizer = load_model(MODEL)
executor = AdaptiveExecutor(adapter_for(model))
profiler = Profiler.load(CKPT / "profiler.safetensors", executor)
test = wikitext_tokens(tokenizer, "test", TEST_TOKENS + 1)
trace_path = output_dir("results", PROFILE) / "traces" / "02_heuristic_traces.parquet"
df = datasets.Dataset.from_parquet(str(trace_path)).to_pandas()
print(len(df), "trace rows")

# %%
X = df[list(FEATURES)].to_numpy(np.float32)
policy, info = train_warmstart(X, df.action.to_numpy(), df.window.to_numpy(), WarmStartConfig(epochs=EPOCHS, seed=SEED))
n_params = sum(p.numel() for p in policy.parameters())
history = pd.DataFrame(info["history"])
save_table(history, "03_warmstart_history", PROFILE)
confusion = pd.DataFrame(info["confusion"], index=["PROCESS", "SKIP", "EXIT"], columns=["pred_PROCESS", "pred_SKIP", "pred_EXIT"])
save_table(confusion.reset_index(names="heuristic"), "03_confusion", PROFILE)
path = save_policy(CKPT / "warmstart.safetensors", policy, "warmstart", executor.adapter.num_layers)
policy = load_policy(path, executor.adapter.num_layers)  # round-trip through the checked loader
print(f"{n_params} parameters, {policy.macs} MACs per call; held-out accuracy {info['val_accuracy']:.3f}")
confusion

# %%
BUDGETS = pick(PROFILE, quick=[0.3, 0.6, 1.0], full=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
adherence = budget_adherence(executor, {"heuristic": HeuristicController(profiler), "warmstart": LearnedController(policy, profiler)},
                             test, BUDGETS, window=256)
save_table(adherence, "03_budget_adherence", PROFILE)
save_json({"params": n_params, "val_accuracy": info["val_accuracy"], "policy_macs": policy.macs,
           "overhead_macs_per_call": profiler.overhead_macs + policy.macs}, "03_warmstart_summary", PROFILE)
adherence.pivot(index="budget", columns="controller", values="layer_fraction")

# %%
assert n_params <= 10_000
assert info["val_accuracy"] > 0.8
assert history.train_loss.iloc[-1] < history.train_loss.iloc[0]
assert (adherence.abs_error <= 0.05).all()
