"""Frontier methods for the ANEE controllers (registered in `anee.perplexity.METHODS`).

- `anee_heuristic`, `anee_warmstart`, `anee_rl`, each with setting `budget=<float>`.

Checkpoints are read from `ctx.extras["checkpoint_dir"]`: `profiler.safetensors` (notebook 02;
rebuilt from `ctx.calibration_ids` when absent), `warmstart.safetensors` (03), `rl.safetensors` (04).
Costs include the profiler's entropy estimator and the policy MLP.
"""

from __future__ import annotations

from pathlib import Path

from .controller import HeuristicController, LearnedController
from .perplexity import EvalContext, MethodOutput, register_method
from .policy_io import load_policy
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
    return _method(ctx, HeuristicController(get_profiler(ctx)), budget)


@register_method("anee_warmstart")
def anee_warmstart(ctx: EvalContext, budget: float) -> callable:
    policy = load_policy(checkpoint_dir(ctx) / WARMSTART_FILE, ctx.adapter.num_layers)
    return _method(ctx, LearnedController(policy, get_profiler(ctx)), budget)


@register_method("anee_rl")
def anee_rl(ctx: EvalContext, budget: float) -> callable:
    policy = load_policy(checkpoint_dir(ctx) / RL_FILE, ctx.adapter.num_layers)
    return _method(ctx, LearnedController(policy, get_profiler(ctx)), budget)
