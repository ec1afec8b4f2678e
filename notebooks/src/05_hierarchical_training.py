# %% [markdown]
# # 05 · Hierarchical adaptive transformer: FFN routers + exit gates on a frozen base
#
# The seed's "hierarchical" model, rebuilt on the frozen SmolLM2-135M (no base weight changes):
#
# - **FFN routers on every layer** (MoE-style, one linear router per layer): a token runs a layer's FFN
#   only if routed; attention always runs. Capacity is the fraction of (token, layer) FFN calls kept.
#   Training routes the top-k tokens of each sequence (straight-through gradient, router z-loss and
#   entropy penalty); **inference routes causally** with per-layer thresholds calibrated on the
#   validation split, applied to the router score minus the running mean of the earlier tokens' scores
#   (top-k only ranks within a sequence, so absolute scores drift with the topic; the causal centring
#   removes the drift), so a token's decision never depends on later tokens.
# - **Exit gates** at depths 6, 12, 18, 23, 27 (at 0.2, 0.4, 0.6, 0.77, 0.9 of the depth, as the seed's
#   4/8/12/16/19 of 22 roughly are), trained with a hard Gumbel-softmax whose backward temperature is
#   decoupled from the forward one. Exits decode via the final norm + LM head, either directly (logit
#   lens) or through a per-exit affine tuned lens.
# - **Two phases**: routers first, then exits (`anee.hierarchical.train(phase=...)`); checkpoints are
#   safetensors with shape/metadata checks. All training data comes from WikiText-2 *valid*; every
#   reported number is on WikiText-2 *test*.
#
# Compute is counted exactly with `anee.core.cost.CostModel`: a layer without its FFN costs
# `layer - mlp`, an exited token still computes K/V at the remaining layers (`kv_only`, so later tokens
# can attend to it), routers/gates/lens are overhead, the LM head is paid by every token.

# %% tags=["parameters"]
PROFILE = "quick"  # "quick" (CI) or "full" (make reproduce)
MODEL = "smollm2-135m"  # offline default; on Colab e.g. "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
DEVICE = "auto"  # "auto": CUDA when torch sees a GPU, else the CPU; or "cpu", "cuda", "cuda:1"
DTYPE = "float32"  # or "float16" / "bfloat16" on a GPU
SEED = 0
# None: the profile's ([0] quick, [0, 1] full); phase 1 (routers, FFN bypass) per seed, exits with SEED
SEEDS = None
CAPACITIES = [0.9, 0.7, 0.55, 0.4]
FFN_BYPASS = ("linear", 0)  # family and rank of what a token not routed to an FFN gets instead
TARGET_SPEEDUP = 1.3
THREADS = 2  # the machine's cores: 1.5x faster than one when nothing else runs (quick profile: 93 s against 143 s)

# %% [colab]

# %%
import pandas as pd

from anee import load_model
from anee.core.bypass import BypassConfig
from anee.core.data import sample_windows, wikitext_tokens
from anee.evaluation.hierarchical import capacity_table, causality_check, evaluate_setting, exit_table, timing_table
from anee.evaluation.methods.hierarchical import checkpoint_path
from anee.evaluation.notebook import pick, seeds, setup
from anee.evaluation.results import output_dir, save_figure, save_json, save_table
from anee.evaluation.seeds import summarize
from anee.hierarchical import HierarchicalModel, TrainConfig, train
from anee.viz.hierarchical import routing_analysis, training_curves

setup(PROFILE, SEED, threads=THREADS)
SEEDS = seeds(PROFILE, SEEDS)
WINDOW = 256  # evaluation and calibration window (tokens); stride = window
# routers: closed-form warm start only (straight-through top-k training made them worse with the
# bypass in our runs); the FFN bypass: closed form, then tuned end to end under the routers. The full
# profile measures the per-layer sensitivities on 8 windows and fits the routers on 32 (sensitivities
# on one window and routers on 8 left a 40-point gap between two seeds at capacity 0.7), and tunes the
# bypass for 60 steps (80 until runZ6, whose bypass KL was no lower after step 20 than at it, within its
# step-to-step noise; cut for make reproduce's hour); the routers are then fitted again to the tuned bypass
# (`anee.hierarchical.training`).
TRAIN = TrainConfig(seq_len=pick(PROFILE, quick=64, full=128), batch=2, router_steps=0,
                    router_init_windows=pick(PROFILE, quick=8, full=32),
                    bypass_fit_windows=pick(PROFILE, quick=16, full=64),
                    bypass_steps=pick(PROFILE, quick=2, full=60), exit_steps=pick(PROFILE, quick=5, full=16),
                    sensitivity_windows=pick(PROFILE, quick=1, full=8),
                    lens_fit_windows=pick(PROFILE, quick=2, full=4), seed=SEED)
# quick: on 4, capacity 0.55 realized 0.603 (8edfa0e), outside the +-0.05 check
CALIB_WINDOWS = pick(PROFILE, quick=8, full=12)
# 1,024 tokens moved capacity 0.7 by 10-15 points between text spans
TEST_TOKENS = pick(PROFILE, quick=512, full=4096)
TIMING_ROUNDS = pick(PROFILE, quick=2, full=5)
model, tokenizer = load_model(MODEL, device=DEVICE, dtype=DTYPE)
valid = wikitext_tokens(tokenizer, "valid", 20_000)  # training + calibration
test = wikitext_tokens(tokenizer, "test", TEST_TOKENS)  # reported numbers only
# threshold calibration: windows spread over the validation split (router scores vary with the topic)
calib = sample_windows(valid, WINDOW, CALIB_WINDOWS, seed=SEED + 123)
CKPT = output_dir("results", PROFILE) / "checkpoints"
print(f"{MODEL}: {model.config.num_hidden_layers} layers; train windows {TRAIN.batch}x{TRAIN.seq_len}, "
      f"{TRAIN.bypass_steps} bypass + {TRAIN.exit_steps} exit steps; calibration {tuple(calib.shape)}; "
      f"test {TEST_TOKENS} tokens; seeds {SEEDS}")

# %% [markdown]
# ## Training
#
# A token not routed to a layer's FFN gets that layer's **FFN bypass** (a linear map from the
# post-attention stream to an approximation of the FFN's update, `anee.core.bypass`), charged in the
# compute. Phase 1 fits the bypass in closed form, measures each layer's FFN sensitivity (KL to the
# full model when the layer's FFN is replaced by its bypass for *every* token), warm-starts the
# routers in closed form (they predict how far the bypass would leave each token from the real FFN),
# tunes the bypasses end to end under the routers and fits the routers again to the tuned bypasses
# (whose errors lie elsewhere than those of their closed-form start). The sensitivity decides how a
# requested capacity is spread over layers: skip fractions `f_l = min(0.9, mu * s_l^-2)` with mean capacity as
# requested: exponent 2 (`ALLOCATION_EXPONENT` in `anee.hierarchical.model`, where its selection on
# held-out valid text is described) skips more of the least sensitive layers than `mu / s_l` did.
# Phase 1 runs with every seed in `SEEDS`. Phase 2 (seed `SEED` only) fits and trains the exits twice
# on the same routers: with a tuned lens and with the plain logit lens.

# %%
models, history = {}, []
for seed in SEEDS:
    cfg = TrainConfig(**{**TRAIN.__dict__, "seed": seed})
    m = HierarchicalModel(model, tuned_lens=True, model_name=MODEL, ffn_bypass=BypassConfig(*FFN_BYPASS, target="ffn"))
    history += [dict(r, seed=seed, lens="") for r in train(m, valid, "routers", cfg)]
    models[seed] = m
hm = models[SEED]
logit_hm = HierarchicalModel(model, tuned_lens=False, model_name=MODEL,
                             ffn_bypass=BypassConfig(*FFN_BYPASS, target="ffn"))
logit_hm.load_state_dict({k: v for k, v in hm.state_dict().items() if not k.startswith(("gates.", "lenses."))},
                         strict=False)
for variant, m in (("tuned", hm), ("logit", logit_hm)):
    history += [dict(r, seed=SEED, lens=variant) for r in train(m, valid, "exit", TRAIN)]
for seed, m in models.items():
    m.save(checkpoint_path(CKPT, "tuned", seed),
           extra={"train": {k: str(v) for k, v in TRAIN.__dict__.items()}, "seed": seed})
logit_hm.save(checkpoint_path(CKPT, "logit", SEED),
              extra={"train": {k: str(v) for k, v in TRAIN.__dict__.items()}, "seed": SEED})
history = pd.DataFrame(history)
history["num_layers"] = hm.num_layers
save_table(history, "05_training_history", PROFILE)
sens = pd.DataFrame({"layer": range(hm.num_layers), "ffn_skip_kl": hm.sensitivity.numpy(),
                     **{f"capacity_{c}": hm.layer_capacities(c).numpy() for c in CAPACITIES}})
save_table(sens, "05_layer_allocation", PROFILE)
fig = training_curves(history)
save_figure(fig, "05_training_curves", PROFILE)
sens.round(3).T

# %% [markdown]
# ## The capacity table (WikiText-2 test, routers only)
#
# Thresholds are calibrated on validation windows; perplexity, realized capacity and compute on test
# windows of 256 tokens. Compute speedup counts layers + LM head + router overhead; the layer-only
# speedup is shown as well. Wall-clock speedup times our sparse inference path (FFN gathered to the
# routed tokens only) against the plain HF forward and against our own loop at capacity 1.0.

# %%
ref = evaluate_setting(hm, test, calib, 1.0, label="capacity=1.0")
runs, per_seed = [], {}
for seed, m in models.items():
    per_seed[seed] = {c: evaluate_setting(m, test, calib, c, label=f"capacity={c}") for c in CAPACITIES}
    runs.append(capacity_table(ref, per_seed[seed]).assign(seed=seed))
results = per_seed[SEED]
runs = pd.concat(runs, ignore_index=True)
save_table(runs, "05_capacity_runs", PROFILE)
capacities = summarize(runs, ["capacity", "seed_speedup_tinyllama", "seed_ppl_increase_tinyllama"],
                       ["realized_capacity", "ppl", "ppl_increase_pct", "compute_speedup", "layer_speedup"])
save_table(capacities, "05_capacity_table", PROFILE)
capacities.round(3)

# %%
# Wall-clock (varies run to run and with machine load: its own file). All settings are timed in
# interleaved rounds on the same test window; the minimum over rounds is the least load-disturbed.
timings = timing_table(model, hm, test[:, :WINDOW], {c: r.thresholds for c, r in results.items()}, TIMING_ROUNDS)
save_table(timings, "05_timings", PROFILE)
side_by_side = capacities.merge(timings[["capacity", "wallclock_speedup_vs_hf", "wallclock_speedup_vs_own_full"]])
side_by_side[["capacity", "realized_capacity", "compute_speedup", "wallclock_speedup_vs_hf",
              "wallclock_speedup_vs_own_full", "ppl_increase_pct", "seed_speedup_tinyllama",
              "seed_ppl_increase_tinyllama"]].round(3)

# %% [markdown]
# ## Exits: tuned lens vs logit lens, and the `target_speedup` knob

# %%
exit_results = {
    "exits, tuned lens": evaluate_setting(hm, test, calib, 0.55, exits=True, label="capacity=0.55,exits=tuned"),
    "exits, logit lens": evaluate_setting(logit_hm, test, calib, 0.55, exits=True, label="capacity=0.55,exits=logit"),
    "exits only, tuned lens": evaluate_setting(hm, test, calib, 1.0, exits=True, label="capacity=1.0,exits=tuned"),
}
target_capacity = hm.capacity_for_speedup(calib, TARGET_SPEEDUP)
target = evaluate_setting(hm, test, calib, target_capacity, label=f"target_speedup={TARGET_SPEEDUP}")
exits = exit_table({**exit_results, f"target_speedup={TARGET_SPEEDUP} (capacity {target_capacity:.3f})": target},
                   ref.row["ppl"])
save_table(exits, "05_exits", PROFILE)
exits.round(3)

# %% [markdown]
# ## Routing analysis

# %%
fig = routing_analysis({c: r.ffn_usage for c, r in results.items()}, {c: r.allocated for c, r in results.items()},
                       {k: r.exit_depths for k, r in exit_results.items() if "0.55" in r.row["setting"]},
                       hm.num_layers, hm.exit_layers)
save_figure(fig, "05_routing", PROFILE)
usage = pd.DataFrame({f"capacity_{c}": r.ffn_usage.numpy() for c, r in results.items()})
usage.insert(0, "layer", range(hm.num_layers))
save_table(usage, "05_ffn_usage_per_layer", PROFILE)
depths = pd.DataFrame([{"variant": k, "depth": int(d), "fraction": float((r.exit_depths == d).double().mean())}
                       for k, r in exit_results.items() for d in (*hm.exit_layers, hm.num_layers)])
save_table(depths, "05_exit_depths", PROFILE)

# %% [markdown]
# ## Causality on the real model
#
# Replace the second half of a test window with other text: with threshold routing and exits, no
# decision of the first half may change, and its logits only by float rounding: the gathered FFN
# matmuls see a different number of rows when the second half changes, so their reductions may be
# blocked differently (the same 1e-4 as sequential against teacher-forced decoding).

# %%
CAUSAL_ATOL = 1e-4
causal = causality_check(hm, test, exit_results["exits, tuned lens"].thresholds, length=128)
save_json(causal, "05_causality", PROFILE)
# NBVAL_CHECK_OUTPUT
print(causal["first_half_ffn_identical"], causal["first_half_exits_identical"],
      causal["first_half_max_logit_diff"] <= CAUSAL_ATOL)

# %%
# the numbers the next section refers to, from this run's tables
exit_kl = history[history.phase == "exit"].groupby("lens")[[f"kl_exit{d}" for d in hm.exit_layers]].mean()
print(f"one FFN replaced by its bypass for every token: {sens.ffn_skip_kl.min():.2f} to {sens.ffn_skip_kl.max():.2f} "
      f"nats (highest at layers {', '.join(str(l) for l in sens.nlargest(2, 'ffn_skip_kl').layer)})")
print(f"exited fraction of test tokens with exits on: "
      f"{', '.join(f'{k}: {v:.3f}' for k, v in zip(exits.variant, exits.exited_fraction))}")
print("KL to the base model at each exit depth (nats, mean over exit training):")
exit_kl.round(1)

# %% [markdown]
# ## Against the seed's claims
#
# The seed reported 1.1x/<1 %, 1.3x/~3 %, 1.6x/~8 %, 1.8x/~12 % (speedup / perplexity increase at
# capacity 90/70/55/40 %) on TinyLlama-1.1B. Our numbers differ, for reasons we can state:
#
# - **Speedup ceiling.** Skipping FFNs can save at most the FFN share of compute. In SmolLM2-135M an FFN
#   is 2.65 M of a layer's ~3.8 M MACs and the LM head (28 M MACs, 576 x 49152) is ~20 % of the whole
#   forward, so capacity 40 % can give at most ~1.6x total compute; in TinyLlama the FFN is ~78 % of a
#   layer and the head a smaller share, which is where a 1.8x figure is arithmetically possible.
# - **Quality.** A 135 M model has little redundancy: replacing one layer's FFN by its linear bypass for
#   every token costs the KL printed above, a few layers far more than the rest (`05_layer_allocation`),
#   and the allocation gives those layers most of their tokens. The routers are a closed-form warm start
#   (a ridge regression of the bypass's error on the router input; straight-through top-k training made
#   them worse with the bypass in our runs) and the bypasses are tuned end to end for
#   `TRAIN.bypass_steps` CPU steps (60 in the full profile). The perplexity increases in the capacity
#   table are what we measure; set them beside the seed's claims. Whether much longer training closes
#   the gap is untested here.
# - **Wall-clock.** Gathering the routed tokens turns FFN savings into real time in parallel
#   (teacher-forced) mode; the measured speedups sit below the compute ratio because of gather/scatter,
#   per-layer Python overhead and the always-run attention, and vary with machine load (see
#   `05_timings`).
# - **Exits.** The plain logit lens is many nats (KL, streams routed at 55 %, printed above) from the base
#   model at every exit depth of this model (massive activations dominate the mid-stack stream); the
#   closed-form tuned lens cuts that several-fold, but it stays worse than the routed final layer, so
#   with a compute price of 0.3 nats per unit of depth the gates learn to exit for few tokens or none
#   (the exited fractions printed above, and the exit-depth plot). Exits
#   are implemented, trained and costed, but on SmolLM2-135M they do not pay. Training also treats an
#   exited token's K/V as if it kept flowing; evaluation uses the true inference semantics (frozen
#   state), so any reported exit numbers include that mismatch.
#
# The seed's numbers were not reproduced on TinyLlama here (no network; CPU only); the table above is
# the honest result on the model we can run.

# %%
routed = capacities[capacities.capacity < 1]
assert (routed.realized_capacity - routed.capacity).abs().max() <= 0.05
assert capacities.compute_speedup.is_monotonic_increasing  # less capacity -> more speedup
assert capacities.ppl.iloc[0] <= capacities.ppl.min() + 1e-6  # the full model is the best
# FFN skipping can never beat the FFN share of the compute (ceiling at context 1, the cheapest attention)
assert capacities.compute_speedup.iloc[-1] < 1.0 / (1 - 0.6 * hm.cost.mlp * hm.num_layers / hm.cost.full_token(1))
assert (all(causal[k] for k in ("first_half_ffn_identical", "first_half_exits_identical"))
        and causal["first_half_max_logit_diff"] <= CAUSAL_ATOL)
assert history.loss.notna().all() and (history[history.phase == "bypass"].kl > 0).all()
assert checkpoint_path(CKPT, "tuned").is_file() and checkpoint_path(CKPT, "logit").is_file()
assert (exits.compute_speedup[exits.capacity < 1] > 1).all()
