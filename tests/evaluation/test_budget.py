"""The calibration windows notebooks 03 and 04 share: shapes per profile, drawn from the given ids, one
seed apart from each other and from the controllers' training windows."""

from __future__ import annotations

import pytest
import torch

from anee.core.data import VALID_BYPASS_CHOICE, VALID_BYPASS_TUNING, VALID_KL_PROFILE, sample_windows
from anee.evaluation.budget import kl_profile_windows, skip_calibration_windows


def contains(ids: torch.Tensor, window: torch.Tensor) -> bool:
    return any(torch.equal(ids[0, s : s + len(window)], window) for s in range(ids.shape[1] - len(window) + 1))


@pytest.mark.parametrize("profile, text_shape, gen_shape, prompt", [("quick", (2, 128), (4, 24), 8),
                                                                    ("full", (4, 256), (16, 44), 12)])
def test_skip_calibration_windows_per_profile(profile, text_shape, gen_shape, prompt):
    valid = torch.arange(3000).unsqueeze(0)  # distinct ids: a window's position in valid is unambiguous
    calib = skip_calibration_windows(valid, profile, seed=5)
    assert calib.text.shape == text_shape and calib.generation.shape == gen_shape and calib.prompt == prompt
    assert all(contains(valid, w) for w in (*calib.text, *calib.generation))
    # seeds 7 and 8 (= seed + 2, + 3): the draws notebooks 03 and 04 made before, so their numbers stay
    assert torch.equal(calib.text, sample_windows(valid, text_shape[1], text_shape[0], seed=7))
    assert torch.equal(calib.generation, sample_windows(valid, gen_shape[1], gen_shape[0], seed=8))
    again = skip_calibration_windows(valid, profile, seed=5)
    assert torch.equal(again.text, calib.text) and torch.equal(again.generation, calib.generation)
    assert not torch.equal(skip_calibration_windows(valid, profile, seed=6).text, calib.text)


def test_skip_calibration_windows_need_enough_valid_tokens():
    with pytest.raises(ValueError, match="need at least 256 tokens, have 100"):
        skip_calibration_windows(torch.arange(100).unsqueeze(0), "full", seed=0)
    with pytest.raises(ValueError, match="PROFILE must be one of .*got .medium."):
        skip_calibration_windows(torch.arange(3000).unsqueeze(0), "medium", seed=0)


@pytest.mark.parametrize("profile, count, length", [("quick", 4, 128), ("full", 24, 512)])
def test_kl_profile_windows_follow_the_bypass_text_without_overlap(profile, count, length):
    valid = torch.arange(70_000).unsqueeze(0)  # token i has id i: a window's ids are its offsets
    windows = kl_profile_windows(valid, profile)
    offsets = torch.cat([w[0] for w in windows])
    assert len(windows) == count and all(w.shape == (1, length) for w in windows)
    start = VALID_KL_PROFILE.start
    assert torch.equal(offsets, torch.arange(start, start + count * length))
    # the spans notebook 02 tunes the bypass on and chooses it with come first, and apart
    assert VALID_BYPASS_TUNING.stop <= VALID_BYPASS_CHOICE.start and VALID_BYPASS_CHOICE.stop <= int(offsets.min())
    need = start + count * length
    with pytest.raises(ValueError, match=f"the span {start}: has {count * length - 1}: pass more of the split"):
        kl_profile_windows(valid[:, : need - 1], profile)
