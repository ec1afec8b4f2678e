"""tools/ship_defaults.py on a tiny model's checkpoint folder laid out as notebooks 02-04 write it."""

import shutil
from pathlib import Path

import pytest
import torch
from conftest import load_tool, tiny_llama

import anee
import anee.engine.defaults as defaults
from anee.core.bypass import BypassBank, BypassConfig
from anee.engine.controllers.plan import PlanConfig
from anee.engine.controllers.policy import PolicyNet, save_policy
from anee.engine.profiler import FEATURES

TABLE = ("method,0.1,0.1_std,0.2,0.2_std,n_seeds\nanee_heuristic+bypass,21.6,0,23.5,0,1\n"
         "anee_warmstart+bypass,20.0,0,22.9,0,1\nanee_rl+bypass,20.0,0,,0,1\n")


@pytest.fixture(scope="module")
def tool():
    return load_tool("ship_defaults")


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


@pytest.fixture()
def results(model, tmp_path) -> Path:
    """A results folder: 02's profiler and bypass, 03's and 04's seed-0 policies, 06's table."""
    ckpt = tmp_path / "results" / "checkpoints"
    ids = torch.randint(2, 97, (1, 600), generator=torch.Generator().manual_seed(0))
    folder = anee.calibrate(model, None, ids, out=tmp_path / "calibrated",
                            bypass=BypassConfig("diag_lowrank", 8), progress=False)
    ckpt.mkdir(parents=True)
    for name in ("profiler.safetensors", "bypass.safetensors"):
        shutil.copyfile(folder.folder / name, ckpt / name)
    for kind in ("warmstart", "rl"):
        torch.manual_seed(0)
        save_policy(ckpt / f"{kind}-s0.safetensors", PolicyNet(len(FEATURES)), kind, 4, plan=PlanConfig(marginal=2),
                    bypass="diag_lowrank-8 tuned", seed=0)
    (tmp_path / "results" / "06_ppl_at_equal_savings.csv").write_text(TABLE)
    return tmp_path / "results"


def test_ships_the_checkpoints_with_a_manifest(tool, model, results, tmp_path):
    manifest = tool.ship("quick", results, out=tmp_path / "out", model=model, model_name="tiny")
    assert manifest["method"] == "warmstart"  # lowest perplexity at net saving 0.2 (rl has none there)
    assert manifest["source"]["chosen_by"]["ppl"] == {"heuristic": 23.5, "warmstart": 22.9}
    assert manifest["plan"] == {"marginal": 2, "skip_share": 0.5}  # the learned controllers' plan
    assert manifest["source"]["notebooks"] == {
        "profiler.safetensors": "02_trace_collection", "bypass.safetensors": "02_trace_collection",
        "warmstart.safetensors": "03_warm_start", "rl.safetensors": "04_rl_training"}
    assert manifest["source"]["checkpoints"]["rl.safetensors"] == "rl-s0.safetensors"
    assert manifest["source"]["profile"] == "quick" and "code_commit" in manifest["source"]
    assert set(defaults.read_defaults(tmp_path / "out").methods) == {"heuristic", "warmstart", "rl"}
    assert tool.ship("quick", results, method="heuristic", out=tmp_path / "out",
                     model=model, model_name="tiny")["method"] == "heuristic"


def test_refuses_what_cannot_be_shipped(tool, model, results, tmp_path, monkeypatch):
    monkeypatch.setattr(defaults, "MAX_SHIPPED_BYTES", 1000)
    with pytest.raises(SystemExit, match="over the 0.001 MB cap"):
        tool.ship("quick", results, out=tmp_path / "out", model=model, model_name="tiny")
    monkeypatch.undo()
    (results / "checkpoints" / "rl-s0.safetensors").unlink()
    with pytest.raises(SystemExit, match="--method rl: its checkpoint is not in"):
        tool.ship("quick", results, method="rl", out=tmp_path / "out", model=model, model_name="tiny")
    (results / "06_ppl_at_equal_savings.csv").unlink()
    with pytest.raises(SystemExit, match="run notebook 06 first, or name the method with --method"):
        tool.ship("quick", results, out=tmp_path / "out", model=model, model_name="tiny")
    (results / "checkpoints" / "bypass.safetensors").unlink()
    with pytest.raises(SystemExit, match="run notebook 02_trace_collection"):
        tool.ship("quick", results, method="heuristic", out=tmp_path / "out", model=model, model_name="tiny")
    assert not (tmp_path / "out").exists()


def _reorder_header(path: Path) -> None:
    """Rewrite a safetensors file with its metadata keys in reverse order: the same content, other bytes."""
    import json

    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"] = dict(reversed(list(header["__metadata__"].items())))
    text = json.dumps(header, separators=(",", ":")).encode().ljust(n)
    assert len(text) == n
    path.write_bytes(raw[:8] + text + raw[8 + n :])


def test_a_rerun_with_the_same_content_keeps_the_shipped_bytes(tool, model, results, tmp_path):
    out = tmp_path / "out"
    tool.ship("quick", results, out=out, model=model, model_name="tiny")
    first = {f: (out / f).read_bytes() for f in ("profiler.safetensors", "bypass.safetensors")}
    for f in first:
        _reorder_header(results / "checkpoints" / f)
        assert (results / "checkpoints" / f).read_bytes() != first[f]
    sha = tool.ship("quick", results, out=out, model=model, model_name="tiny")["files"]
    assert all((out / f).read_bytes() == first[f] for f in first)
    # a real change is shipped: one bypass weight differs
    adapter = anee.adapter_for(model)
    path = results / "checkpoints" / "bypass.safetensors"
    bank = BypassBank.from_checkpoint(path, adapter.dims.hidden, adapter.num_layers)
    with torch.no_grad():
        next(bank.parameters()).add_(1.0)
    bank.save(path)
    changed = tool.ship("quick", results, out=out, model=model, model_name="tiny")["files"]
    assert (out / "bypass.safetensors").read_bytes() == path.read_bytes() != first["bypass.safetensors"]
    assert changed["bypass.safetensors"]["sha256"] != sha["bypass.safetensors"]["sha256"]
    assert changed["profiler.safetensors"] == sha["profiler.safetensors"]
