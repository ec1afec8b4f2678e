"""Hierarchical adaptive transformer on a frozen base (issue 5, notebook 05): capacity-limited FFN
routers on every layer, Gumbel-trained exit gates at a few depths, causal threshold routing at
inference. Importing this package registers the `hierarchical` perplexity method."""

from . import methods  # noqa: F401  (registers "hierarchical")
from .evaluation import SettingResult, best_seconds_interleaved, evaluate_setting, median_seconds, wallclock
from .gates import AffineLens, ExitGate, default_exit_layers, gumbel_decoupled
from .model import HierarchicalModel, HierOutput, calibrated_threshold
from .routers import FFNRouter, aux_losses, threshold_route, topk_route
from .training import PHASES, TrainConfig, train

__all__ = [
    "AffineLens", "ExitGate", "SettingResult", "best_seconds_interleaved", "evaluate_setting", "median_seconds", "wallclock", "FFNRouter", "HierOutput", "HierarchicalModel", "PHASES", "TrainConfig",
    "aux_losses", "calibrated_threshold", "default_exit_layers", "gumbel_decoupled", "threshold_route",
    "topk_route", "train",
]
