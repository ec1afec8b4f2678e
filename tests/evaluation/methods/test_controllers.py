"""The controller methods load their checkpoints (and refuse to run without them), one per training
seed, in the executor (with or without the layer bypass) their policy was trained in."""

import pytest
import torch
from _anee_tiny import random_bypass, tiny_setup

from anee import DROP, AdaptiveExecutor
from anee.engine.controllers.heuristic import HeuristicController
from anee.engine.controllers.pacing import PacingConfig
from anee.engine.controllers.plan import PlanConfig
from anee.engine.controllers.policy import PolicyNet, save_policy
from anee.engine.profiler import FEATURES
from anee.evaluation.context import EvalContext
from anee.evaluation.methods import METHODS
from anee.evaluation.methods.controllers import get_profiler, learned_controller, policy_file, shared_plan
from anee.evaluation.perplexity import evaluate


@pytest.fixture(scope="module")
def tiny():
    return tiny_setup(layers=6)


def test_frontier_methods_use_checkpoints(tiny, tmp_path):
    model, ex, prof, ids = tiny
    torch.manual_seed(0)
    ctx = EvalContext(model, None, ex, ids, extras={"checkpoint_dir": tmp_path})
    with pytest.raises(ValueError, match="notebook 03"):
        METHODS["anee_warmstart"](ctx, budget=0.5)
    prof.save(tmp_path / "profiler.safetensors")
    assert shared_plan(ctx) == PlanConfig()  # no warm-start yet: the default plan
    plan, pacing = PlanConfig(marginal=2), PacingConfig(slack=0.08)
    save_policy(tmp_path / "warmstart-s0.safetensors", PolicyNet(len(FEATURES)), "warmstart", 6, plan=plan,
                pacing=pacing)
    save_policy(tmp_path / "warmstart_profiler_only-s0.safetensors", PolicyNet(len(FEATURES)), "warmstart", 6,
                plan=plan, pacing=pacing)
    save_policy(tmp_path / "rl-s0.safetensors", PolicyNet(len(FEATURES), 32, 32, 4), "rl", 6, plan=plan, pacing=pacing)
    assert shared_plan(ctx) == plan  # the heuristic runs under the learned controllers' plan
    executor, rl = learned_controller(ctx, "rl-s0.safetensors")
    assert executor is ex and rl.profiler.executor is ex
    assert (rl.plan_config, rl.pacing, rl.policy.rank) == (plan, pacing, 4)
    for name in ("anee_heuristic", "anee_warmstart", "anee_warmstart_profiler_only", "anee_rl"):
        r = evaluate(METHODS[name](ctx, budget=0.5), ids[:, :65], window=32, stride=32)
        assert abs(r.layer_fraction - 0.5) <= 0.08 and r.layer_saved_net < 1 - r.layer_fraction
    with pytest.raises(ValueError, match="checkpoint_dir"):
        METHODS["anee_heuristic"](EvalContext(model, None, ex), budget=0.5)


def test_policy_file_names_one_file_per_seed():
    assert policy_file("rl") == "rl-s0.safetensors" and policy_file("warmstart", 2) == "warmstart-s2.safetensors"
    assert policy_file("warmstart_profiler_only", 1) == "warmstart_profiler_only-s1.safetensors"


def test_learned_controllers_run_in_the_executor_they_were_trained_in(tiny, tmp_path):
    model, ex, prof, ids = tiny
    bx = AdaptiveExecutor(ex.adapter, bypass=random_bypass("linear", 32, 6, seed=4))
    ctx = EvalContext(model, None, ex, ids, extras={"checkpoint_dir": tmp_path}, bypass_executor=bx)
    prof.save(tmp_path / "profiler.safetensors")
    torch.manual_seed(0)
    save_policy(tmp_path / policy_file("warmstart", 0), PolicyNet(len(FEATURES)), "warmstart", 6,
                plan=PlanConfig(marginal=2), bypass="linear tuned", seed=0)
    save_policy(tmp_path / policy_file("rl", 1), PolicyNet(len(FEATURES)), "rl", 6, plan=PlanConfig(marginal=2), seed=1)
    executor, c = learned_controller(ctx, policy_file("warmstart", 0))
    assert executor is bx and c.profiler.executor is bx and c.profiler is get_profiler(ctx, bx)
    assert learned_controller(ctx, policy_file("warmstart", 0), bypass=True)[0] is bx
    executor, c = learned_controller(ctx, policy_file("rl", 1))
    assert executor is ex and c.profiler.executor is ex and get_profiler(ctx, ex) is not get_profiler(ctx, bx)
    with pytest.raises(ValueError, match=r"warmstart-s0.safetensors was trained with the layer bypass; "
                                         r"evaluate it with bypass=True"):
        METHODS["anee_warmstart"](ctx, budget=0.5, seed=0, bypass=False)
    with pytest.raises(ValueError, match=r"rl-s1.safetensors was trained without the layer bypass; "
                                         r"evaluate it with bypass=False"):
        METHODS["anee_rl"](ctx, budget=0.5, seed=1, bypass=True)
    save_policy(tmp_path / policy_file("rl", 2), PolicyNet(len(FEATURES)), "rl", 6, plan=PlanConfig(marginal=2),
                bypass="diag_lowrank-8 tuned", seed=2)  # another family than the context's bypass
    with pytest.raises(ValueError, match=r"rl-s2.safetensors was trained with the layer bypass 'diag_lowrank-8 tuned', "
                                         r"the executor runs 'linear'"):
        METHODS["anee_rl"](ctx, budget=0.5, seed=2)
    with pytest.raises(ValueError, match="rl-s0.safetensors not found"):
        METHODS["anee_rl"](ctx, budget=0.5)  # seed 0 of rl was never trained
    # the bypass policy is evaluated in the bypass executor: its skipped layers run (and pay for) the bypass
    window = ids[:, :32]
    out = METHODS["anee_warmstart"](ctx, budget=0.6, seed=0)(window)
    ref = bx.forward(window, controller=learned_controller(ctx, policy_file("warmstart", 0))[1], budget=0.6)
    assert torch.equal(out.logits, ref.logits) and (ref.trace.decisions == DROP).any()
    assert torch.equal(out.cost.layer_macs, ref.trace.cost(bx.cost).layer_macs)
    assert not torch.equal(out.cost.layer_macs, ref.trace.cost(ex.cost).layer_macs)  # the bypass is charged
    with pytest.raises(ValueError, match="set EvalContext.bypass_executor"):
        METHODS["anee_warmstart"](EvalContext(model, None, ex, ids, extras={"checkpoint_dir": tmp_path}), budget=0.5)
    # the heuristic with bypass=True runs there too
    heur = METHODS["anee_heuristic"](ctx, budget=0.6, bypass=True)(window)
    ref = bx.forward(window, controller=HeuristicController(get_profiler(ctx, bx), plan=shared_plan(ctx)), budget=0.6)
    assert (torch.equal(heur.logits, ref.logits)
            and torch.equal(heur.cost.layer_macs, ref.trace.cost(bx.cost).layer_macs))


def test_kl_profile_method_runs_the_fitted_controller_in_its_executor(tiny, tmp_path):
    from anee.engine.training.kl_profile import fit_kl_profile
    from anee.evaluation.methods.controllers import KL_PROFILE_FILE

    model, ex, prof, ids = tiny
    bx = AdaptiveExecutor(ex.adapter, bypass=random_bypass("linear", 32, 6, seed=4))
    ctx = EvalContext(model, None, ex, ids, extras={"checkpoint_dir": tmp_path}, bypass_executor=bx)
    with pytest.raises(ValueError, match="kl_profile.safetensors not found: run notebook 03 first"):
        METHODS["anee_kl_profile"](ctx, budget=0.8)
    windows = [ids[:, 32 * i : 32 * (i + 1)] for i in range(4)]
    fit = fit_kl_profile(bx, windows, prof.removal_order, max_depth=3, budgets=(0.7, 0.8, 0.9))
    fit.controller.save(tmp_path / KL_PROFILE_FILE)
    with pytest.raises(ValueError, match="kl_profile.safetensors was trained with the layer bypass; "
                                         "evaluate it with bypass=True"):
        METHODS["anee_kl_profile"](ctx, budget=0.8, bypass=False)
    window = ids[:, 128:160]
    out = METHODS["anee_kl_profile"](ctx, budget=0.8, bypass=True)(window)
    ref = bx.forward(window, controller=fit.controller, budget=0.8)
    assert torch.equal(out.logits, ref.logits) and torch.equal(out.cost.layer_macs, ref.trace.cost(bx.cost).layer_macs)
    assert (ref.trace.decisions != 0).any()
