"""The `hierarchical` method for the perplexity frontier (notebook 06).

    ctx.extras["checkpoint_dir"] = anee.evaluation.results.output_dir("results", PROFILE) / "checkpoints"
    specs = [("hierarchical", {"capacity": c, "exits": False}) for c in (0.9, 0.7, 0.55, 0.4)]
    specs += [("hierarchical", {"capacity": 0.55, "exits": True})]

Settings: `capacity` (FFN fraction in [0.1, 0.9], 1.0 = all), `exits` (bool), `lens` ("tuned" or
"logit": which checkpoint's exit gates decode the exits), `target_speedup` (overrides `capacity` by a
binary search on the calibration windows), `exit_threshold` (gate probability to exit, default 0.5),
`seed` (which of notebook 05's training seeds).
Thresholds are calibrated on `ctx.calibration_ids` (validation split), never on test.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...core.outputs import MethodOutput
from ...hierarchical import HierarchicalModel
from ..context import EvalContext

LENSES = ("tuned", "logit")


def checkpoint_path(checkpoint_dir: str | Path, lens: str = "tuned", seed: int = 0) -> Path:
    """Notebook 05's checkpoint of the model whose exits decode through `lens`, trained with `seed`."""
    if lens not in LENSES:
        raise ValueError(f"lens must be one of {LENSES}, got {lens!r}")
    return Path(checkpoint_dir) / f"05_hierarchical_{lens}-s{seed}.safetensors"


def calibration_windows(ids: torch.Tensor, window: int = 256, max_windows: int = 16) -> torch.Tensor:
    """Up to `max_windows` windows [N, window] evenly spread over ids [1, M] (validation split):
    router scores vary with the topic, so spread-out windows calibrate better than one stretch."""
    total = ids.shape[1]
    n = min(total // window, max_windows)
    if n == 0:
        raise ValueError(f"need at least {window} calibration tokens, have {total}")
    starts = torch.linspace(0, total - window, n).long().tolist()
    return torch.stack([ids[0, s : s + window] for s in starts])


def hierarchical(ctx: EvalContext, capacity: float = 0.55, exits: bool = False, lens: str = "tuned",
                 target_speedup: float | None = None, exit_threshold: float = 0.5, calib_window: int = 256,
                 seed: int = 0):
    if "checkpoint_dir" not in ctx.extras:
        raise ValueError("hierarchical needs ctx.extras['checkpoint_dir'] (notebook 05 writes the checkpoints there)")
    if ctx.calibration_ids is None:
        raise ValueError("hierarchical needs calibration_ids (validation split) to calibrate its thresholds")
    key = ("hierarchical", lens, seed)
    if key not in ctx.extras:
        ctx.extras[key] = HierarchicalModel.load(checkpoint_path(ctx.extras["checkpoint_dir"], lens, seed),
                                                 ctx.model).eval()
    model: HierarchicalModel = ctx.extras[key]
    calib = calibration_windows(ctx.calibration_ids, calib_window)
    if target_speedup is not None:
        capacity = model.capacity_for_speedup(calib, target_speedup, exits, exit_threshold)
    thresholds = model.calibrate(calib, capacity, exits, exit_threshold)
    routed = capacity < 1.0

    def run(ids):
        out = model.sparse_forward(ids, thresholds if routed else None, exits, exit_threshold)
        return MethodOutput(out.logits, model.cost_report(out, routed=routed))

    run.capacity = capacity
    return run
