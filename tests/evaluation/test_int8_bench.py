"""The INT8 benchmark end to end on the embedded model, at a tiny size: quality and timings apart,
every contender measured against the byte-count prediction."""

import pytest

from anee.evaluation.int8_bench import run


def test_int8_bench_small(smollm2):
    quality, timings = run(eval_tokens=96, new_tokens=2, rounds=1, calib_windows=1, write=False, loaded=smollm2)
    assert quality["fp32_ppl"] > 1 and quality["window"] == 512
    for name in ("int8_smoothed", "int8_unsmoothed"):
        q = quality[name]
        assert q["ppl_rel_fp32"] == pytest.approx(q["ppl"] / quality["fp32_ppl"])
        assert q["kl_first_window"] > 0 and 0.5 < q["top1_agreement_first_window"] <= 1
    assert not set(quality) & {"tokens_per_s", "speed_rel_fp32"}  # timings never in the quality record
    assert set(timings["tokens_per_s"]) == {"fp32", "int8", "int8_half_segments"}
    assert timings["speed_rel_fp32"]["fp32"] == 1.0
    assert sorted(timings["half_segments_bits"]) == [8, 8, 8, 32, 32, 32]
    pred = timings["predicted_speed_rel_fp32_by_bytes"]
    assert 1 < pred["int8_half_segments"] < pred["int8"]
