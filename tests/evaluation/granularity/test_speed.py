"""Measured decode speed: every plan row measured or composed in one interleaved run, joined to the
quality table only for display."""

import math

import pandas as pd
import pytest
import torch
from _anee_tiny import quant_llama

from anee import FixedController, adapter_for
from anee.core.actions import DROP, PROCESS
from anee.evaluation.granularity.speed import (
    FP32,
    Decode,
    Mix,
    decode_seconds,
    decode_speeds,
    with_predictions,
    with_speed,
)
from anee.granularity.quantize import WeightBank


class Tokenizer:
    """The one call `decode_seconds` makes: a prompt to ids."""

    def __call__(self, text, return_tensors="pt"):
        return type("Enc", (), {"input_ids": torch.tensor([[3, 5, 7, 11]])})()


@pytest.fixture(scope="module")
def tiny():
    model = quant_llama(layers=4)
    return model, adapter_for(model)


def test_decode_speeds_measure_compose_and_skip(tiny):
    model, adapter = tiny
    kbank = WeightBank(adapter, bits=(8,), kernels=True)
    int8 = Decode(weights=kbank.at(8))
    dropped = Decode(controller=FixedController([PROCESS, DROP, DROP, PROCESS]))
    plan = {("variant fp32", "fp32"): FP32, ("variant int8-kernel", "int8-kernel"): int8,
            ("variant drop2", "drop2"): dropped, ("select x", "budget=0.5"): Mix(((0.5, FP32), (0.5, int8))),
            ("BranchyNet (digits)", "thr=0.1"): None}
    speeds = decode_speeds(model, Tokenizer(), plan, new_tokens=4, rounds=1, warmup=0)
    assert list(speeds.columns) == ["strategy", "setting", "seconds_per_token", "tokens_per_s", "speed_rel_fp32",
                                    "source", "new_tokens", "rounds", "threads"]
    s = speeds.set_index("strategy")
    assert s.loc["variant fp32", "speed_rel_fp32"] == 1.0
    assert list(speeds.source) == ["measured", "measured", "measured", "composed", "none"]
    assert s.loc["select x", "seconds_per_token"] == pytest.approx(
        0.5 * s.loc["variant fp32", "seconds_per_token"] + 0.5 * s.loc["variant int8-kernel", "seconds_per_token"])
    assert math.isnan(s.loc["BranchyNet (digits)", "speed_rel_fp32"])
    assert kbank.restored


def test_decode_seconds_runs_each_decode_with_its_weights(tiny):
    model, adapter = tiny
    kbank = WeightBank(adapter, bits=(8,), kernels=True)
    seen = []
    original = kbank.applied

    def spy(bits):
        seen.append(tuple(bits))
        return original(bits)

    kbank.applied = spy
    secs = decode_seconds(model, Tokenizer(), [FP32, Decode(weights=kbank.at(8))], new_tokens=3, rounds=2, warmup=0)
    assert len(secs) == 2 and all(s > 0 for s in secs)
    assert (8, 8, 8, 8) in seen


def test_predictions_and_display_join():
    table = pd.DataFrame([
        {"strategy": "variant fp32", "setting": "fp32", "energy_unit": "weight bytes", "rel_energy": 1.0,
         "rel_macs": 1.0, "rel_bytes": 1.0},
        {"strategy": "variant int8", "setting": "int8", "energy_unit": "weight bytes", "rel_energy": 0.4,
         "rel_macs": 1.0, "rel_bytes": 0.4},
        {"strategy": "BranchyNet (digits)", "setting": "thr=0.1", "energy_unit": "MACs (CNN)", "rel_energy": 0.5,
         "rel_macs": 0.5, "rel_bytes": float("nan")},
    ])
    speeds = pd.DataFrame([
        {"strategy": "variant fp32", "setting": "fp32", "speed_rel_fp32": 1.0, "source": "measured"},
        {"strategy": "variant int8", "setting": "int8", "speed_rel_fp32": 1.5, "source": "measured"},
        {"strategy": "BranchyNet (digits)", "setting": "thr=0.1", "speed_rel_fp32": float("nan"), "source": "none"},
    ])
    pred = with_predictions(speeds, table).set_index("strategy")
    assert pred.loc["variant int8", "predicted_speed_rel_fp32"] == pytest.approx(2.5)
    assert pred.loc["variant int8", "measured_over_predicted"] == pytest.approx(0.6)
    assert pred.loc["variant int8", "energy_unit"] == "weight bytes"
    assert math.isnan(pred.loc["BranchyNet (digits)", "predicted_speed_rel_fp32"])  # no decoder, no prediction
    shown = with_speed(table, speeds)
    assert list(shown.columns) == ["strategy", "setting", "energy_unit", "rel_energy", "rel_macs", "rel_bytes",
                                   "speed_rel_fp32", "speed_source"]
    assert list(shown.speed_source) == ["measured", "measured", "none"] and math.isnan(shown.speed_rel_fp32.iloc[2])
    assert list(with_speed(table, speeds[:2]).speed_source) == ["measured", "measured", "none"]


def test_a_key_with_one_row_per_seed_gets_its_unit_and_no_prediction():
    """A trained method has one table row per seed under one (strategy, setting): its unit used to be
    written as the repr of a pandas Series; a timed row under such a key is refused."""
    table = pd.DataFrame([
        {"strategy": "variant fp32", "setting": "fp32", "energy_unit": "weight bytes", "rel_energy": 1.0},
        {"strategy": "06 rl", "setting": "budget=0.8", "energy_unit": "MACs", "rel_energy": 0.80},
        {"strategy": "06 rl", "setting": "budget=0.8", "energy_unit": "MACs", "rel_energy": 0.82},
    ])
    speeds = pd.DataFrame([
        {"strategy": "variant fp32", "setting": "fp32", "speed_rel_fp32": 1.0, "source": "measured"},
        {"strategy": "06 rl", "setting": "budget=0.8", "speed_rel_fp32": float("nan"), "source": "none"},
    ])
    pred = with_predictions(speeds, table).set_index("strategy")
    assert pred.loc["06 rl", "energy_unit"] == "MACs"
    assert math.isnan(pred.loc["06 rl", "predicted_speed_rel_fp32"])
    timed = speeds.assign(source=["measured", "measured"], speed_rel_fp32=[1.0, 1.2])
    with pytest.raises(ValueError, match=r"match several rows of the table"):
        with_predictions(timed, table)
