"""tools/reproduce.py: run order around shipping the defaults, per-notebook provenance merging."""

import json
from pathlib import Path

import pytest
from conftest import load_tool


@pytest.fixture(scope="module")
def tool():
    pytest.importorskip("papermill")
    return load_tool("reproduce")


def test_notebooks_showing_the_shipped_defaults_run_after_the_others_in_the_full_profile(tool):
    nbs = [Path(f"{i:02d}_x.ipynb") for i in range(1, 10)]
    before, after = tool.run_order(nbs, "full")
    assert [p.name[:2] for p in before] == ["02", "03", "04", "05", "06", "07", "08"]
    assert [p.name[:2] for p in after] == ["01", "09"]
    assert tool.run_order(nbs, "quick") == (nbs, [])  # the quick profile never ships: numeric order


def test_the_wall_time_of_make_reproduce_is_recorded_apart(tool, tmp_path, monkeypatch):
    monkeypatch.setattr(tool, "ROOT", tmp_path)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_max=0")
    (tmp_path / "results").mkdir()
    path = tool.record_make_wall(1000.0, now=4600.5)
    assert path.name.startswith("timings_reproduce")  # verify skips it: a wall time is never compared
    assert json.loads(path.read_text())["seconds"] == 3600.5
    assert json.loads(path.read_text())["glibc_tunables"] == "glibc.malloc.mmap_max=0"  # the setting it ran with
    monkeypatch.delenv("GLIBC_TUNABLES")
    assert json.loads(tool.record_make_wall(1000.0, now=4600.5).read_text())["glibc_tunables"] == ""
    with pytest.raises(ValueError, match="not a start time"):
        tool.record_make_wall(5000.0, now=4600.5)  # a start after now
    probed = json.loads(tool.record_make_wall(1000.0, now=4600.5, probe=1.25).read_text())
    assert probed["machine_probe_seconds"] == 1.25 and probed["seconds"] == 3600.5
    # said from the probe's own sizes
    assert "(40 matmuls 1024x1024 at 2 threads, median of 5)" in probed["machine_probe"]


def test_the_machine_probe_times_a_fixed_workload_and_restores_the_threads(tool):
    import torch

    before = torch.get_num_threads()
    assert 0 < tool.machine_probe(size=64, reps=2, rounds=3, threads=1 if before != 1 else 2) < 60
    assert torch.get_num_threads() == before  # set for the probe, then restored


def test_each_finished_notebook_is_recorded_at_once(tool, tmp_path, monkeypatch):
    monkeypatch.setattr(tool, "ROOT", tmp_path)
    (tmp_path / "results").mkdir()
    origin = {"code_commit": "c1", "code_dirty": False, "python": "3.11"}
    (tmp_path / "results" / "provenance.json").write_text(json.dumps({"note": "old", "notebooks": {"09_x": {}}}))
    tool.record_full_run(origin, "02_x", 10.0, fresh=True)  # a complete run drops the old records
    tool.record_full_run(origin, "03_x", 5.5, fresh=False)
    prov = json.loads((tmp_path / "results" / "provenance.json").read_text())
    assert prov["notebooks"] == {"02_x": {"code_commit": "c1", "code_dirty": False},
                                 "03_x": {"code_commit": "c1", "code_dirty": False}}
    assert "note" not in prov and prov["code_commit"] == "c1" and prov["python"] == "3.11"
    # a partial rerun at another commit updates its own notebook and keeps the others
    tool.record_full_run({**origin, "code_commit": "c2", "python": "3.12"}, "03_x", 6.0, fresh=False)
    prov = json.loads((tmp_path / "results" / "provenance.json").read_text())
    assert prov["code_commit"] == "c1" and prov["python"] == "3.12"  # the last complete run's commit; this machine
    assert prov["notebooks"]["02_x"]["code_commit"] == "c1" and prov["notebooks"]["03_x"]["code_commit"] == "c2"
    assert (json.loads((tmp_path / "results" / "timings_reproduce.json").read_text())
            == {"02_x": 10.0, "03_x": 6.0, "total": 16.0})
    tool.record_full_run(origin, "01_x", 1.0, fresh=True)  # a complete run starts the records afresh
    assert json.loads((tmp_path / "results" / "timings_reproduce.json").read_text()) == {"01_x": 1.0, "total": 1.0}


def test_cell_wall_times_are_read_from_papermill_metadata_and_merged_per_notebook(tool, tmp_path, monkeypatch):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# title"),
        nbformat.v4.new_code_cell("\n# where the time goes\nx = 1", metadata={"papermill": {"duration": 12.345}}),
        nbformat.v4.new_code_cell("y = 2", metadata={"papermill": {}}),  # not executed: no duration, no row
    ])
    assert tool.cell_seconds(nb) == [{"cell": 1, "seconds": 12.3, "first_line": "# where the time goes"}]
    monkeypatch.setattr(tool, "ROOT", tmp_path)
    (tmp_path / "results").mkdir()
    path = tmp_path / "results" / "timings_reproduce_cells.json"
    tool.record_cells("02_x", [{"cell": 1, "seconds": 1.0, "first_line": "a"}], fresh=True)
    tool.record_cells("03_x", [{"cell": 2, "seconds": 2.0, "first_line": "b"}], fresh=False)
    assert sorted(json.loads(path.read_text())) == ["02_x", "03_x"]
    tool.record_cells("01_x", [], fresh=True)  # a complete run starts afresh
    assert json.loads(path.read_text()) == {"01_x": []}
    assert path.name.startswith("timings_reproduce")  # verify skips it, like every wall time


def test_the_cpu_model_and_its_vector_flags_are_read_from_cpuinfo(tool):
    info = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx2 avx512f avx512bw amx_tile\n\n"
    assert tool.cpu_model(info * 2) == {"cpu_model": "AMD EPYC", "cpu_flags": ["avx2", "avx512f", "amx_tile"]}
    assert tool.cpu_model("") == {"cpu_model": "", "cpu_flags": []}
