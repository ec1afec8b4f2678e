"""tools/malloc_bench.py: the record it writes, and its refusals (the timed workload itself is not run here)."""

import pytest
from conftest import load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("malloc_bench")


def _run(wall, sys_, kl="0x1.2p+3"):
    return {"wall": wall, "user": 10.0, "sys": sys_, "minor_faults": 100, "kl_hex": kl}


def test_the_speedup_is_the_ratio_of_median_wall_times(tool):
    runs = {"default": [_run(20.0, 6.0), _run(18.0, 5.0), _run(30.0, 9.0)],
            "tuned": [_run(16.0, 3.0), _run(15.0, 2.0), _run(99.0, 4.0)]}
    record = tool.summarize(runs, "glibc.malloc.mmap_max=0")
    assert record["median"]["default"]["wall"] == 20.0 and record["median"]["tuned"]["wall"] == 16.0
    assert record["speedup"] == 1.25 and record["median"]["tuned"]["sys"] == 3.0
    assert record["reps"] == 3 and record["glibc_tunables"] == "glibc.malloc.mmap_max=0"


def test_a_setting_that_changes_the_result_is_refused(tool):
    runs = {"default": [_run(20.0, 6.0)], "tuned": [_run(16.0, 3.0, kl="0x1.3p+3")]}
    with pytest.raises(SystemExit, match="changed the workload's result"):
        tool.summarize(runs, "x")


def test_it_asks_for_make_without_the_setting(tool, monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr("sys.argv", ["malloc_bench.py"])
    with pytest.raises(SystemExit, match="make bench-malloc"):
        tool.main()
