# %% [markdown]
# # 02 · Profiler and heuristic trace collection
#
# Calibrates the profiler on the WikiText-2 **valid** split (shortlist entropy estimator, Block-Influence
# layer importance), measures the estimator's error against the exact logit-lens entropy and its cost,
# runs the budget-aware `HeuristicController` over valid windows and stores (state, action, outcome)
# traces as a `datasets` parquet file for notebook 03. Budget adherence is checked on the **test** split.

# %% tags=["parameters"]
PROFILE = "quick"  # "quick" (CI) or "full" (make reproduce)
MODEL = "smollm2-135m"
SEED = 0
SHORTLIST_K = 64

# %% [colab]

# %%
import numpy as np
import pandas as pd

from anee import AdaptiveExecutor, adapter_for, load_model
from anee.controller import HeuristicController
from anee.data import sample_windows, wikitext_tokens
from anee.evaluation import budget_adherence
from anee.io import output_dir, save_json, save_table
from anee.notebook import pick, setup
from anee.profiler import FEATURES, calibrate_profiler, calibration_hidden, estimator_error, fit_shortlist
from anee.traces import collect_traces, to_dataset

setup(PROFILE, SEED)
N_WINDOWS, SEQ_LEN = pick(PROFILE, quick=(4, 128), full=(8, 256))
TRACE_BUDGETS = pick(PROFILE, quick=[0.5, 0.7, 0.9], full=[0.5, 0.7, 0.9])
TEST_TOKENS = pick(PROFILE, quick=256, full=512)
CKPT = output_dir("results", PROFILE) / "checkpoints"
model, tokenizer = load_model(MODEL)
executor = AdaptiveExecutor(adapter_for(model))
valid = wikitext_tokens(tokenizer, "valid", 8192)
test = wikitext_tokens(tokenizer, "test", TEST_TOKENS + 1)

# %% [markdown]
# ## Profiler calibration and the cheap entropy estimator
# The shortlist holds the K most frequent valid-split tokens; a least-squares map from the shortlist's
# entropy, log-sum-exp and max logit gives the full-vocabulary entropy. Error is measured on held-out
# valid states (a different slice from the fit).

# %%
profiler = calibrate_profiler(executor, valid[:, :4096], k=SHORTLIST_K, window=256, max_windows=pick(PROFILE, quick=1, full=2))
profiler.save(CKPT / "profiler.safetensors")
fit_states = calibration_hidden(executor, valid[:, :4096], max_windows=1)
held_out = calibration_hidden(executor, valid[:, 4096:], max_windows=1, seed=1)
rows = [estimator_error(executor, fit_shortlist(executor, valid[:, :4096], k=k, hidden=fit_states), held_out) for k in (16, 64, 256)]
est_table = pd.DataFrame(rows)
save_table(est_table, "02_entropy_estimator", PROFILE)
est_table

# %%
imp = pd.DataFrame({"layer": range(len(profiler.importance)), "block_influence": profiler._raw_importance.numpy()})
save_table(imp, "02_layer_importance", PROFILE)
print("profiler + heuristic overhead per call per token:", profiler.overhead_macs, "MACs =",
      f"{profiler.overhead_macs / executor.cost.layer_static:.2%} of a layer")

# %% [markdown]
# ## Heuristic traces on the valid split

# %%
windows = sample_windows(valid, SEQ_LEN, N_WINDOWS, seed=SEED)
traces = collect_traces(executor, HeuristicController(profiler), windows, TRACE_BUDGETS)
dataset = to_dataset(traces)
trace_path = output_dir("results", PROFILE) / "traces" / "02_heuristic_traces.parquet"
trace_path.parent.mkdir(parents=True, exist_ok=True)
dataset.to_parquet(str(trace_path))
df = dataset.to_pandas()
summary = df.groupby("budget").agg(rows=("action", "size"), process=("action", lambda a: (a == 0).mean()),
                                   skip=("action", lambda a: (a == 1).mean()), exit=("action", lambda a: (a == 2).mean()),
                                   free=("free", "mean"), token_kl=("token_kl", "mean"),
                                   token_fraction=("token_fraction", "mean")).reset_index()
save_table(summary, "02_trace_summary", PROFILE)
save_json({"rows": len(df), "features": list(FEATURES), "windows": N_WINDOWS, "seq_len": SEQ_LEN}, "02_trace_meta", PROFILE)
summary

# %% [markdown]
# ## Budget adherence of the heuristic on the test split

# %%
BUDGETS = pick(PROFILE, quick=[0.3, 0.6, 0.9, 1.0], full=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
adherence = budget_adherence(executor, {"heuristic": HeuristicController(profiler)}, test, BUDGETS, window=256)
save_table(adherence, "02_heuristic_budget", PROFILE)
adherence

# %%
assert est_table.loc[est_table.k == 64, "fraction_of_layer"].item() < 0.02  # estimator << one layer (exact head: 8 layers)
assert (est_table.pearson_r > 0.4).all() and est_table.mae_nats.is_monotonic_decreasing
assert set(np.unique(df.action)) <= {0, 1, 2} and len(df) > 1000
assert summary.token_fraction.is_monotonic_increasing
assert (adherence.abs_error <= 0.05).all()
