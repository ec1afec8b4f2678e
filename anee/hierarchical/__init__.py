"""Hierarchical adaptive transformer on a frozen base (notebook 05): capacity-limited FFN routers on
every layer, Gumbel-trained exit gates at a few depths, causal threshold routing at inference."""

from .gates import AffineLens, ExitGate, default_exit_layers, gumbel_decoupled
from .model import HierarchicalModel, calibrated_threshold
from .routers import FFNRouter, aux_losses, threshold_route, topk_route
from .training import PHASES, TrainConfig, train

__all__ = [
    "AffineLens", "ExitGate", "FFNRouter", "HierarchicalModel", "PHASES", "TrainConfig", "aux_losses",
    "calibrated_threshold", "default_exit_layers", "gumbel_decoupled", "threshold_route", "topk_route", "train",
]
