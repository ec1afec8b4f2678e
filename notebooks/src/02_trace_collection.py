# %% [markdown]
# # 02 · Profiler and heuristic trace collection
#
# Calibrates the profiler on the WikiText-2 **valid** split (shortlist entropy estimator, Block-Influence
# layer importance), measures the estimator's error against the exact logit-lens entropy and its cost,
# runs the budget-aware `HeuristicController` over valid windows and stores (state, action, outcome)
# traces as `datasets` parquet files for notebook 03: the heuristic's own decisions, and
# hindsight-labelled traces. For those, every token's outcome is first measured for each nested
# choice on the marginal layers (skip the j least important of them), each token is given the j
# that would have been best at one compute price per budget, and that allocation is played back
# while the state at every marginal decision is recorded: the profiler features *and* the
# token's residual stream, which the learned controller reads. Budget adherence is checked on the
# **test** split.
#
# The controllers run under a *layer plan* (`PlanConfig`): for a budget, the least important layers
# are DROPPED for every token (no token reads their keys/values, so they cost nothing, as in static
# layer removal) and the controller is asked, per token, only about the next `PLAN_MARGINAL`
# layers of the importance ranking, skipping half of them on average. A per-token SKIP there still
# pays the K/V-only path. The per-token band (`PACING_SLACK`) is wide enough for a token to skip
# any number of the marginal layers; the plan's share keeps the average on the budget.

# %% tags=["parameters"]
PROFILE = "quick"  # "quick" (CI) or "full" (make reproduce)
MODEL = "smollm2-135m"
SEED = 0
SHORTLIST_K = 64
PLAN_MARGINAL = 4  # layers decided per token; the rest of the budget is met by static DROP
PACING_SLACK = 0.1  # per-token band around the budget for the learned controllers (notebooks 02-04)

# %% [colab]

# %%
import numpy as np
import pandas as pd

from anee import PROCESS, SKIP, AdaptiveExecutor, adapter_for, load_model
from anee.core.data import sample_windows, wikitext_tokens
from anee.engine.controllers.heuristic import HeuristicController
from anee.engine.controllers.pacing import PacingConfig
from anee.engine.controllers.plan import PlanConfig
from anee.engine.profiler import FEATURES, calibrate_profiler, calibration_hidden, estimator_error, fit_shortlist
from anee.engine.training.traces import (
    allocation_traces,
    collect_traces,
    hindsight_allocation,
    hindsight_summary,
    nested_outcomes,
    to_dataset,
    trace_summary,
)
from anee.evaluation.budget import budget_adherence
from anee.evaluation.notebook import pick, setup
from anee.evaluation.results import output_dir, save_json, save_table

setup(PROFILE, SEED)
N_WINDOWS, SEQ_LEN = pick(PROFILE, quick=(4, 128), full=(16, 256))
TRACE_BUDGETS = pick(PROFILE, quick=[0.3, 0.6, 0.9], full=[0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.5, 0.4, 0.3])
TEST_TOKENS = pick(PROFILE, quick=256, full=512)
CKPT = output_dir("results", PROFILE) / "checkpoints"
PLAN, PACING = PlanConfig(marginal=PLAN_MARGINAL), PacingConfig(slack=PACING_SLACK)
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
imp = pd.DataFrame({"layer": range(len(profiler.importance)), "block_influence": profiler.raw_importance.numpy()})
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
summary = trace_summary(df)
save_table(summary, "02_trace_summary", PROFILE)
summary

# %% [markdown]
# ## Hindsight-labelled traces on the marginal layers
# For every valid window and budget, each nested choice on the plan's marginal layers is played for
# all tokens (j = 0: process them all, j = marginal: skip them all) and every token's KL to the full
# model is recorded. One price per budget (KL per skipped marginal layer) is set so that tokens skip
# half of the marginal layers on average; each token then gets the j with least KL + price * j.
# If every token got the same j, no per-token policy could beat a static one: the table shows how
# the allocation spreads and how much KL it saves against every token skipping j = marginal / 2.

# %%
outcomes = nested_outcomes(executor, profiler, PLAN, windows, TRACE_BUDGETS)
allocation, prices = hindsight_allocation(outcomes, PLAN.skip_share)
labelled = allocation_traces(executor, profiler, PLAN, windows, allocation, PACING)
to_dataset({k: v.to_numpy() for k, v in outcomes.items()}).to_parquet(str(trace_path.parent / "02_nested_outcomes.parquet"))
to_dataset(labelled).to_parquet(str(trace_path.parent / "02_hindsight_traces.parquet"))
hindsight = hindsight_summary(outcomes, allocation).merge(prices, on="budget")
save_table(hindsight, "02_hindsight_allocation", PROFILE)
save_json({"rows": len(df), "hindsight_rows": len(labelled["label"]), "features": list(FEATURES), "windows": N_WINDOWS,
           "seq_len": SEQ_LEN, "plan_marginal": PLAN_MARGINAL, "pacing_slack": PACING_SLACK,
           "hidden_size": int(labelled["hidden"].shape[1])}, "02_trace_meta", PROFILE)
hindsight

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
assert set(np.unique(df.action)) <= {PROCESS, SKIP} and len(df) > 500  # planned: PROCESS or SKIP on the marginal layers
assert summary.token_fraction.is_monotonic_increasing
assert (hindsight.mean_skips - PLAN.skip_share * hindsight.marginal).abs().max() < 0.01  # the price meets the share
assert (hindsight.hindsight_kl <= hindsight.static_kl + 1e-9).all()  # hindsight never loses to the static split
assert set(np.unique(labelled["label"])) <= {PROCESS, SKIP} and abs(np.mean(labelled["label"]) - PLAN.skip_share) < 0.02
assert (adherence.abs_error <= 0.05).all()
