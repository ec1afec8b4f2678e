"""Frontier methods for the ANEE controllers (listed in `anee.evaluation.methods.METHODS`).

- `anee_heuristic`, `anee_warmstart`, `anee_rl`, each with setting `budget=<float>`, all under one
  layer plan (static DROP of the least important layers, per-token decisions on the marginal ones):
  the one stored with the warm-start checkpoint (the default `PlanConfig` when there is none); the
  learned controllers also under the pacing band stored with them.
- `anee_warmstart_profiler_only`: the warm-start trained on the profiler state alone, without the
  read of the residual stream (an ablation).
- `anee_heuristic_every_layer`: the heuristic asked at every layer, without a plan (every skipped
  layer pays its K/V-only path and every layer pays the controller).

Checkpoints are read from `ctx.extras["checkpoint_dir"]`: `profiler.safetensors` (notebook 02;
rebuilt from `ctx.calibration_ids` when absent), `warmstart.safetensors` and
`warmstart_profiler_only.safetensors` (03), `rl.safetensors` (04).
Costs include the profiler's entropy estimator and the policy MLP.
"""

from __future__ import annotations

from pathlib import Path

from ...core.outputs import MethodOutput
from ...engine.controllers.heuristic import HeuristicController
from ...engine.controllers.learned import LearnedController, load_controller
from ...engine.controllers.plan import PlanConfig
from ...engine.controllers.policy import load_policy
from ...engine.profiler import Profiler, calibrate_profiler
from ..context import EvalContext, Method

PROFILER_FILE, WARMSTART_FILE, RL_FILE = "profiler.safetensors", "warmstart.safetensors", "rl.safetensors"
BLIND_FILE = "warmstart_profiler_only.safetensors"  # the warm-start without the residual-stream read (ablation)


def checkpoint_dir(ctx: EvalContext) -> Path:
    if "checkpoint_dir" not in ctx.extras:
        raise ValueError('set ctx.extras["checkpoint_dir"] (e.g. anee.evaluation.results.output_dir("results", PROFILE) / "checkpoints")')
    return Path(ctx.extras["checkpoint_dir"])


def get_profiler(ctx: EvalContext) -> Profiler:
    """The profiler from the checkpoint folder, else calibrated on `ctx.calibration_ids` (cached)."""
    if "anee_profiler" not in ctx.extras:
        path = checkpoint_dir(ctx) / PROFILER_FILE
        if path.is_file():
            ctx.extras["anee_profiler"] = Profiler.from_checkpoint(path, ctx.executor)
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


def shared_plan(ctx: EvalContext) -> PlanConfig:
    """The learned controllers' layer plan (from the warm-start checkpoint), else the default."""
    path = checkpoint_dir(ctx) / WARMSTART_FILE
    return (load_policy(path, ctx.adapter.num_layers).plan_config() or PlanConfig()) if path.is_file() else PlanConfig()


def anee_heuristic(ctx: EvalContext, budget: float) -> Method:
    return _method(ctx, HeuristicController(get_profiler(ctx), plan=shared_plan(ctx)), budget)


def anee_heuristic_every_layer(ctx: EvalContext, budget: float) -> Method:
    return _method(ctx, HeuristicController(get_profiler(ctx)), budget)


def learned_controller(ctx: EvalContext, file: str) -> LearnedController:
    """The saved policy `file` under the plan and pacing band it was trained with."""
    return load_controller(checkpoint_dir(ctx) / file, get_profiler(ctx))


def anee_warmstart(ctx: EvalContext, budget: float) -> Method:
    return _method(ctx, learned_controller(ctx, WARMSTART_FILE), budget)


def anee_warmstart_profiler_only(ctx: EvalContext, budget: float) -> Method:
    return _method(ctx, learned_controller(ctx, BLIND_FILE), budget)


def anee_rl(ctx: EvalContext, budget: float) -> Method:
    return _method(ctx, learned_controller(ctx, RL_FILE), budget)
