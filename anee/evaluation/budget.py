"""Budget adherence: does a controller spend what its energy budget says, on held-out text? And the
valid windows the learned controllers' SKIP offsets are calibrated on to make it so."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from ..core.data import VALID_KL_PROFILE, sample_windows, span_windows
from ..engine.executor import AdaptiveExecutor
from ..engine.prefix_memo import shared_prefixes
from .notebook import pick


@dataclass(frozen=True)
class SkipCalibrationWindows:
    """Fresh valid windows for `calibrate_skip_offsets`, the same in notebooks 03 and 04 so that the
    warm-start and the RL controllers are calibrated alike: `text` [N, T] for teacher-forced text, and
    `generation` [N, prompt + new] shaped like notebook 09's prompts and continuations, for the tokens
    generated after a full-depth prompt of `prompt` tokens (prefill="full")."""

    text: torch.Tensor
    generation: torch.Tensor
    prompt: int


def skip_calibration_windows(valid: torch.Tensor, profile: str, seed: int) -> SkipCalibrationWindows:
    """The profile's calibration windows from valid-split ids [1, N] (seeds `seed` + 2 and + 3: apart
    from the windows the controllers train on)."""
    count, length = pick(profile, quick=(2, 128), full=(4, 256))
    gen_count, prompt, new = pick(profile, quick=(4, 8, 16), full=(16, 12, 32))
    return SkipCalibrationWindows(sample_windows(valid, length, count, seed=seed + 2),
                                  sample_windows(valid, prompt + new, gen_count, seed=seed + 3), prompt)


def kl_profile_windows(valid: torch.Tensor, profile: str) -> list[torch.Tensor]:
    """Windows [1, T] of valid-split ids the KL-profile controller is fitted on: the first of
    `VALID_KL_PROFILE`, after the text notebook 02 tunes the bypass on and chooses it with, so the
    profiles see the bypass as it does on unseen text."""
    count, length = pick(profile, quick=(4, 128), full=(24, 512))  # full: 32 until runZ6 (cut for the hour)
    return list(span_windows(valid, VALID_KL_PROFILE, count, length).unsqueeze(1))


@torch.no_grad()
def budget_adherence(executor: AdaptiveExecutor, controllers: dict, ids: torch.Tensor, budgets: list[float],
                     window: int = 256) -> pd.DataFrame:
    """Realized layer fraction and net saving per controller and budget over ids [1, N] (non-overlapping windows)."""
    rows = []
    chunks = [ids[:, i : i + window] for i in range(0, ids.shape[1] - 1, window)]
    with shared_prefixes(executor):  # the layers every plan processes run once per chunk (same numbers)
        for name, controller in controllers.items():
            for b in budgets:
                layer = full = over = 0.0
                for c in chunks:
                    rep = executor.forward(c, controller=controller, budget=b,
                                           with_logits=False).trace.cost(executor.cost)
                    layer += float(rep.layer_macs.sum())
                    full += float(rep.full_layer_macs.sum())
                    over += float(rep.overhead_macs.sum())
                frac = layer / full
                rows.append({"controller": name, "budget": b, "layer_fraction": frac,
                             "layer_saved_net": 1 - (layer + over) / full,
                             "overhead_fraction": over / full, "abs_error": abs(frac - b)})
    return pd.DataFrame(rows)
