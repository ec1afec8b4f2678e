# %% [markdown]
# # 06 · Perplexity against net compute saved
#
# Sliding-window perplexity on WikiText-2 **test** (calibration on **valid** only) for every method
# in one registry, at several operating points each. Compute is counted in multiply-accumulates and
# every saving is **net**: K/V-only paths of skipped layers, profiler and controller work are charged.
#
# Methods: the full model; static layer removal ranked by Block Influence (ShortGPT); fixed-depth
# early exit through the final norm and LM head (logit lens); ANEE's simple budget policy; the
# learned ANEE controllers (notebooks 03-04) and the hierarchical model (05), from their checkpoints.

# %% tags=["parameters"]
PROFILE = "quick"
MODEL = "smollm2-135m"
SEED = 0
LEVELS = [0.1, 0.2, 0.3]  # net layer-compute savings at which methods are compared

# %% [colab]

# %%
import pandas as pd

from anee import load_model
from anee.core.data import wikitext_tokens
from anee.evaluation.frontier import (
    controller_overhead,
    equal_saving_tables,
    extra_specs,
    frontier_context,
    headroom_table,
    run_frontier,
    wins,
)
from anee.evaluation.notebook import pick, setup
from anee.evaluation.results import save_figure, save_json, save_table
from anee.viz.plots import frontier

setup(PROFILE, SEED)
EVAL_TOKENS = pick(PROFILE, quick=512, full=4096)
FRACTIONS = pick(PROFILE, quick=(0.1, 0.3), full=(0.1, 0.2, 0.3, 0.4))  # of layers exited early (logit lens)
# static removal at every layer count: its curve is as dense as the planned controllers' (which
# drop a whole number of layers), so no method wins at a level by interpolating across a bump
BI_REMOVED = pick(PROFILE, quick=range(1, 10), full=range(1, 13))
BUDGETS = pick(PROFILE, quick=(0.9, 0.7), full=(0.9, 0.8, 0.7, 0.6))
# the planned controllers move in steps of whole dropped layers; a grid finer than one layer (1/30)
# keeps their curve as dense as static removal's
PLANNED_BUDGETS = pick(PROFILE, quick=(0.95, 0.9, 0.8, 0.7), full=tuple(round(0.95 - 0.025 * i, 3) for i in range(15)))
WINDOW, STRIDE = pick(PROFILE, quick=(256, 128), full=(512, 256))
HEADROOM_TOKENS = pick(PROFILE, quick=512, full=2048)  # hindsight-bound section
model, tokenizer = load_model(MODEL)
test_ids = wikitext_tokens(tokenizer, "test", EVAL_TOKENS)
ctx = frontier_context(model, tokenizer, PROFILE, calibration_tokens=pick(PROFILE, quick=1024, full=4096))
L = ctx.adapter.num_layers
print(f"{MODEL}: {L} layers; {test_ids.shape[1]} test tokens, window {WINDOW}, stride {STRIDE}")

# %%
specs = [("full", {})]
specs += [("block_influence", {"n_removed": n}) for n in BI_REMOVED]
specs += [("logit_lens", {"depth": L - round(f * L)}) for f in FRACTIONS]
specs += [("anee_budget", {"budget": b}) for b in BUDGETS]
specs += extra_specs(ctx, budgets=BUDGETS, planned_budgets=PLANNED_BUDGETS)
results = run_frontier(ctx, specs, test_ids, WINDOW, STRIDE)
table = pd.DataFrame([r.row() for r in results])
save_table(table, "06_frontier", PROFILE)
table

# %% [markdown]
# ## Perplexity at equal net savings
# Each method's points are interpolated (in log-perplexity) at the same net layer-compute savings.
# A method whose points do not bracket a level shows NaN there instead of an extrapolation. A second
# table lets every method time-share two of its operating points (interpolation along its lower
# convex hull in log-perplexity), so no method wins at a level only because another method's curve
# has a bump there.

# %%
# every method can fall back to the full model, so the full model anchors each curve at 0 % saved
at_levels, on_hull = equal_saving_tables(table, LEVELS)
save_table(at_levels.reset_index(), "06_ppl_at_equal_savings", PROFILE)
save_table(on_hull.reset_index(), "06_ppl_at_equal_savings_hull", PROFILE)
comparison = wins(at_levels, on_hull)
save_json(comparison, "06_rl_comparison", PROFILE)
print(comparison)
pd.concat({"interpolated": at_levels, "convex hull": on_hull}, axis=1)

# %% [markdown]
# ## How much could a per-token allocation gain? A hindsight bound
# Each token gets its own number of skipped layers (nested Block-Influence skip sets), chosen with
# hindsight to minimise KL to the full model at a fixed mean **net** saving, charging the K/V-only
# path and the every-layer heuristic's measured controller overhead (no static DROP). Optimistic by construction (it sees the
# outcome and ignores that a token's choice changes the keys/values others attend to), so it bounds
# what a better per-token predictor could reach; static removal is scored on the same windows.

# %%
headroom = headroom_table(ctx, test_ids, WINDOW, HEADROOM_TOKENS, LEVELS, controller_overhead(table))
save_table(headroom, "06_headroom", PROFILE)
headroom

# %%
ref = table.loc[table.method == "full", "ppl"].item()
fig = frontier(table[table.method != "full"], x="layer_saved_net", ref_ppl=ref)
save_figure(fig, "06_frontier", PROFILE)

# %% [markdown]
# Static removal by Block Influence is the bar to clear: it pays nothing for the layers it drops.
# The planned ANEE controllers (`anee_heuristic`, `anee_warmstart`, `anee_rl`) meet the static part
# of each budget the same way (DROPped layers cost nothing) and decide per token on the plan's
# marginal layers, where a SKIP still pays the K/V-only path and every call pays the profiler and
# the policy. Whether per-token decisions then beat static removal depends on what the controller
# sees: the tables above compare the warm-start policy that reads the residual stream with the same
# policy on the profiler state only (`anee_warmstart_profiler_only`), the heuristic, and the RL
# policy, at equal net savings, interpolated and on each method's convex hull. `anee_heuristic_every_layer`
# is asked at every layer and pays the K/V path for every skipped layer. Early exit through the
# unmodified head (logit lens) degrades fastest: intermediate residual streams of a model trained
# without exits are poor inputs to its final norm and head. The hindsight bound shows how much a
# perfect per-token predictor, paying the same K/V and controller costs, could gain over static
# removal; the distance between it and the learned controllers is what better prediction could still buy.

# %%
assert abs(table.loc[table.method == "full", "layer_saved_net"].item()) < 1e-12
assert (table.ppl > 1).all() and table.ppl.notna().all()
assert (table.ppl[table.method != "full"] >= ref * 0.99).all(), "a cheaper method should not beat the full model by much"
bi = table[table.method == "block_influence"].sort_values("layer_saved_net")
assert bi.ppl.is_monotonic_increasing
assert headroom[["oracle_ppl_no_costs", "oracle_ppl_with_costs", "static_block_influence_ppl"]].gt(1).all().all()
budget_rows = table[table.method == "anee_budget"]
assert (budget_rows.layer_fraction <= budget_rows.setting.str.extract(r"budget=([\d.]+)")[0].astype(float) + 1e-9).all()
