# %% [markdown]
# # 02 · Bypass, profiler and trace collection
#
# Everything the ANEE controllers need, fitted on the WikiText-2 **valid** split.
#
# 1. **The layer bypass.** A skipped layer used to leave the token's stream as it was; here each
#    layer gets a cheap learned stand-in for its update (`anee.core.bypass`), so SKIP means
#    `h <- h + bypass(h)` (K/V still written) and DROP `h <- h + bypass(h)` (no K/V). Families from
#    free to dearest (identity, diagonal plus low rank, a bottleneck MLP, a full linear map) are fitted
#    in closed form from (input, update) pairs of the full model, and the promising ones are tuned end
#    to end with KL to the full model (the base stays frozen). Each is scored by static removal of
#    the least important layers at **equal net compute** (its MACs are charged), on held-out valid
#    windows, where the family the later notebooks use is chosen among those small enough to ship
#    with the package, and on test for reference.
# 2. **The profiler**: shortlist entropy estimator and layer importance (the removal order chosen
#    in 1.), with its error against the exact logit-lens entropy and its cost.
# 3. **Traces** for notebook 03, run with the bypass: the heuristic's own decisions, and
#    hindsight-labelled traces. For those, every token's outcome is first measured for each nested
#    choice on the marginal layers (skip the j least important of them), each token is given the j
#    that would have been best at one compute price per budget, and that allocation is played back
#    while the state at every marginal decision is recorded: the profiler features *and* the
#    token's residual stream, which the learned controller reads. Budget adherence is checked on
#    the **test** split.
#
# The controllers run under a *layer plan* (`PlanConfig`): for a budget, the least important layers
# are DROPPED for every token (no token reads their keys/values; they cost their bypass, as in
# static removal with a bypass) and the controller is asked, per token, only about the next
# `PLAN_MARGINAL` layers of the importance ranking, skipping half of them on average. A per-token
# SKIP there pays the K/V-only path and the bypass. The per-token band (`PACING_SLACK`) is wide
# enough for a token to skip any number of the marginal layers; the plan's share keeps the average
# on the budget.

# %% tags=["parameters"]
PROFILE = "quick"  # "quick" (CI) or "full" (make reproduce)
MODEL = "smollm2-135m"
DEVICE = "auto"  # "auto": CUDA when torch sees a GPU, else the CPU; or "cpu", "cuda", "cuda:1"
DTYPE = "float32"  # or "float16" / "bfloat16" on a GPU
SEED = 0
# tuning seeds of the chosen bypass (None: the profile's, [0] quick, [0, 1] full); the candidates tune with SEED
SEEDS = None
SHORTLIST_K = 64
PLAN_MARGINAL = 4  # layers decided per token; the rest of the budget is met by static DROP
PACING_SLACK = 0.1  # per-token band around the budget for the learned controllers (notebooks 02-04)
BYPASS_FAMILIES = [("identity", 0), ("diag_lowrank", 16), ("diag_lowrank", 64), ("mlp", 64), ("linear", 0)]
# tuned end to end; the best candidate on valid is used from here on. Candidates must ship with the
# package (all 30 layers' bypass in fp32 under 10 MB: diag_lowrank-64 is 9 MB, a full linear map 40 MB),
# so a full linear map could only be tuned for comparison (`COMPARED`; its closed form is scored below).
CANDIDATES = [("diag_lowrank", 64)]
COMPARED = []  # e.g. [("linear", 0)]: also tune it, with SEED (about 3 minutes more; off to fit make reproduce's hour)
CHOICE_SAVING = 0.2  # the candidate is chosen by its valid perplexity at this net saving
# removal order: Block Influence, or a greedy search that removes, step by step, the layer whose
# removal with the first candidate's closed-form bypass costs least on valid (the rest follow Block
# Influence); the one with the lower valid perplexity at CHOICE_SAVING (closed form) is used from here on
GREEDY_STEPS = None  # layers chosen by the search (None: the profile's, 2 quick, 0 full: no search; 30 % needs ~9.2)
# the search tries the 20 layers Block Influence ranks least influential (None: all 30): with all 30 tried
# (runL, 8f902d6) its 9 choices were among Block Influence's first 19, and the 10 left out (layers 0, 1 and
# 29 among them) are the dearest to try, since a candidate's pass runs from its own layer on
GREEDY_CANDIDATES = 20

# %% [colab]

# %%
import numpy as np
import pandas as pd

from anee import PROCESS, SKIP, AdaptiveExecutor, adapter_for, load_model
from anee.core.bypass import BypassConfig
from anee.core.data import (
    VALID_BYPASS_CHOICE,
    VALID_BYPASS_FIT,
    VALID_BYPASS_TUNING,
    VALID_ESTIMATOR_CHECK,
    VALID_IMPORTANCE,
    sample_windows,
    span_windows,
    wikitext_tokens,
)
from anee.engine.controllers.heuristic import HeuristicController
from anee.engine.controllers.pacing import PacingConfig
from anee.engine.controllers.plan import PlanConfig
from anee.engine.importance import block_influence, greedy_removal_order, order_importance, removal_order, removal_ppl
from anee.engine.prefix_memo import PrefixMemo, shared_prefixes
from anee.engine.profiler import FEATURES, calibrate_profiler, calibration_hidden, estimator_error, fit_shortlist
from anee.engine.training.bypass import BypassTuneConfig, fit_layer_bypass, layer_bypass_stats
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
from anee.evaluation.bypass import choose_family, family_rows, tune_and_score
from anee.evaluation.frontier import BYPASS_FILE, LINEAR_CLOSED_FORM_FILE, PROFILER_FILE
from anee.evaluation.notebook import pick, seeds, setup
from anee.evaluation.results import output_dir, save_figure, save_json, save_table
from anee.viz.training import bypass_curves

setup(PROFILE, SEED)
SEEDS = seeds(PROFILE, SEEDS)
# full: 12 windows (16 until runZ6, cut for make reproduce's hour: -25 % of the hindsight traces and their cell's time)
N_WINDOWS, SEQ_LEN = pick(PROFILE, quick=(4, 128), full=(12, 256))
HEURISTIC_WINDOWS = 4  # of those, for the heuristic's own traces: only summarised (02_trace_summary), and ~1.5 min less
TRACE_BUDGETS = pick(PROFILE, quick=[0.3, 0.6, 0.9], full=[0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5, 0.3])
TEST_TOKENS = pick(PROFILE, quick=256, full=512)
FIT_WINDOWS, FIT_LEN = pick(PROFILE, quick=(8, 512), full=(16, 512))
# full: no search since runZ8 (9 steps until runZ7). Its order depends on the text it searches: scored on the
# choice windows below with 6 layers removed (closed form; Block Influence 53.30), 9 steps on 4 valid windows of
# 512 gave 49.74 (runZ6's order), on 2 of 512 57.02 (runZ7's, which lost to Block Influence), on 4 of 256 53.60;
# the one search that beat it (4 x 512) cost ~9 min of make reproduce's hour (by hand on this machine, 2026-12-07)
GREEDY_STEPS = GREEDY_STEPS if GREEDY_STEPS is not None else pick(PROFILE, quick=2, full=0)
# the greedy search's valid windows (its order is kept only if it beats Block Influence on the choice windows)
SEARCH_WINDOWS, SEARCH_LEN = pick(PROFILE, quick=(2, 128), full=(4, 512))
# 60 steps: on 4,096 held-out valid tokens (from 44,000) the seed-0 tuned bypass's perplexity at 20 % net saving
# went 43.17 -> 42.73 -> 42.57 after 40 / 80 / 120 steps in Block-Influence order (~75 s per 40 steps here); in
# the greedy order 39.68 after 120 steps and 39.73 after 240, so more steps buy little; 120 until runZ6, halved
# for make reproduce's hour (about 1 % of perplexity, going by those numbers)
TUNE = BypassTuneConfig(steps=pick(PROFILE, quick=2, full=60), batch=2, seq_len=192, lr=3e-4, max_removed=12)
SELECT_WINDOWS, TABLE_TEST_WINDOWS = pick(PROFILE, quick=(2, 1), full=(4, 2))  # held-out valid x 256, test x 512
REMOVED = pick(PROFILE, quick=(3, 7), full=(3, 6, 9, 12))
# closed-form families scored; quick: the identity, the candidates and the linear map notebook 06 scores
FAMILIES = pick(PROFILE, quick=[f for f in BYPASS_FAMILIES if f[0] in ("identity", "linear") or f in CANDIDATES],
                full=BYPASS_FAMILIES)
CKPT = output_dir("results", PROFILE) / "checkpoints"
PLAN, PACING = PlanConfig(marginal=PLAN_MARGINAL), PacingConfig(slack=PACING_SLACK)
model, tokenizer = load_model(MODEL, device=DEVICE, dtype=DTYPE)
adapter = adapter_for(model)
identity = AdaptiveExecutor(adapter)
valid = wikitext_tokens(tokenizer, "valid", 60000)
test = wikitext_tokens(tokenizer, "test", max(TEST_TOKENS + 1, TABLE_TEST_WINDOWS * 512))
# disjoint slices of valid: layer importance + greedy search + profiler | bypass fit | bypass tuning | bypass choice
influence = block_influence(identity, valid[:, VALID_IMPORTANCE])
bi_order = removal_order(influence)
fit_windows = span_windows(valid, VALID_BYPASS_FIT, FIT_WINDOWS, FIT_LEN)
tune_ids = valid[:, VALID_BYPASS_TUNING]
splits = {"valid": span_windows(valid, VALID_BYPASS_CHOICE, SELECT_WINDOWS, 256),
          "test": test[0, : TABLE_TEST_WINDOWS * 512].view(TABLE_TEST_WINDOWS, 512)}
print(f"{MODEL}: {adapter.num_layers} layers; removal order by Block Influence (valid) {bi_order[:10]}...")

# %% [markdown]
# ## The layer bypass: families, closed form, removal order, tuning
# Every family is fitted in closed form on the same (input, update) pairs and scored with the
# layers removed in Block-Influence order. Then the removal order: Block Influence ranks layers one
# at a time, by how little each turns the residual stream, but what a removal costs depends on
# which layers are already replaced by their bypass. The greedy search (`greedy_removal_order`)
# adds, step by step, the layer (of Block Influence's `GREEDY_CANDIDATES` least influential) whose
# removal with the first candidate's closed-form bypass gives the lowest perplexity on valid windows
# of its own; the candidate's closed form is scored in both orders (`order`) and the better one on
# the choice windows is kept. The tuned families then train in that order for `TUNE.steps` steps,
# each removing its k least important layers (k drawn up to `TUNE.max_removed`) and minimising the
# mean KL to the full model. Perplexity with the first k layers of the order removed (`ppl_k*`) and
# interpolated at equal net saving (`ppl_at_*`, the bypass charged).

# %%
stats = layer_bypass_stats(identity, fit_windows)
LEVELS = (0.1, CHOICE_SAVING, 0.3)
memo = PrefixMemo()  # every family's rows share the layers before their first removed one (same numbers, less work)
with shared_prefixes(identity, memo=memo):
    full = {split: removal_ppl(identity, windows, bi_order, 0) for split, windows in splits.items()}
rows, banks, curves, closed_form = [], {}, [], {}
for family, rank in FAMILIES:  # closed form
    bank = closed_form[BypassConfig(family, rank).label] = fit_layer_bypass(identity, None,
                                                                            BypassConfig(family, rank), stats)
    rows += family_rows(bank.config.label, bank, AdaptiveExecutor(adapter, bypass=bank), splits, bi_order, REMOVED,
                        LEVELS, full, memo=memo, tuned=False, seed=-1, removal_order="block_influence")
    if family == "linear":  # notebook 06 scores the closed-form linear map on its own test windows
        bank.save(CKPT / LINEAR_CLOSED_FORM_FILE)

searched = closed_form[BypassConfig(*CANDIDATES[0]).label]
orders = {"block_influence": bi_order}
if GREEDY_STEPS:  # the search, and the candidate's closed form scored in its order
    search_windows = span_windows(valid, VALID_IMPORTANCE, SEARCH_WINDOWS, SEARCH_LEN)
    with_searched = AdaptiveExecutor(adapter, bypass=searched)
    orders["greedy"] = greedy_removal_order(with_searched, search_windows, GREEDY_STEPS, bi_order,
                                            candidates=GREEDY_CANDIDATES)
    rows += family_rows(searched.config.label, searched, with_searched, splits, orders["greedy"], REMOVED, LEVELS,
                        full, memo=memo, tuned=False, seed=-1, removal_order="greedy")
by_order = pd.DataFrame(rows).query("bypass == @searched.config.label and split == 'valid'").set_index("removal_order")
ORDER = str(by_order[f"ppl_at_{CHOICE_SAVING:g}"].idxmin())
order = orders[ORDER]  # the removal order of everything below and of notebooks 03-07 (through the profiler)
print(f"greedy order {orders.get('greedy', [])[:GREEDY_STEPS]} (then Block Influence); chosen on valid: {ORDER} "
      f"{order[:10]}...")

candidates = {BypassConfig(f, r).label + " tuned": BypassConfig(f, r) for f, r in CANDIDATES + COMPARED}
for label in candidates:  # the candidates (and the compared families) tune with SEED; the choice looks at valid only
    banks[(label, SEED)], history, scored = tune_and_score(identity, stats, candidates[label], tune_ids, order,
                                                           BypassTuneConfig(**{**TUNE.__dict__, "seed": SEED}),
                                                           splits, REMOVED, LEVELS, full,
                                                           closed_form.get(candidates[label].label), memo)
    curves, rows = curves + history, rows + [dict(r, removal_order=ORDER) for r in scored]
deployable = {BypassConfig(f, r).label + " tuned" for f, r in CANDIDATES}
CHOSEN = choose_family(pd.DataFrame(rows).query("tuned and bypass in @deployable"), CHOICE_SAVING)
for seed in [s for s in SEEDS if s != SEED]:  # the chosen family's spread over tuning seeds
    banks[(CHOSEN, seed)], history, scored = tune_and_score(identity, stats, candidates[CHOSEN], tune_ids, order,
                                                            BypassTuneConfig(**{**TUNE.__dict__, "seed": seed}),
                                                            splits, REMOVED, LEVELS, full,
                                                            closed_form.get(candidates[CHOSEN].label), memo)
    curves, rows = curves + history, rows + [dict(r, removal_order=ORDER) for r in scored]
family_table = pd.DataFrame(rows)
save_table(family_table, "02_bypass_families", PROFILE)
curves = pd.DataFrame(curves)
save_table(curves, "02_bypass_training", PROFILE)
save_figure(bypass_curves(curves), "02_bypass_training", PROFILE)
bypass = banks[(CHOSEN, SEED)]
bypass.save(CKPT / BYPASS_FILE)
executor = AdaptiveExecutor(adapter, bypass=bypass)  # the executor of everything below and of notebooks 03-07
print(f"chosen on valid at {CHOICE_SAVING:.0%} net saving: {CHOSEN} (seed {SEED}), {bypass.macs} MACs per "
      f"bypassed layer = {executor.cost.drop_fraction():.1%} of a layer")
(family_table.groupby(["bypass", "removal_order", "split"])[[f"ppl_at_{s:g}" for s in LEVELS]]
 .agg(["mean", "std"]).round(2))

# %% [markdown]
# ## Profiler calibration and the cheap entropy estimator
# The shortlist holds the K most frequent valid-split tokens; a least-squares map from the shortlist's
# entropy, log-sum-exp and max logit gives the full-vocabulary entropy. Error is measured on held-out
# valid states (a different slice from the fit).

# %%
profiler = calibrate_profiler(executor, valid[:, VALID_IMPORTANCE], k=SHORTLIST_K, window=256,
                              max_windows=pick(PROFILE, quick=1, full=2),
                              importance=influence if ORDER == "block_influence" else order_importance(order))
profiler.save(CKPT / PROFILER_FILE)
fit_states = calibration_hidden(executor, valid[:, VALID_IMPORTANCE], max_windows=1)
held_out = calibration_hidden(executor, valid[:, VALID_ESTIMATOR_CHECK], max_windows=1, seed=1)
rows = [estimator_error(executor, fit_shortlist(executor, valid[:, VALID_IMPORTANCE], k=k, hidden=fit_states), held_out)
        for k in (16, 64, 256)]
est_table = pd.DataFrame(rows)
save_table(est_table, "02_entropy_estimator", PROFILE)
est_table

# %%
imp = pd.DataFrame({"layer": range(adapter.num_layers), "block_influence": influence.numpy(),
                    **{f"position_{name}": np.argsort(o) for name, o in orders.items()}})  # 0 = removed first
save_table(imp, "02_layer_importance", PROFILE)
print("profiler + heuristic overhead per call per token:", profiler.overhead_macs, "MACs =",
      f"{profiler.overhead_macs / executor.cost.layer_static:.2%} of a layer")

# %% [markdown]
# ## Heuristic traces on the valid split (with the bypass)

# %%
windows = sample_windows(valid, SEQ_LEN, N_WINDOWS, seed=SEED)
traces = collect_traces(executor, HeuristicController(profiler, plan=PLAN), windows[:HEURISTIC_WINDOWS], TRACE_BUDGETS)
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
to_dataset({k: v.to_numpy() for k, v in outcomes.items()}).to_parquet(
    str(trace_path.parent / "02_nested_outcomes.parquet"))
to_dataset(labelled).to_parquet(str(trace_path.parent / "02_hindsight_traces.parquet"))
hindsight = hindsight_summary(outcomes, allocation).merge(prices, on="budget")
save_table(hindsight, "02_hindsight_allocation", PROFILE)
save_json({"rows": len(df), "hindsight_rows": len(labelled["label"]), "features": list(FEATURES), "windows": N_WINDOWS,
           "heuristic_windows": HEURISTIC_WINDOWS, "seq_len": SEQ_LEN, "plan_marginal": PLAN_MARGINAL,
           "pacing_slack": PACING_SLACK, "hidden_size": int(labelled["hidden"].shape[1]), "bypass": CHOSEN,
           "bypass_macs": bypass.macs, "seeds": SEEDS}, "02_trace_meta", PROFILE)
hindsight

# %% [markdown]
# ## Budget adherence of the heuristic on the test split (with the bypass)

# %%
BUDGETS = pick(PROFILE, quick=[0.3, 0.6, 0.9, 1.0], full=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
adherence = budget_adherence(executor, {"heuristic": HeuristicController(profiler, plan=PLAN),
                                        "heuristic_every_layer": HeuristicController(profiler)},
                             test, BUDGETS, window=256)
save_table(adherence, "02_heuristic_budget", PROFILE)
adherence

# %%
# estimator << one layer (exact head: 8 layers)
assert est_table.loc[est_table.k == 64, "fraction_of_layer"].item() < 0.02
# identity: Block-Influence order; CHOSEN: ORDER
valid_rows = family_table[family_table.split == "valid"].set_index("bypass")
assert (valid_rows.loc[CHOSEN, f"ppl_at_{CHOICE_SAVING:g}"].mean()
        < valid_rows.loc["identity", f"ppl_at_{CHOICE_SAVING:g}"]).all()
assert (est_table.pearson_r > 0.4).all() and est_table.mae_nats.is_monotonic_decreasing
assert set(np.unique(df.action)) <= {PROCESS, SKIP} and len(df) > 500  # planned: PROCESS or SKIP on the marginal layers
assert summary.token_fraction.is_monotonic_increasing
assert (hindsight.mean_skips - PLAN.skip_share * hindsight.marginal).abs().max() < 0.01  # the price meets the share
assert (hindsight.hindsight_kl <= hindsight.static_kl + 1e-9).all()  # hindsight never loses to the static split
assert set(np.unique(labelled["label"])) <= {PROCESS, SKIP} and abs(np.mean(labelled["label"]) - PLAN.skip_share) < 0.02
assert (adherence.abs_error <= 0.05).all()
