"""Frontier methods for the ANEE controllers (registered in `anee.perplexity.METHODS`).

- `anee_heuristic`, `anee_warmstart`, `anee_rl`, each with setting `budget=<float>`. The heuristic
  runs under the default `PlanConfig` (static DROP of the least important layers, per-token
  decisions on the marginal ones); the learned controllers under the plan stored in their checkpoint.
- `anee_heuristic_every_layer`: the heuristic asked at every layer, without a plan (every skipped
  layer pays its K/V-only path and every layer pays the controller).

Checkpoints are read from `ctx.extras["checkpoint_dir"]`: `profiler.safetensors` (notebook 02;
rebuilt from `ctx.calibration_ids` when absent), `warmstart.safetensors` (03), `rl.safetensors` (04).
Costs include the profiler's entropy estimator and the policy MLP.
"""

from __future__ import annotations

from pathlib import Path

from .controller import HeuristicController, LearnedController, PlanConfig
from .perplexity import EvalContext, MethodOutput, register_method
from .policy_io import load_plan, load_policy
from .profiler import Profiler, calibrate_profiler

PROFILER_FILE, WARMSTART_FILE, RL_FILE = "profiler.safetensors", "warmstart.safetensors", "rl.safetensors"


def checkpoint_dir(ctx: EvalContext) -> Path:
    if "checkpoint_dir" not in ctx.extras:
        raise ValueError('set ctx.extras["checkpoint_dir"] (e.g. anee.io.output_dir("results", PROFILE) / "checkpoints")')
    return Path(ctx.extras["checkpoint_dir"])


def get_profiler(ctx: EvalContext) -> Profiler:
    """The profiler from the checkpoint folder, else calibrated on `ctx.calibration_ids` (cached)."""
    if "anee_profiler" not in ctx.extras:
        path = checkpoint_dir(ctx) / PROFILER_FILE
        if path.is_file():
            ctx.extras["anee_profiler"] = Profiler.load(path, ctx.executor)
        elif ctx.calibration_ids is not None:
            ctx.extras["anee_profiler"] = calibrate_profiler(ctx.executor, ctx.calibration_ids)
        else:
            raise ValueError(f"{path} not found and no calibration_ids to build it: run notebook 02 first")
    return ctx.extras["anee_profiler"]


def _method(ctx: EvalContext, controller, budget: float):
    def run(ids):
        out = ctx.executor.forward(ids, controller=controller, budget=budget)
        return MethodOutput(out.logits, out.trace.cost(ctx.cost))

    return run


@register_method("anee_heuristic")
def anee_heuristic(ctx: EvalContext, budget: float) -> callable:
    return _method(ctx, HeuristicController(get_profiler(ctx), plan=PlanConfig()), budget)


@register_method("anee_heuristic_every_layer")
def anee_heuristic_every_layer(ctx: EvalContext, budget: float) -> callable:
    return _method(ctx, HeuristicController(get_profiler(ctx)), budget)


def learned_controller(ctx: EvalContext, file: str) -> LearnedController:
    """The saved policy `file` under the plan it was trained with."""
    path, L = checkpoint_dir(ctx) / file, ctx.adapter.num_layers
    return LearnedController(load_policy(path, L), get_profiler(ctx), plan=load_plan(path, L))


@register_method("anee_warmstart")
def anee_warmstart(ctx: EvalContext, budget: float) -> callable:
    return _method(ctx, learned_controller(ctx, WARMSTART_FILE), budget)


@register_method("anee_rl")
def anee_rl(ctx: EvalContext, budget: float) -> callable:
    return _method(ctx, learned_controller(ctx, RL_FILE), budget)
