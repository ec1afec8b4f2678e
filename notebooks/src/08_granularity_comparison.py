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
# * **ANEE**'s budget policy and, when notebook 06 has written them, its frontier rows.
#
# **Two cost units, stated per row.** Quantisation here is real (per-output-channel symmetric rounding
# to 4 or 8 bits) but executed as de-quantised fp32 on this CPU, so it saves *weight bytes read per
# token* (what a memory-bound batch-1 decoder pays), not multiplies: `rel_macs` stays 1. Depth and exit
# strategies save both. Every LM row therefore reports `rel_macs` and `rel_bytes` (both relative to the
# fp32 model incl. its fp32 LM head, which is tied to the embeddings and never quantised), and
# `energy_unit` names the unit the strategy's budget is expressed in.

# %% tags=["parameters"]
PROFILE = "quick"  # "quick" (CI) or "full" (make reproduce)
MODEL = "smollm2-135m"  # offline default; on Colab e.g. "gpt2" or "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
SEED = 0
THREADS = 1  # the shared 2-core runner: one thread avoids contention
DIGITS_SOURCE = "sklearn"  # "sklearn" (offline, 8x8) or "mnist" (HF Hub via `datasets`, online only)

# %% [colab]

# %%

import numpy as np
import pandas as pd
import torch

from anee import AdaptiveExecutor, adapter_for, load_model
from anee.branchynet import BranchyNet, load_digits_split, load_mnist_split, threshold_sweep, train_branchynet
from anee.data import wikitext_tokens
from anee.granularity import Strategies, granularity_figure, wall_clock_per_token
from anee.io import output_dir, save_figure, save_json, save_table
from anee.methods import block_influence, removal_order
from anee.notebook import pick, setup
from anee.perplexity import EvalContext
from anee.precision import refinement_threshold, segment_schedule, segment_sensitivity, segments
from anee.quantize import FP32, WeightBank
from anee.selection import ComplexityFeatures, EnergyAwareSelector, FuzzySelector, GatingSelector, Variant, pareto

setup(PROFILE, SEED, threads=THREADS)
WINDOW = pick(PROFILE, quick=64, full=128)
N_TEST = pick(PROFILE, quick=5, full=10)  # non-overlapping test windows (every reported number)
N_CAL = pick(PROFILE, quick=4, full=8)  # valid windows (calibration, selectors' training)
N_SENS = pick(PROFILE, quick=1, full=2)  # valid windows for the segment-sensitivity probe
BN_EPOCHS = pick(PROFILE, quick=25, full=60)

model, tokenizer = load_model(MODEL)
adapter = adapter_for(model)
executor = AdaptiveExecutor(adapter)
L = adapter.num_layers
test = wikitext_tokens(tokenizer, "test", N_TEST * WINDOW).view(N_TEST, WINDOW)
calib = wikitext_tokens(tokenizer, "valid", max(N_CAL, 4) * WINDOW).view(-1, WINDOW)[:N_CAL]
ctx = EvalContext(model, tokenizer, executor, calibration_ids=calib.reshape(1, -1))
bank = WeightBank(adapter, bits=(4, 8))
S = Strategies(ctx, bank)
print(f"{MODEL}: {L} layers; {N_TEST} test windows x {WINDOW} tokens, {N_CAL} valid windows")

# %% [markdown]
# ## The variants are really quantised
#
# Each INT-b weight row takes at most 2^b − 1 distinct values (symmetric codes, one fp32 scale per
# output channel) and stays within half a quantisation step of the original.

# %%
qcheck = []
for bits in (4, 8):
    with bank.applied(bits):
        w = adapter.layer(0).mlp.down_proj.weight.detach()
        levels = max(int(w[r].unique().numel()) for r in range(w.shape[0]))
    orig = bank.original[0][[n for n, _, _ in bank.linears[0]].index("mlp.down_proj")]
    step = orig.abs().amax(1, keepdim=True) / (2 ** (bits - 1) - 1)
    err = float(((bank.variants[bits][0][[n for n, _, _ in bank.linears[0]].index("mlp.down_proj")] - orig).abs() / step).max())
    qcheck.append({"bits": bits, "max_levels_per_channel": levels, "max_err_in_steps": err,
                   "rel_bytes_per_token": bank.token_bytes([bits] * L) / bank.full_bytes})
qcheck = pd.DataFrame(qcheck)
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
order = removal_order(influence)
D1, D2 = pick(PROFILE, quick=(6, 12), full=(6, 12))
POOL_SPECS = {  # name -> (bits, removed layers)
    "fp32": (FP32, ()),
    "int8": (8, ()),
    "int4": (4, ()),
    f"fp32-drop{D1}": (FP32, tuple(order[:D1])),
    f"fp32-drop{D2}": (FP32, tuple(order[:D2])),
    f"int8-drop{D1}": (8, tuple(order[:D1])),
}
pool_test, pool_cal = {}, {}
for name, (bits, removed) in POOL_SPECS.items():
    pool_test[name] = S.variant(test, bits, removed)
    pool_cal[name] = S.variant(calib, bits, removed)
pool_rows = pd.DataFrame([{"variant": n, "bits": POOL_SPECS[n][0], "layers": L - len(POOL_SPECS[n][1]),
                           "ppl_test": pool_test[n].ppl, "ppl_valid": pool_cal[n].ppl,
                           "rel_macs": pool_test[n].rel_macs(), "rel_bytes": pool_test[n].rel_bytes(bank)}
                          for n in POOL_SPECS])
save_table(pool_rows, "08_pool", PROFILE)
pool_rows

# %% [markdown]
# Wall-clock per token (its own file: only timing files may change between reruns). Fake-quant runs
# fp32 matmuls, so quantised variants are *not* faster here; only removed layers are.

# %%
timing_rows = []
probe = test[:1]
for name, (bits, removed) in POOL_SPECS.items():
    pattern = torch.tensor([1 if i in set(removed) else 0 for i in range(L)], dtype=torch.int8).expand(1, WINDOW, L)

    def run(bits=bits, pattern=pattern):
        with bank.applied(bits):
            executor.forward(probe, decisions=pattern)

    timing_rows.append({"variant": name, "seconds_per_token": wall_clock_per_token(run, WINDOW, repeats=1),
                        "threads": torch.get_num_threads()})
timings = pd.DataFrame(timing_rows)
save_table(timings, "08_timings", PROFILE)

# %% [markdown]
# ## Coarse selectors under a weight-byte budget
#
# Budgets are fractions of the fp32 model's weight bytes per token. The energy-aware selector holds the
# budget for every window; the fuzzy and gating selectors may spend more on a hard window and less on
# an easy one, but their running mean never exceeds the budget (`BudgetGuard`).

# %%
names = list(POOL_SPECS)
pool = [Variant(n, pool_test[n].rel_bytes(bank), float(pool_cal[n].mean_nll.mean())) for n in names]
# unigram statistics from valid text disjoint from the calibration windows
reference = wikitext_tokens(tokenizer, "valid", N_CAL * WINDOW + 30000)[:, N_CAL * WINDOW:]
featurize = ComplexityFeatures(reference, vocab_size=adapter.dims.vocab)
f_cal, f_test = featurize(calib), featurize(test)
nll_cal = np.stack([pool_cal[n].mean_nll for n in names], 1)
nll_test = np.stack([pool_test[n].nll for n in names], 1)
tok_test = pool_test["fp32"].tokens
macs_test = np.stack([pool_test[n].macs for n in names], 1)
front_costs = sorted(pool[i].cost for i in pareto(pool))
SEL_BUDGETS = sorted({round(float(b), 3) for b in
                      [(a + b) / 2 for a, b in zip(front_costs, front_costs[1:])] + [front_costs[0] + 0.01, 1.0]})
selectors = {"energy-aware": EnergyAwareSelector(pool), "fuzzy": FuzzySelector(pool, f_cal),
             "moe-gate": GatingSelector(pool, f_cal, nll_cal, lam=1.0)}
sel_rows, choices = [], {}
for sname, sel in selectors.items():
    for budget in SEL_BUDGETS:
        chosen = sel.select(f_test, budget)
        idx = np.arange(N_TEST)
        costs = np.array([pool[i].cost for i in chosen])
        choices[(sname, budget)] = [names[i] for i in chosen]
        sel_rows.append({"selector": sname, "budget": budget,
                         "ppl": float(np.exp(nll_test[idx, chosen].sum() / tok_test.sum())),
                         "rel_bytes": float((costs * tok_test).sum() / tok_test.sum()),
                         "max_window_rel_bytes": float(costs.max()),
                         "rel_macs": float(macs_test[idx, chosen].sum() / pool_test["fp32"].full_macs.sum()),
                         "variants_used": ",".join(sorted(set(choices[(sname, budget)])))})
sel_table = pd.DataFrame(sel_rows)
save_table(sel_table, "08_selectors", PROFILE)
sel_table

# %% [markdown]
# ## Medium: BranchyNet on digits, and entropy exit on the LM

# %%
if DIGITS_SOURCE == "mnist":
    xtr, ytr, xte, yte = load_mnist_split()
else:
    xtr, ytr, xte, yte = load_digits_split(seed=SEED)
torch.manual_seed(SEED)
bnet = BranchyNet()
bn_losses = train_branchynet(bnet, xtr, ytr, epochs=BN_EPOCHS, seed=SEED)
BN_THRESHOLDS = [0.0, 0.01, 0.03, 0.1, 0.2, 0.4, 0.8, 1.5, 10.0]
bn_table = pd.DataFrame(threshold_sweep(bnet, xte, yte, BN_THRESHOLDS))
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
SEG_BUDGETS = [round(cheapest + f * (int8_all - cheapest), 3) for f in pick(PROFILE, quick=[0.35, 0.7], full=[0.25, 0.5, 0.75])]
seg_scores, seg_patterns = {}, {}
for budget in SEG_BUDGETS:
    pattern = segment_schedule(bank, segs, budget, levels=(FP32, 8, 4), order=seg_order)
    seg_patterns[budget] = pattern
    seg_scores[budget] = S.schedule(test, pattern)
print("INT4 sensitivity per segment (NLL increase):", [round(s, 3) for s in sens])
for b, p in seg_patterns.items():
    print(b, [p[s[0]] for s in segs])

# %%
PROG_BUDGETS = [round(cheapest + f * int8_all, 3) for f in pick(PROFILE, quick=[0.2, 0.5], full=[0.15, 0.35, 0.7])]
prog_scores = {}
for budget in PROG_BUDGETS:
    thr = refinement_threshold(adapter, bank, calib[:N_SENS], budget, cheap_bits=4, fine_bits=8)
    prog_scores[budget] = S.progressive(test, budget, thr, cheap_bits=4, fine_bits=8) + (thr,)

# %% [markdown]
# ## ANEE (budget policy) on the same windows

# %%
ANEE_BUDGETS = pick(PROFILE, quick=[0.6, 0.9], full=[0.6, 0.8, 0.9])
anee_scores = {b: S.anee(test, b) for b in ANEE_BUDGETS}

# %% [markdown]
# ## One table, one figure

# %%
rows = []


def lm_row(strategy, granularity, setting, unit, scores, budget=None, **extra):
    r = {"strategy": strategy, "granularity": granularity, "setting": setting, "energy_unit": unit,
         "budget": budget, "rel_macs": scores.rel_macs(), "rel_bytes": scores.rel_bytes(bank),
         "quality_metric": "ppl", "quality": scores.ppl, "source": "08"}
    r["rel_energy"] = r["rel_bytes"] if unit == "weight bytes" else r["rel_macs"]
    r.update(extra)
    rows.append(r)


for n in names:
    lm_row(f"variant {n}", "coarse", n, "weight bytes", pool_test[n])
for _, r in sel_table.iterrows():
    rows.append({"strategy": f"select {r.selector}", "granularity": "coarse", "setting": f"budget={r.budget}",
                 "energy_unit": "weight bytes", "budget": r.budget, "rel_macs": r.rel_macs, "rel_bytes": r.rel_bytes,
                 "quality_metric": "ppl", "quality": r.ppl, "source": "08", "rel_energy": r.rel_bytes})
for thr, sc in exit_scores.items():
    lm_row("LM entropy exit", "medium", f"checks={EXIT_CHECKS},thr={thr}", "MACs", sc)
for b, sc in seg_scores.items():
    lm_row("segment precision", "fine", f"budget={b}", "weight bytes", sc, budget=b)
for b, (sc, frac, _thr) in prog_scores.items():
    lm_row("progressive INT4->INT8", "fine", f"budget={b},refined={frac:.2f}", "weight bytes", sc, budget=b)
for b, sc in anee_scores.items():
    lm_row("ANEE budget", "anee", f"budget={b}", "MACs (total; budget is layer compute)", sc, budget=b)
for _, r in bn_table.iterrows():
    rows.append({"strategy": "BranchyNet (digits)", "granularity": "medium", "setting": f"thr={r.threshold}",
                 "energy_unit": "MACs (CNN)", "budget": None, "rel_macs": r.rel_macs, "rel_bytes": np.nan,
                 "quality_metric": "accuracy", "quality": r.accuracy, "source": "08", "rel_energy": r.rel_macs})

# Rows from notebook 06 beyond the baselines already run here (learned ANEE controllers, hierarchical
# model), only if 06 has run. They use 06's own windows, so their perplexity enters the figure relative
# to 06's own full-model row.
BASELINES = {"full", "block_influence", "logit_lens", "anee_budget"}
frontier06 = output_dir("results", PROFILE) / "06_frontier.csv"
n06 = 0
if frontier06.is_file():
    f06 = pd.read_csv(frontier06)
    if {"method", "ppl", "total_saved_net"} <= set(f06.columns) and (f06.method == "full").any():
        full06 = float(f06.loc[f06.method == "full", "ppl"].iloc[0])
        for _, r in f06[~f06.method.isin(BASELINES)].iterrows():
            setting = "" if pd.isna(r.get("setting")) else str(r.get("setting"))
            rows.append({"strategy": f"06 {r['method']}", "granularity": "06", "setting": setting,
                         "energy_unit": "MACs", "budget": None, "rel_macs": 1 - r["total_saved_net"],
                         "rel_bytes": np.nan, "quality_metric": "ppl", "quality": r["ppl"],
                         "quality_rel_fp32": r["ppl"] / full06, "source": "06_frontier.csv (06's windows)",
                         "rel_energy": 1 - r["total_saved_net"]})
            n06 += 1
print("06 frontier file present:", frontier06.is_file(), "| rows taken from it:", n06)
table = pd.DataFrame(rows)
fp32_ppl = pool_test["fp32"].ppl
own_ppl = (table.quality_metric == "ppl") & (table.source == "08")
table.loc[own_ppl, "quality_rel_fp32"] = table.loc[own_ppl, "quality"] / fp32_ppl
table = table[["granularity", "strategy", "setting", "energy_unit", "budget", "rel_energy", "rel_macs", "rel_bytes",
               "quality_metric", "quality", "quality_rel_fp32", "source"]]
save_table(table, "08_granularity", PROFILE)
table.round(4)

# %%
lm = table[table.quality_metric == "ppl"]
fig = granularity_figure(table, bn_table)
save_figure(fig, "08_granularity", PROFILE)

# %%
best = {}
for gran in ["coarse", "medium", "fine", "anee"]:
    g = lm[(lm.granularity == gran) & (lm.quality <= fp32_ppl * 1.05)]
    best[gran] = None if g.empty else g.sort_values("rel_bytes").iloc[0][["strategy", "setting", "rel_bytes", "rel_macs", "quality"]].to_dict()
save_json({"fp32_ppl": fp32_ppl, "cheapest_within_5pct_of_fp32_by_bytes": best,
           "segment_sensitivity": sens, "bn_epochs": BN_EPOCHS}, "08_summary", PROFILE)
for gran, b in best.items():
    print(f"{gran:7s}", "none within 5% of fp32" if b is None else
          f"{b['strategy']} {b['setting']}: bytes {b['rel_bytes']:.3f}, MACs {b['rel_macs']:.3f}, ppl {b['quality']:.1f}")

# %% [markdown]
# ## Interpretation
#
# (Numbers quoted from the full profile, `results/08_granularity.csv`: 10 test windows of 128 tokens;
# the quick profile is smaller and noisier but shows the same ordering.)
#
# * **On this model the lever is weight precision, not depth.** INT8 per-channel weights cost nothing in
#   perplexity (42.0 vs 42.2 for fp32; SmolLM2's embedded weights were 4-bit GGUF to begin with) and cut
#   weight traffic to 0.41 of fp32; INT4 reaches 0.31 (the fp32 LM head, 21 % of the bytes, is the floor)
#   at ppl 67.5. Removing 6 of 30 layers saves 16 % of MACs but doubles perplexity (92). Quantisation saves
#   no multiply here: on the MAC axis every quantised strategy sits at 1.0, which is why the table states
#   the unit of each row.
# * **Coarse selectors** honour their budgets by construction (`BudgetGuard`, asserted below). With one
#   variant per window they can only interpolate between INT4 and INT8 by mixing windows (fuzzy: ppl 54 at
#   0.35 bytes); the model-free complexity features are weak predictors of which window tolerates INT4,
#   and the MoE gate, trained on a handful of valid windows, collapses to a per-budget constant choice.
# * **Medium granularity** works where the exits are trained: BranchyNet keeps 98 % digit accuracy at
#   about half the MACs and loses only a point at 0.28. On the LM the untrained logit lens fails twice:
#   every check reads the LM head (≈ 8 layers of MACs and bytes), so the entropy exit costs *more* than
#   the full model, and its confident early predictions are often wrong (ppl 80 to 770).
# * **Fine granularity wins the byte axis.** Segment-level precision switching, spending the budget on the
#   segments that calibration found most INT4-sensitive (first and last), reaches ppl 44.1 at 0.36 and
#   42.8 at 0.38 of fp32 bytes, i.e. below INT8's cost at nearly its quality, better than any coarse
#   selection at the same bytes. Progressive refinement (INT4 pass, INT8 re-execution of the uncertain
#   tokens) also beats the coarse mix per byte at its budgets but less than segment switching, and it pays
#   for every refined token twice in MACs (up to 1.7x).
# * **ANEE's simple budget policy** (no trained exits or routers) is not competitive on perplexity here:
#   skipping even the last 10 % of layers explodes it (2e4), so its rows sit at the top edge of the plot.
#   The hierarchical / RL rows of notebook 06 appear when `06_frontier.csv` exists (MACs only, their own
#   windows, marked in `source`).

# %%
# every selector honours its budget over the evaluation set (running mean, hence the total)
for (sname, budget), chosen in choices.items():
    costs = np.array([pool[names.index(c)].cost for c in chosen])
    assert (np.cumsum(costs) / np.arange(1, len(costs) + 1) <= budget + 1e-9).all(), (sname, budget)
    if sname == "energy-aware":
        assert costs.max() <= budget + 1e-9
assert (sel_table.rel_bytes <= sel_table.budget + 1e-9).all()
# fine-grained strategies stay within their byte budgets
for b, sc in seg_scores.items():
    assert sc.rel_bytes(bank) <= b + 1e-9
for b, (sc, frac, _thr) in prog_scores.items():
    assert sc.rel_bytes(bank) <= b + 1e-9 and 0 <= frac <= 1
# quantisation is real and its cost model is bytes, not MACs
assert (qcheck.max_levels_per_channel <= 2 ** qcheck.bits).all() and (qcheck.max_err_in_steps <= 0.5 + 1e-4).all()
assert pool_rows.set_index("variant").loc["int4", "rel_macs"] == 1.0
assert pool_rows.set_index("variant").loc["int4", "rel_bytes"] < pool_rows.set_index("variant").loc["int8", "rel_bytes"] < 0.5
assert pool_test["int8"].ppl < 1.05 * fp32_ppl < pool_test["int4"].ppl
# BranchyNet: exits save compute; the no-exit end of the sweep is accurate
assert bn_table.avg_macs.is_monotonic_decreasing and bn_table.accuracy.iloc[0] > 0.9
assert bn_table.rel_macs.iloc[-1] < 0.2 and bn_table.exit1_frac.iloc[-1] == 1.0
