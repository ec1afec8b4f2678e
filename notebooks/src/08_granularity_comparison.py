# %% [markdown]
# # 08 · Granularity of adaptivity: model selection → early exit → intra-inference precision
#
# Where does adaptivity pay off, from coarse to fine? On the same model (SmolLM2-135M, 30 layers) and
# the same WikiText-2 test windows we compare
#
# * **coarse** — one variant per input window from a pool (fp32, INT8, INT4 weight-quantised copies and
#   depth-reduced copies), chosen by an energy-aware selector, a fuzzy complexity-aware selector and an
#   MoE-style gate, each under a hard budget;
# * **medium** — confidence-based early exit: a BranchyNet on scikit-learn digits, and the same entropy
#   rule on the LM through the logit lens;
# * **fine** — per-segment precision switching under a byte budget, and progressive refinement (INT4
#   pass, INT8 re-execution of uncertain tokens);
# * **ANEE**'s budget policy, at fp32 and on INT8 kernels (budget × precision), and, when notebook 06
#   has written them, its frontier rows.
#
# **Three energy proxies, stated per row.** Two are *counted*: multiply-accumulates (`rel_macs`) and
# weight bytes read per token by a memory-bound batch-1 decoder (`rel_bytes`), both relative to the
# fp32 model incl. its fp32 LM head (tied to the embeddings, never quantised); `energy_unit` names
# the one a strategy's budget is expressed in. The fake-quant variants (per-output-channel symmetric
# rounding to 4 or 8 bits, executed as de-quantised fp32) save bytes but no multiplies and, measured,
# no time: they are the counted-bytes reference. The **real INT8** rows run torch's INT8 kernels on
# smoothed blocks. The third proxy is *measured*: decode speed at batch 1 relative to fp32, every row
# in one interleaved run (`08_decode_timings`, a timings file kept apart from the quality tables).

# %% tags=["parameters"]
PROFILE = "quick"  # "quick" (CI) or "full" (make reproduce)
MODEL = "smollm2-135m"  # offline default; on Colab e.g. "gpt2" or "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
DEVICE = "auto"  # "auto": CUDA when torch sees a GPU, else the CPU; or "cpu", "cuda", "cuda:1"
DTYPE = "float32"  # or "float16" / "bfloat16" on a GPU
SEED = 0
SEEDS = None  # BranchyNet training seeds (None: the profile's, [0] quick, [0, 1] full)
# torch threads (None: the profile's, 1 quick: the shared CI runner; 2 full: make reproduce's idle machine)
THREADS = None
DIGITS_SOURCE = "sklearn"  # "sklearn" (offline, 8x8) or "mnist" (HF Hub via `datasets`, online only)

# %% [colab]

# %%

import numpy as np
import pandas as pd
import torch

from anee import AdaptiveExecutor, adapter_for, load_model
from anee.core.data import wikitext_tokens
from anee.engine.importance import block_influence, removal_order
from anee.engine.prefix_memo import shared_prefixes
from anee.evaluation.context import EvalContext
from anee.evaluation.granularity.pool import (
    budget_violations,
    kernel_specs,
    make_selectors,
    measure_pool,
    pool_specs,
    quantisation_check,
    run_selectors,
    selector_budgets,
)
from anee.evaluation.granularity.speed import decode_speeds, with_predictions, with_speed
from anee.evaluation.granularity.strategies import Strategies
from anee.evaluation.granularity.table import decode_plan, describe_best, granularity_summary, granularity_table
from anee.engine.controllers.learned import load_controller
from anee.evaluation.frontier import load_bypass, trained_engine
from anee.evaluation.methods.controllers import policy_file
from anee.evaluation.notebook import pick, seeds, setup
from anee.evaluation.seeds import summarize
from anee.evaluation.results import output_dir, save_figure, save_json, save_table
from anee.granularity.branchynet import (
    BranchyNet,
    load_digits_split,
    load_mnist_split,
    threshold_sweep,
    train_branchynet,
)
from anee.granularity.int8 import calibrate_smoothing, smoothed
from anee.granularity.precision import (
    refinement_threshold,
    segment_budget,
    segment_schedule,
    segment_sensitivity,
    segments,
)
from anee.granularity.quantize import FP32, WeightBank
from anee.granularity.selection import ComplexityFeatures
from anee.viz.granularity import granularity_figure

setup(PROFILE, SEED, threads=pick(PROFILE, quick=1, full=2) if THREADS is None else THREADS)
SEEDS = seeds(PROFILE, SEEDS)
WINDOW = pick(PROFILE, quick=64, full=128)
N_TEST = pick(PROFILE, quick=5, full=10)  # non-overlapping test windows (every reported number)
N_CAL = pick(PROFILE, quick=4, full=8)  # valid windows (calibration, selectors' training)
N_SENS = pick(PROFILE, quick=1, full=2)  # valid windows for the segment-sensitivity probe
BN_EPOCHS = pick(PROFILE, quick=25, full=60)
# measured decode speed; full: one round after the warm-up (2 until runZ10, ~40 s of make reproduce's hour;
# one round is noisier per row, and the timings are their own file)
DECODE_TOKENS, DECODE_ROUNDS = pick(PROFILE, quick=(16, 1), full=(32, 1))

model, tokenizer = load_model(MODEL, device=DEVICE, dtype=DTYPE)
adapter = adapter_for(model)
executor = AdaptiveExecutor(adapter)
L = adapter.num_layers
test = wikitext_tokens(tokenizer, "test", N_TEST * WINDOW).view(N_TEST, WINDOW)
calib = wikitext_tokens(tokenizer, "valid", max(N_CAL, 4) * WINDOW).view(-1, WINDOW)[:N_CAL]
ctx = EvalContext(model, tokenizer, executor, calibration_ids=calib.reshape(1, -1))
bank = WeightBank(adapter, bits=(4, 8))
S = Strategies(ctx, bank)
CKPT = output_dir("results", PROFILE) / "checkpoints"
print(f"{MODEL}: {L} layers; {N_TEST} test windows x {WINDOW} tokens, {N_CAL} valid windows")

# %% [markdown]
# ## The variants are really quantised
#
# Each INT-b weight row takes at most 2^b − 1 distinct values (symmetric codes, one fp32 scale per
# output channel) and stays within half a quantisation step of the original.

# %%
qcheck = quantisation_check(bank, bits=(4, 8), layer=0, module="mlp.down_proj")
# NBVAL_CHECK_OUTPUT
print(qcheck[["bits", "max_levels_per_channel"]].to_string(index=False))
print("max error <= half a step:", bool((qcheck.max_err_in_steps <= 0.5 + 1e-4).all()))

# %% [markdown]
# ## Coarse: a pool of variants, measured per window
#
# Depth-reduced copies drop the layers with the lowest Block Influence (ShortGPT order, calibrated
# on the valid split). Every variant runs on every test and calibration window; quality is NLL per
# scored token, cost is per token in both units.

# %%
influence = block_influence(executor, calib.reshape(1, -1), window=WINDOW, max_windows=N_CAL)
D1, D2 = pick(PROFILE, quick=(6, 12), full=(6, 12))
POOL_SPECS = pool_specs(removal_order(influence), D1, D2)  # name -> (bits, removed layers)
pool = measure_pool(S, POOL_SPECS, test, calib)

# %% [markdown]
# ## Real INT8: smoothed blocks on INT8 kernels
#
# The real INT8 path (`anee.granularity.int8`) runs every linear map of a block with torch's
# fbgemm/x86 dynamic INT8 kernel on the same 8-bit weight codes, each token's activations quantised
# to 8 bits on their own range. First, activation outliers move into the weights (SmoothQuant,
# alpha 0.5, calibrated on the valid split; saved as safetensors): the scales are powers of two and
# folded into the RMSNorm weights and up_proj rows, so the smoothed fp32 model is bit-identical.

# %%
smoothing = calibrate_smoothing(adapter, calib)
smoothing.save(CKPT / "int8_smoothing.safetensors")
with torch.no_grad():
    ref_logits = executor.forward(test[:1]).logits
    with smoothed(adapter, smoothing):
        smooth_change = float((executor.forward(test[:1]).logits - ref_logits).abs().max())
# NBVAL_CHECK_OUTPUT
print("smoothed fp32 model, largest logit change:", smooth_change)
kbank = WeightBank(adapter, bits=(8,), kernels=True, smoothing=smoothing)
KS = Strategies(ctx, kbank)
kpool = measure_pool(KS, kernel_specs(removal_order(influence), D1), test, calib)
pool_rows = pd.concat([pool.table(), kpool.table()], ignore_index=True)
save_table(pool_rows, "08_pool", PROFILE)
pool_rows

# %% [markdown]
# ## Coarse selectors under a weight-byte budget
#
# Budgets are fractions of the fp32 model's weight bytes per token. The energy-aware selector holds the
# budget for every window; the fuzzy and gating selectors may spend more on a hard window and less on
# an easy one, but their running mean never exceeds the budget (`BudgetGuard`).

# %%
# unigram statistics from valid text disjoint from the calibration windows
reference = wikitext_tokens(tokenizer, "valid", N_CAL * WINDOW + 30000)[:, N_CAL * WINDOW:]
featurize = ComplexityFeatures(reference, vocab_size=adapter.dims.vocab)
f_cal, f_test = featurize(calib), featurize(test)
variants = pool.variants()  # cost: rel weight bytes; quality: mean NLL on the calibration windows
SEL_BUDGETS = selector_budgets(variants)  # between consecutive Pareto costs, just above the cheapest, 1.0
selectors = make_selectors(pool, f_cal)
sel_table, choices = run_selectors(selectors, pool, f_test, SEL_BUDGETS)
save_table(sel_table, "08_selectors", PROFILE)
sel_table

# %% [markdown]
# ## Medium: BranchyNet on digits, and entropy exit on the LM

# %%
if DIGITS_SOURCE == "mnist":
    xtr, ytr, xte, yte = load_mnist_split()
else:
    xtr, ytr, xte, yte = load_digits_split(seed=SEED)
BN_THRESHOLDS = [0.0, 0.01, 0.03, 0.1, 0.2, 0.4, 0.8, 1.5, 10.0]
bn_runs = []
for seed in SEEDS:
    bnet = BranchyNet(seed=seed)
    train_branchynet(bnet, xtr, ytr, epochs=BN_EPOCHS, seed=seed)
    bn_runs.append(pd.DataFrame(threshold_sweep(bnet, xte, yte, BN_THRESHOLDS)).assign(seed=seed))
bn_runs = pd.concat(bn_runs, ignore_index=True)
save_table(bn_runs, "08_branchynet_runs", PROFILE)
bn_table = summarize(bn_runs, ["threshold"],
                     ["accuracy", "avg_macs", "rel_macs", "exit1_frac", "exit2_frac", "exit3_frac"])
save_table(bn_table, "08_branchynet", PROFILE)
bn_table

# %% [markdown]
# The LM version checks the logit-lens entropy at a few late depths. Each check reads the LM head
# (49 152 × 576 weights, about eight layers' worth of MACs and bytes), charged to every token still running.

# %%
EXIT_CHECKS = [24, 27]
EXIT_THRESHOLDS = pick(PROFILE, quick=[0.02, 0.1], full=[0.01, 0.05, 0.2])
exit_scores = {thr: S.entropy_exit(test, EXIT_CHECKS, thr) for thr in EXIT_THRESHOLDS}

# %% [markdown]
# ## Fine: segment precision switching and progressive refinement
#
# Six segments of five layers. The policy walks the segments (most INT4-sensitive first, measured on the
# valid split) and gives each the highest precision the remaining byte budget affords while keeping
# enough for the remaining segments at INT4.

# %%
segs = segments(L, 6)
sens = segment_sensitivity(adapter, bank, calib[:N_SENS], segs, bits=4)
seg_order = list(np.argsort(sens)[::-1])
cheapest = bank.token_bytes([4] * L) / bank.full_bytes
int8_all = bank.token_bytes([8] * L) / bank.full_bytes
SEG_BUDGETS = [round(cheapest + f * (int8_all - cheapest), 3)
               for f in pick(PROFILE, quick=[0.35, 0.7], full=[0.25, 0.5, 0.75])]
seg_scores, seg_patterns = {}, {}
for budget in SEG_BUDGETS:
    pattern = segment_schedule(bank, segs, budget, levels=(FP32, 8, 4), order=seg_order)
    seg_patterns[budget] = pattern
    seg_scores[budget] = S.schedule(test, pattern)
print("INT4 sensitivity per segment (NLL increase):", [round(s, 3) for s in sens])
for b, p in seg_patterns.items():
    print(b, [p[s[0]] for s in segs])

# %% [markdown]
# The same switching with real kernels: each segment runs fp32 or INT8 kernels (fake INT4 would cost
# fp32 time), the INT8-sensitive segments keep fp32. Budgets put 2, 3 or 4 of the 6 segments at INT8.

# %%
ksens = segment_sensitivity(adapter, kbank, calib[:N_SENS], segs, bits=8)
korder = list(np.argsort(ksens)[::-1])
KSEG_BUDGETS = [segment_budget(kbank, segs, k, cheap_bits=8, order=korder)
                for k in pick(PROFILE, quick=[3], full=[2, 3, 4])]
kseg_scores = {b: KS.schedule(test, segment_schedule(kbank, segs, b, levels=(FP32, 8), order=korder))
               for b in KSEG_BUDGETS}
print("INT8-kernel sensitivity per segment (NLL increase):", [round(s, 4) for s in ksens])

# %%
PROG_BUDGETS = [round(cheapest + f * int8_all, 3) for f in pick(PROFILE, quick=[0.2, 0.5], full=[0.15, 0.35, 0.7])]
prog_scores = {}
for budget in PROG_BUDGETS:
    thr = refinement_threshold(adapter, bank, calib[:N_SENS], budget, cheap_bits=4, fine_bits=8)
    prog_scores[budget] = S.progressive(test, budget, thr, cheap_bits=4, fine_bits=8) + (thr,)

# %% [markdown]
# ## ANEE on the same windows
# The REINFORCE controller of notebook 04 (seed `SEED`) with notebook 02's layer bypass when those
# checkpoints exist in this profile's folder; otherwise the seed's simple budget policy.

# %%
ANEE_BUDGETS = pick(PROFILE, quick=[0.6, 0.9], full=[0.6, 0.8, 0.9])
if load_bypass(CKPT, adapter) is not None and (CKPT / policy_file("rl", SEED)).is_file():
    anee_executor, anee_profiler = trained_engine(CKPT, adapter)
    anee_controller = load_controller(CKPT / policy_file("rl", SEED), anee_profiler)
    ANEE_NAME = "ANEE RL+bypass"
else:
    anee_executor, anee_controller, ANEE_NAME = executor, None, "ANEE budget"
with shared_prefixes(anee_executor):  # the layers every budget's plan processes run once per window (same numbers)
    anee_scores = {b: S.anee(test, b, anee_controller, anee_executor) for b in ANEE_BUDGETS}
# budget x precision: the same controller and bypass on INT8 kernels
anee_int8_executor = AdaptiveExecutor(adapter, bypass=anee_executor.bypass, weights=kbank.at(8))
with shared_prefixes(anee_int8_executor):
    anee_int8_scores = {b: S.anee(test, b, anee_controller, anee_int8_executor) for b in ANEE_BUDGETS}
print(ANEE_NAME)

# %% [markdown]
# ## One table, one figure

# %%
# Rows from notebook 06 beyond the baselines already run here (learned ANEE controllers, hierarchical
# model) are added only if 06 has run; their perplexity is relative to 06's own full-model row.
frontier06 = output_dir("results", PROFILE) / "06_frontier.csv"
parts = dict(bank=bank, pool_test={**pool.test, **kpool.test}, sel_table=sel_table, exit_checks=EXIT_CHECKS,
             exit_scores=exit_scores, seg_scores=seg_scores, prog_scores=prog_scores, anee_scores=anee_scores,
             anee_name=ANEE_NAME, bn_table=bn_table, frontier06=frontier06, kernel_seg_scores=kseg_scores,
             anee_int8_scores=anee_int8_scores, choices=choices)
table = granularity_table(**parts)
print("06 frontier file present:", frontier06.is_file(), "| rows taken from it:",
      int((table.granularity == "06").sum()))
save_table(table, "08_granularity", PROFILE)

# %% [markdown]
# Measured decode speed of every row (batch 1, greedy, on the notebook's threads, `DECODE_TOKENS` new tokens, all
# rows interleaved in one run, minimum over `DECODE_ROUNDS` rounds), beside the cost model's
# prediction (1 / the row's counted energy). Selectors and progressive refinement are *composed* from
# the measured runs of what they execute.

# %%
speeds = with_predictions(decode_speeds(model, tokenizer, decode_plan(**parts), DECODE_TOKENS, DECODE_ROUNDS), table)
save_table(speeds, "08_decode_timings", PROFILE)
shown = with_speed(table, speeds)
shown.round(4)

# %%
fig = granularity_figure(shown, bn_table)
save_figure(fig, "08_granularity", PROFILE)

# %%
fp32_ppl = pool.test["fp32"].ppl
summary = granularity_summary(table, fp32_ppl, sens, BN_EPOCHS)  # cheapest by bytes within 5 % of fp32
save_json(summary, "08_summary", PROFILE)
print("\n".join(describe_best(summary["cheapest_within_5pct_of_fp32_by_bytes"])))

# %% [markdown]
# ## Interpretation
#
# The numbers are in the table and the summary above (and `results/08_*.csv` for the full profile);
# what they say, and why:
#
# * **Counted bytes are not measured time.** The fake-quant variants (`int8`, `int4`) keep their
#   quantisation error but de-quantise to fp32 before every matmul, so their measured speed is about
#   fp32's although their weight bytes predict 2.4× and 3.2×: they are the *counted* reference. The
#   `int8-kernel` rows run torch's fbgemm INT8 kernels on SmoothQuant-smoothed blocks and are really
#   faster, but by less than bytes predict (`measured_over_predicted` < 1): each token's activations
#   are quantised on the fly, the LM head, attention over the cache, norms and rotary stay in fp32,
#   and at batch 1 a 576-wide matmul is not purely weight-bandwidth-bound on this CPU.
# * **On this model the lever is weight precision, not depth.** INT8 weights cost almost nothing in
#   perplexity; INT4 and removing layers without a bypass cost a lot. Quantisation saves no multiply:
#   on the MAC axis a purely quantised strategy sits at 1.0 (progressive refinement, which reruns
#   segments, above it), which is why each row states its unit.
# * **Coarse selectors** honour their budgets by construction (`BudgetGuard`, asserted below); with one
#   variant per window they can only interpolate between INT4 and INT8 by mixing windows, and the
#   model-free complexity features are weak predictors of which window tolerates INT4.
# * **Medium granularity** works where the exits are trained (BranchyNet on digits). On the LM the
#   untrained logit lens fails twice: every check reads the LM head, so the entropy exit costs as much as
#   the full model or more, and its confident early predictions are often wrong.
# * **Fine granularity wins the byte axis**: segment-level precision switching spends the budget on
#   the segments calibration found most sensitive, below INT8's bytes at nearly its quality. With INT8
#   kernels it is also measurably faster (its `measured_over_predicted` says how close to its bytes).
# * **Depth and precision combine**: the ANEE row (the REINFORCE controller with the layer bypass of
#   notebook 02, when present) on INT8 kernels adds the two savings in counted bytes and MACs; in
#   measured decode speed it has gained little or nothing over the INT8 kernels alone in our runs on
#   this machine (the decode table above; we have not measured where the skipped layers' time goes).

# %%
# every selector honours its budget over the evaluation set (running mean, hence the total);
# the energy-aware one on every window
violations = budget_violations(choices, variants, per_input=("energy-aware",))
assert not violations, violations
assert (sel_table.rel_bytes <= sel_table.budget + 1e-9).all()
# fine-grained strategies stay within their byte budgets
for b, sc in seg_scores.items():
    assert sc.rel_bytes(bank) <= b + 1e-9
for b, (sc, frac, _thr) in prog_scores.items():
    assert sc.rel_bytes(bank) <= b + 1e-9 and 0 <= frac <= 1
# quantisation is real and its cost model is bytes, not MACs
assert (qcheck.max_levels_per_channel <= 2 ** qcheck.bits).all() and (qcheck.max_err_in_steps <= 0.5 + 1e-4).all()
assert pool_rows.set_index("variant").loc["int4", "rel_macs"] == 1.0
assert (pool_rows.set_index("variant").loc["int4", "rel_bytes"]
        < pool_rows.set_index("variant").loc["int8", "rel_bytes"] < 0.5)
assert pool.test["int8"].ppl < 1.05 * fp32_ppl < pool.test["int4"].ppl
# real INT8: smoothing is exact in fp32, kernels keep quality, run INT8 modules and decode faster than fp32
assert smooth_change <= 1e-4 and kbank.restored and bank.restored
assert kpool.test["int8-kernel"].ppl < 1.05 * fp32_ppl
for b, sc in kseg_scores.items():
    assert sc.rel_bytes(kbank) <= b + 1e-9
# (speed itself is a measurement, reported above and by `python -m anee.evaluation.int8_bench`, not asserted)
assert not speeds.speed_rel_fp32[speeds.source != "none"].isna().any()
# BranchyNet: exits save compute; the no-exit end of the sweep is accurate
assert bn_table.avg_macs.is_monotonic_decreasing and bn_table.accuracy.iloc[0] > 0.9
assert bn_table.rel_macs.iloc[-1] < 0.2 and bn_table.exit1_frac.iloc[-1] == 1.0
