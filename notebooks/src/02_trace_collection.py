# %% [markdown]
# # 02 · Profiler and heuristic trace collection
#
# Calibrates the profiler on the WikiText-2 **valid** split (shortlist entropy estimator, Block-Influence
# layer importance), measures the estimator's error against the exact logit-lens entropy and its cost,
# runs the budget-aware `HeuristicController` over valid windows and stores (state, action, outcome)
# traces as `datasets` parquet files for notebook 03: the heuristic's own decisions, and
# counterfactual traces in which every PROCESS / SKIP combination on the marginal layers is played
# for every token, so each token's outcome is known for each choice. Budget adherence is checked on
# the **test** split.
#
# The controllers run under a *layer plan* (`PlanConfig`): for a budget, the least important layers
# are DROPPED for every token (no token reads their keys/values, so they cost nothing, as in static
# layer removal) and the controller is asked, per token, only about the next `PLAN_MARGINAL`
# layers of the importance ranking. A per-token SKIP there still pays the K/V-only path.

# %% tags=["parameters"]
PROFILE = "quick"  # "quick" (CI) or "full" (make reproduce)
MODEL = "smollm2-135m"
SEED = 0
SHORTLIST_K = 64
PLAN_MARGINAL = 2  # layers decided per token; the rest of the budget is met by static DROP

# %% [colab]

# %%
import numpy as np
import pandas as pd

from anee import AdaptiveExecutor, adapter_for, load_model
from anee.controller import HeuristicController, PlanConfig
from anee.data import sample_windows, wikitext_tokens
from anee.evaluation import budget_adherence
from anee.io import output_dir, save_json, save_table
from anee.notebook import pick, setup
from anee.profiler import FEATURES, calibrate_profiler, calibration_hidden, estimator_error, fit_shortlist
from anee.traces import collect_traces, combo_table, counterfactual_traces, to_dataset

setup(PROFILE, SEED)
N_WINDOWS, SEQ_LEN = pick(PROFILE, quick=(4, 128), full=(16, 256))
TRACE_BUDGETS = pick(PROFILE, quick=[0.5, 0.7, 0.9], full=[0.6, 0.7, 0.8, 0.9])
TEST_TOKENS = pick(PROFILE, quick=256, full=512)
CKPT = output_dir("results", PROFILE) / "checkpoints"
PLAN = PlanConfig(marginal=PLAN_MARGINAL)
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
traces = collect_traces(executor, HeuristicController(profiler, plan=PLAN), windows, TRACE_BUDGETS)
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
summary

# %% [markdown]
# ## Counterfactual traces on the marginal layers
# Mean KL to the full model for each combination (in depth order of the marginal layers) and how
# often each combination is the best one for a token at zero compute price: if one combination
# were best for every token, no per-token policy could beat a static one.

# %%
cf = counterfactual_traces(executor, profiler, PLAN, windows, TRACE_BUDGETS)
cf_path = trace_path.parent / "02_counterfactual_traces.parquet"
to_dataset(cf).to_parquet(str(cf_path))
cf_df = pd.DataFrame(cf)
per_token = combo_table(cf_df).pivot(index=["window", "budget", "token"], columns="combo", values="kl")
cf_summary = pd.DataFrame({"combo": per_token.columns, "mean_token_kl": per_token.mean().to_numpy(),
                           "best_for_tokens": per_token.idxmin(axis=1).value_counts(normalize=True).reindex(per_token.columns, fill_value=0).to_numpy()})
save_table(cf_summary, "02_counterfactual_summary", PROFILE)
save_json({"rows": len(df), "counterfactual_rows": len(cf_df), "features": list(FEATURES), "windows": N_WINDOWS,
           "seq_len": SEQ_LEN, "plan_marginal": PLAN_MARGINAL}, "02_trace_meta", PROFILE)
cf_summary

# %% [markdown]
# ## Budget adherence of the heuristic on the test split

# %%
BUDGETS = pick(PROFILE, quick=[0.3, 0.6, 0.9, 1.0], full=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
adherence = budget_adherence(executor, {"heuristic": HeuristicController(profiler, plan=PLAN),
                                        "heuristic_every_layer": HeuristicController(profiler)}, test, BUDGETS, window=256)
save_table(adherence, "02_heuristic_budget", PROFILE)
adherence

# %%
assert est_table.loc[est_table.k == 64, "fraction_of_layer"].item() < 0.02  # estimator << one layer (exact head: 8 layers)
assert (est_table.pearson_r > 0.4).all() and est_table.mae_nats.is_monotonic_decreasing
assert set(np.unique(df.action)) <= {0, 1} and len(df) > 500  # planned: PROCESS or SKIP on the marginal layers
assert summary.token_fraction.is_monotonic_increasing
assert len(cf_summary) == 2**PLAN_MARGINAL and abs(cf_summary.best_for_tokens.sum() - 1) < 1e-9
assert (adherence.abs_error <= 0.05).all()
