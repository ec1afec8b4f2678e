"""User-facing configuration of the ANEE wrapper."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from ..core.scalars import integer, real
from .arguments import check_budget, check_prefill, check_seed

CONTROLLERS = ("default", "budget", "heuristic", "warmstart", "rl", "full")


@dataclass
class ANEEConfig:
    """What to wrap and how much compute each token may use.

    energy_budget: fraction of full layer compute per token, in [0, 1]; 1.0 reproduces the model.
    min_layers: layers every token PROCESSES before the controller is asked. They always run: a
        budget below min_layers / num_layers cannot be met, the wrapper then warns and reports the
        realized layer fraction (at least min_layers / num_layers plus the K/V-only path of the
        other layers).
    exit_budget_threshold: with less than this fraction of a full pass left, a token EXITs
        instead of SKIPping (it is then not asked again).
    controller: which controller decides (pass a controller object to `ANEEWrapper` for others):
        "default"    the model's default method from its defaults folder (`anee.engine.defaults`):
                     shipped for the embedded model, written by `anee.calibrate` for others; a model
                     without one falls back to "budget" with a warning that names what to run
        "budget"     the seed's simple budget policy (process while the budget affords, then exit)
        "heuristic"  thresholds on the profiler state under a layer plan, with the layer bypass
        "warmstart"  the warm-started policy (notebook 03), "rl" the REINFORCE one (notebook 04)
        "full"       every layer (the plain model)
    defaults_dir: a defaults folder to use instead of the shipped one (e.g. `anee.calibrate`'s `out`).
    prefill: how `generate` runs the prompt:
        "full"       (default) every layer, in one parallel pass; the controller and `energy_budget`
                     govern the generated tokens only (`GenerationResult.decode_cost`). The first new
                     token is then the full model's, and later tokens attend to full-depth K/V of the
                     prompt: on 20 held-out prompts at budget 0.8 the default's greedy text stays the
                     full model's for 2.9 tokens on average against 0.95 under "adaptive" (notebook 09).
        "adaptive"   under the controller and budget, like every generated token (the seed's behaviour;
                     what teacher-forced evaluation and the decode benchmarks measure)
    Numbers may be given as any real scalar (Python, NumPy or a 0-d tensor); they are stored as
    Python numbers.
    """

    model_name: str = "smollm2-135m"
    energy_budget: float = 1.0
    min_layers: int = 2
    exit_budget_threshold: float = 0.1
    controller: str = "default"
    defaults_dir: str | None = None
    prefill: str = "full"
    device: str = "auto"  # where a model loaded by name goes: "auto" is CUDA when torch sees a GPU, else the CPU
    dtype: torch.dtype = field(default=torch.float32)
    seed: int = 0

    def __post_init__(self) -> None:
        self.energy_budget = check_budget(self.energy_budget)
        self.min_layers = integer("min_layers", self.min_layers, what=" (layers every token processes first)")
        self.exit_budget_threshold = real("exit_budget_threshold", self.exit_budget_threshold, 0.0, 1.0)
        self.seed = check_seed(self.seed)
        if not isinstance(self.controller, str) or self.controller not in CONTROLLERS:
            raise ValueError(f"controller must be one of {', '.join(repr(c) for c in CONTROLLERS)}, "
                             f"got {self.controller!r}; "
                             "to use another controller object, pass it as ANEEWrapper(config, controller=...)")
        check_prefill(self.prefill)
        if self.defaults_dir is not None and not isinstance(self.defaults_dir, (str, os.PathLike)):
            raise TypeError(f"defaults_dir must be a folder path (str or Path) written by anee.calibrate, got "
                            f"{type(self.defaults_dir).__name__}")

