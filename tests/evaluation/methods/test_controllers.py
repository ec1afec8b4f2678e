"""The controller methods load their checkpoints (and refuse to run without them)."""

import pytest
import torch
from _anee_tiny import tiny_setup

from anee.engine.controllers.pacing import PacingConfig
from anee.engine.controllers.plan import PlanConfig
from anee.engine.controllers.policy import PolicyNet, save_policy
from anee.engine.profiler import FEATURES
from anee.evaluation.context import EvalContext
from anee.evaluation.methods import METHODS
from anee.evaluation.methods.controllers import learned_controller, shared_plan
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
    save_policy(tmp_path / "warmstart.safetensors", PolicyNet(len(FEATURES)), "warmstart", 6, plan=plan, pacing=pacing)
    save_policy(tmp_path / "warmstart_profiler_only.safetensors", PolicyNet(len(FEATURES)), "warmstart", 6, plan=plan, pacing=pacing)
    save_policy(tmp_path / "rl.safetensors", PolicyNet(len(FEATURES), 32, 32, 4), "rl", 6, plan=plan, pacing=pacing)
    assert shared_plan(ctx) == plan  # the heuristic runs under the learned controllers' plan
    rl = learned_controller(ctx, "rl.safetensors")
    assert (rl.plan_config, rl.pacing, rl.policy.rank) == (plan, pacing, 4)
    for name in ("anee_heuristic", "anee_warmstart", "anee_warmstart_profiler_only", "anee_rl"):
        r = evaluate(METHODS[name](ctx, budget=0.5), ids[:, :65], window=32, stride=32)
        assert abs(r.layer_fraction - 0.5) <= 0.08 and r.layer_saved_net < 1 - r.layer_fraction
    with pytest.raises(ValueError, match="checkpoint_dir"):
        METHODS["anee_heuristic"](EvalContext(model, None, ex), budget=0.5)
