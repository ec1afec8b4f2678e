# %% [markdown]
# # 04 · REINFORCE fine-tuning of the learned controller
#
# Starts from the warm-start policy of notebook 03 and trains it with REINFORCE and a per-window
# baseline in the teacher-forced parallel mode on the **valid** split. Per-token reward:
# $-\mathrm{KL}(p_\text{full} \,\|\, p_\text{adaptive}) - \lambda\,\text{compute} - \mu\,|\text{compute} - \text{budget}|$.
# Evaluation on the **test** split: budget adherence at 0.2 … 1.0 and perplexity at equal net compute
# saved (10/20/30 %) against the heuristic, the warm-start and static Block-Influence removal.

# %% tags=["parameters"]
PROFILE = "quick"  # "quick" (CI) or "full" (make reproduce)
MODEL = "smollm2-135m"
SEED = 0

# %% [colab]

# %%
import matplotlib.pyplot as plt
import pandas as pd

import anee.controller_methods  # noqa: F401  (registers anee_heuristic / anee_warmstart / anee_rl)
import anee.methods  # noqa: F401
from anee import AdaptiveExecutor, adapter_for, load_model
from anee.controller import HeuristicController, LearnedController
from anee.data import sample_windows, wikitext_tokens
from anee.evaluation import budget_adherence, ppl_at_saving
from anee.io import output_dir, save_figure, save_json, save_table
from anee.notebook import pick, setup
from anee.perplexity import EvalContext, run_frontier
from anee.policy_io import load_policy, save_policy
from anee.profiler import Profiler
from anee.rl import RLConfig, train_reinforce

setup(PROFILE, SEED)
RL = RLConfig(steps=pick(PROFILE, quick=6, full=40), batch=2, seq_len=128, seed=SEED)
TEST_TOKENS = pick(PROFILE, quick=256, full=1024)
WINDOW = pick(PROFILE, quick=256, full=512)
FRONTIER_BUDGETS = pick(PROFILE, quick=[0.7, 0.8, 0.9], full=[0.6, 0.7, 0.8, 0.9, 1.0])
ADHERENCE_BUDGETS = pick(PROFILE, quick=[0.2, 0.3, 0.6, 1.0], full=[0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
CKPT = output_dir("results", PROFILE) / "checkpoints"
model, tokenizer = load_model(MODEL)
executor = AdaptiveExecutor(adapter_for(model))
L = executor.adapter.num_layers
profiler = Profiler.load(CKPT / "profiler.safetensors", executor)
warm = load_policy(CKPT / "warmstart.safetensors", L)
valid = wikitext_tokens(tokenizer, "valid", 16384)
test = wikitext_tokens(tokenizer, "test", TEST_TOKENS + 1)

# %% [markdown]
# ## Training

# %%
train_windows = sample_windows(valid, RL.seq_len, 64, seed=SEED + 1)
policy, hist = train_reinforce(executor, warm, profiler, train_windows, RL)
save_policy(CKPT / "rl.safetensors", policy, "rl", L, {"steps": str(RL.steps), "lam": str(RL.lam), "mu": str(RL.mu)})
history = pd.DataFrame(hist)
save_table(history, "04_rl_history", PROFILE)
fig, axes = plt.subplots(1, 3, figsize=(12, 3))
for ax, col in zip(axes, ["reward", "kl", "layer_fraction"]):
    ax.plot(history.step, history[col], alpha=0.4)
    ax.plot(history.step, history[col].rolling(5, min_periods=1).mean())
    ax.set_title(col)
    ax.set_xlabel("step")
save_figure(fig, "04_rl_curves", PROFILE)

# %% [markdown]
# ## Budget adherence on the test split

# %%
controllers = {"heuristic": HeuristicController(profiler), "warmstart": LearnedController(warm, profiler),
               "rl": LearnedController(policy, profiler)}
adherence = budget_adherence(executor, controllers, test[:, :513], ADHERENCE_BUDGETS, window=256)
save_table(adherence, "04_budget_adherence", PROFILE)
adherence.pivot(index="budget", columns="controller", values="layer_fraction")

# %% [markdown]
# ## Perplexity at equal net compute saved

# %%
ctx = EvalContext(model, tokenizer, executor, valid[:, :4096], extras={"checkpoint_dir": CKPT, "anee_profiler": profiler})
specs = [("full", {})] + [("block_influence", {"n_removed": n}) for n in (3, 6, 9)]
specs += [(m, {"budget": b}) for m in ("anee_heuristic", "anee_warmstart", "anee_rl") for b in FRONTIER_BUDGETS]
frontier = pd.DataFrame([r.row() for r in run_frontier(ctx, specs, test, window=WINDOW, stride=WINDOW)])
save_table(frontier, "04_frontier", PROFILE)
frontier[["method", "setting", "ppl", "layer_fraction", "layer_saved_net"]]

# %%
LEVELS = [0.1, 0.2, 0.3]
curves = frontier[frontier.method != "full"]
at = ppl_at_saving(curves, LEVELS).pivot(index="net_saved", columns="method", values="ppl")
rl_wins_bi = int((at.anee_rl < at.block_influence).sum())
rl_wins_heur = int((at.anee_rl < at.anee_heuristic).sum())
save_table(at.reset_index(), "04_ppl_at_equal_saving", PROFILE)
save_json({"rl_beats_block_influence_levels": rl_wins_bi, "rl_beats_heuristic_levels": rl_wins_heur,
           "acceptance_met": bool(rl_wins_bi >= 2 and rl_wins_heur >= 2)}, "04_acceptance", PROFILE)
print(f"RL beats Block Influence at {rl_wins_bi}/3 levels and the heuristic at {rl_wins_heur}/3 (NaN = outside evaluated range)")
at

# %%
assert history.layer_fraction.between(0.0, 1.0).all() and len(history) == RL.steps
assert (adherence[adherence.budget >= 0.3].abs_error <= 0.05).all()
full_ppl = frontier.loc[frontier.method == "full", "ppl"].item()
assert (frontier.ppl >= full_ppl * 0.99).all()  # no method beats the full model by more than noise
assert (frontier[frontier.method.str.startswith("anee")].layer_saved_net < 1).all()
