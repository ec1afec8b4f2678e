"""Frontier methods for the ANEE controllers (listed in `anee.evaluation.methods.METHODS`).

- `anee_heuristic`, `anee_warmstart`, `anee_rl`, each with setting `budget=<float>`, all under one
  layer plan (static DROP of the least important layers, per-token decisions on the marginal ones):
  the one stored with the warm-start checkpoint (the default `PlanConfig` when there is none); the
  learned controllers also under the pacing band stored with them.
- `anee_warmstart_profiler_only`: the warm-start trained on the profiler state alone, without the
  read of the residual stream (an ablation).
- `anee_heuristic_every_layer`: the heuristic asked at every layer, without a plan (every skipped
  layer pays its K/V-only path and every layer pays the controller).
- `anee_kl_profile`, setting `budget=<float>` (budgets from 0.6; each runs at the largest calibrated
  budget of 0.01 steps not above it): the closed-form KL-profile controller (a token's
  whole depth in the profiler's order from a ridge prediction of its KL profile; its own plan).

Checkpoints are read from `ctx.extras["checkpoint_dir"]`: `profiler.safetensors` (notebook 02;
rebuilt from `ctx.calibration_ids` when absent), `warmstart-s<seed>.safetensors` and
`warmstart_profiler_only-s<seed>.safetensors` and `kl_profile.safetensors` (03),
`rl-s<seed>.safetensors` (04). A policy trained
with the layer bypass runs in `ctx.bypass_executor`; `bypass=True` runs the heuristic there too.
Costs include the profiler's entropy estimator and the policy MLP.
"""

from __future__ import annotations

from pathlib import Path

from ...core.bypass import check_same_bypass
from ...core.outputs import MethodOutput
from ...engine.controllers.heuristic import HeuristicController
from ...engine.controllers.kl_profile import KLProfileController
from ...engine.controllers.learned import LearnedController
from ...engine.controllers.plan import PlanConfig
from ...engine.controllers.policy import load_policy
from ...engine.defaults import PROFILER_FILE
from ...engine.executor import AdaptiveExecutor
from ...engine.profiler import Profiler, calibrate_profiler
from ..context import EvalContext, Method

KL_PROFILE_FILE = "kl_profile.safetensors"  # notebook 03's closed-form controller


def policy_file(kind: str, seed: int = 0) -> str:
    """File name of a saved policy: kind "warmstart", "warmstart_profiler_only" or "rl", per seed."""
    return f"{kind}-s{seed}.safetensors"


def checkpoint_dir(ctx: EvalContext) -> Path:
    if "checkpoint_dir" not in ctx.extras:
        raise ValueError('set ctx.extras["checkpoint_dir"] '
                         '(e.g. anee.evaluation.results.output_dir("results", PROFILE) / "checkpoints")')
    return Path(ctx.extras["checkpoint_dir"])


def get_profiler(ctx: EvalContext, executor: AdaptiveExecutor) -> Profiler:
    """The profiler from the checkpoint folder, else calibrated on `ctx.calibration_ids`, bound to
    `executor` (its costs, bypass included, set the controllers' plans); cached per executor."""
    key = ("anee_profiler", id(executor))
    if key not in ctx.extras:
        path = checkpoint_dir(ctx) / PROFILER_FILE
        if path.is_file():
            ctx.extras[key] = Profiler.from_checkpoint(path, executor)
        elif ctx.calibration_ids is not None:
            ctx.extras[key] = calibrate_profiler(executor, ctx.calibration_ids)
        else:
            raise ValueError(f"{path} not found and no calibration_ids to build it: run notebook 02 first")
    return ctx.extras[key]


def executor_method(executor: AdaptiveExecutor, controller, budget: float) -> Method:
    """A frontier method: `controller` at `budget` in `executor`, costs from its trace."""
    def run(ids):
        out = executor.forward(ids, controller=controller, budget=budget)
        return MethodOutput(out.logits, out.trace.cost(executor.cost))

    return run


def shared_plan(ctx: EvalContext) -> PlanConfig:
    """The learned controllers' layer plan (from the seed-0 warm-start checkpoint), else the default."""
    path = checkpoint_dir(ctx) / policy_file("warmstart")
    return (load_policy(path, ctx.adapter.num_layers).plan_config() or PlanConfig()) if path.is_file() else PlanConfig()


def anee_heuristic(ctx: EvalContext, budget: float, bypass: bool = False) -> Method:
    executor = ctx.executor_for(bypass)
    return executor_method(executor, HeuristicController(get_profiler(ctx, executor), plan=shared_plan(ctx)), budget)


def anee_heuristic_every_layer(ctx: EvalContext, budget: float, bypass: bool = False) -> Method:
    executor = ctx.executor_for(bypass)
    return executor_method(executor, HeuristicController(get_profiler(ctx, executor)), budget)


def trained_executor(ctx: EvalContext, path: Path, trained: str | None, bypass: bool | None) -> AdaptiveExecutor:
    """The executor a checkpoint at `path` was trained or fitted in (`trained`: the label of the layer
    bypass it recorded, None without one), checked to run that bypass; `bypass`, when given, must
    agree with the checkpoint."""
    with_bypass = trained is not None
    if bypass is not None and bypass != with_bypass:
        raise ValueError(f"{path} was trained {'with' if with_bypass else 'without'} the layer bypass; "
                         f"evaluate it with bypass={with_bypass}")
    executor = ctx.executor_for(with_bypass)
    check_same_bypass(trained, executor.bypass, str(path), "evaluate it in a context with the bypass notebook 02 chose")
    return executor


def learned_controller(ctx: EvalContext, file: str,
                       bypass: bool | None = None) -> tuple[AdaptiveExecutor, LearnedController]:
    """The saved policy `file` under the plan and pacing band it was trained with, and the executor
    it was trained in (with the bypass when it was trained with one); `bypass`, when given, must
    agree with the checkpoint."""
    path = checkpoint_dir(ctx) / file
    policy = load_policy(path, ctx.adapter.num_layers)
    executor = trained_executor(ctx, path, policy.trained_for.get("bypass"), bypass)
    return executor, LearnedController.as_trained(policy, get_profiler(ctx, executor))


def anee_warmstart(ctx: EvalContext, budget: float, seed: int = 0, bypass: bool | None = None) -> Method:
    return executor_method(*learned_controller(ctx, policy_file("warmstart", seed), bypass), budget)


def anee_warmstart_profiler_only(ctx: EvalContext, budget: float, seed: int = 0, bypass: bool | None = None) -> Method:
    return executor_method(*learned_controller(ctx, policy_file("warmstart_profiler_only", seed), bypass), budget)


def anee_rl(ctx: EvalContext, budget: float, seed: int = 0, bypass: bool | None = None) -> Method:
    return executor_method(*learned_controller(ctx, policy_file("rl", seed), bypass), budget)


def anee_kl_profile(ctx: EvalContext, budget: float, bypass: bool | None = None) -> Method:
    """The KL-profile controller notebook 03 fitted, in the executor it was fitted in (`bypass`, when
    given, must agree with it)."""
    path = checkpoint_dir(ctx) / KL_PROFILE_FILE
    if not path.is_file():
        raise ValueError(f"{path} not found: run notebook 03 first")
    controller = KLProfileController.from_checkpoint(path)
    executor = trained_executor(ctx, path, controller.bypass, bypass)
    controller.check_model(executor)  # the layers and width it was fitted for (and its bypass label, checked above)
    return executor_method(executor, controller, budget)
