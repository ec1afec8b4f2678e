"""Defaults folders: written by `anee.calibrate` (atomically), checked file by file against their
manifest, turned into the controller `ANEEConfig(controller=...)` names; and the shipped copy of the
embedded model's."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from conftest import tiny_gpt2, tiny_llama

import anee
from anee import AdaptiveExecutor, ANEEConfig, ANEEWrapper, adapter_for
from anee.core.bypass import BypassConfig
from anee.engine.controllers.heuristic import HeuristicController
from anee.engine.controllers.learned import LearnedController
from anee.engine.controllers.plan import PlanConfig
from anee.engine.controllers.policy import PolicyNet, save_policy
from anee.engine.defaults import (
    FORMAT,
    MANIFEST,
    MAX_SHIPPED_BYTES,
    folder_writer,
    read_defaults,
    shipped_root,
    write_manifest,
)
from anee.engine.importance import block_influence, greedy_removal_order
from anee.engine.profiler import FEATURES

TINY_BYPASS = BypassConfig("diag_lowrank", 8)
IDS = torch.randint(2, 97, (1, 600), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama()


@pytest.fixture(scope="module")
def folder(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("defaults") / "anee-tiny"
    anee.calibrate(tiny, None, IDS, out=out, bypass=TINY_BYPASS, progress=False)
    return out


def wrapper(model, folder, **config) -> ANEEWrapper:
    config.setdefault("min_layers", 0)
    return ANEEWrapper(ANEEConfig(model_name="tiny", defaults_dir=str(folder), **config), model=model)


def test_calibrate_writes_a_heuristic_folder_the_wrapper_runs(tiny, folder):
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["format"] == FORMAT and manifest["method"] == "heuristic"
    assert set(manifest["files"]) == {"profiler.safetensors", "bypass.safetensors"}
    assert manifest["model"] == {"name": "llama", "model_type": "llama", "num_layers": 4, "hidden": 48, "vocab": 97}
    assert manifest["source"] == {"kind": "anee.calibrate", "data": "token ids", "tokens": 600,
                                  "bypass": "diag_lowrank-8",
                                  "removal_order": "block_influence"}
    adapter = adapter_for(tiny)
    executor = AdaptiveExecutor(adapter, bypass=read_defaults(folder).bypass(adapter))
    influence = block_influence(executor, IDS, window=min(256, adapter.dims.max_positions)).float()
    # Block Influence on the same ids and windows
    assert torch.equal(read_defaults(folder).profiler(executor).raw_importance, influence)
    w = wrapper(tiny, folder)
    assert w.method == "heuristic" and isinstance(w.controller, HeuristicController)
    assert w.controller.plan_config == PlanConfig() and w.executor.bypass.config == TINY_BYPASS
    out = w.generate_ids(IDS[:, :12], 6, energy_budget=0.6)
    assert abs(out.budget_cost.layer_fraction - 0.6) < 0.15  # the generated tokens (prefill="full", the default)
    assert torch.equal(wrapper(tiny, folder, controller="full").generate_ids(IDS[:, :12], 6).sequences,
                       wrapper(tiny, folder).generate_ids(IDS[:, :12], 6, energy_budget=1.0).sequences)


def test_calibrate_ranks_layers_by_the_greedy_removal_order_with_its_bypass(tiny, folder, tmp_path):
    d = anee.calibrate(tiny, None, IDS, out=tmp_path / "g", bypass=TINY_BYPASS, greedy_steps=2, progress=False)
    assert d.manifest["source"]["removal_order"] == "greedy (2 steps)"
    adapter = adapter_for(tiny)
    executor = AdaptiveExecutor(adapter, bypass=d.bypass(adapter))
    block = read_defaults(folder).profiler(executor).removal_order  # greedy_steps=0: Block Influence (same ids)
    length = min(512, adapter.dims.max_positions)  # the search's windows: the first of the calibration ids
    by_hand = greedy_removal_order(executor, IDS[0, : min(4, 600 // length) * length].view(-1, length), 2, block)
    assert d.profiler(executor).removal_order == by_hand != block  # on this model the search reorders
    assert by_hand[2:] == [i for i in block if i not in by_hand[:2]]
    with pytest.raises(ValueError, match="greedy_steps must be at most the model's 4 layers, got 5"):
        anee.calibrate(tiny, None, IDS, out=tmp_path / "h", greedy_steps=5, progress=False)
    assert not (tmp_path / "h").exists()


def test_calibrate_without_bypass_and_from_text(tiny, tmp_path):
    class Tok:  # the few tokenizer calls calibrate makes
        def __call__(self, text, add_special_tokens=False, return_tensors=None):
            return {"input_ids": torch.tensor([[2 + (ord(c) % 90) for c in text]])}

    d = anee.calibrate(tiny, Tok(), "some text to calibrate on " * 20, out=tmp_path / "d", bypass=None, progress=False)
    assert d.manifest["source"]["data"] == "text" and set(d.manifest["files"]) == {"profiler.safetensors"}
    assert wrapper(tiny, tmp_path / "d").executor.bypass is None
    with pytest.raises(ValueError, match="at least 96 tokens"):
        anee.calibrate(tiny, Tok(), "short", out=tmp_path / "e", progress=False)
    with pytest.raises(TypeError, match=r"text_or_ids must be a str, token ids \[N\] or \[1, N\]"):
        anee.calibrate(tiny, None, IDS.expand(2, -1), out=tmp_path / "e", progress=False)
    assert not (tmp_path / "e").exists()


def test_the_folder_is_replaced_atomically(tmp_path):
    out = tmp_path / "d"
    with folder_writer(out) as tmp:
        (tmp / "profiler.safetensors").write_bytes(b"old")
        (tmp / MANIFEST).write_text("{}")
    with pytest.raises(RuntimeError), folder_writer(out) as tmp:
        (tmp / "profiler.safetensors").write_bytes(b"new")
        raise RuntimeError("crash mid-write")
    assert (out / "profiler.safetensors").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary folder left behind
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not a defaults folder"), folder_writer(tmp_path / "other"):
        pass


def test_a_damaged_or_missing_folder_names_the_fix(tiny, folder, tmp_path):
    with pytest.raises(ValueError, match=r"not a defaults folder \(no manifest.json\); write one with anee.calibrate"):
        read_defaults(tmp_path)
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in folder.iterdir():
        copy.joinpath(f.name).write_bytes(f.read_bytes())
    data = bytearray((copy / "bypass.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "bypass.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the size / sha256"):
        wrapper(tiny, copy)
    (copy / "bypass.safetensors").unlink()
    with pytest.raises(ValueError, match="listed in .* but missing"):
        read_defaults(copy)
    (copy / MANIFEST).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_defaults(copy)


def test_another_model_is_refused_naming_the_difference(folder):
    with pytest.raises(ValueError, match=r"this model differs: model_type 'gpt2' \(files: 'llama'\).*anee.calibrate"):
        wrapper(tiny_gpt2(), folder)


def test_learned_methods_come_from_the_folder(tiny, folder, tmp_path):
    d = tmp_path / "learned"
    with folder_writer(d) as tmp:
        for f in folder.iterdir():
            tmp.joinpath(f.name).write_bytes(f.read_bytes())
        torch.manual_seed(0)
        save_policy(tmp / "rl.safetensors", PolicyNet(len(FEATURES)), "rl", 4, plan=PlanConfig(),
                    bypass="diag_lowrank-8 tuned")
        write_manifest(tmp, {**json.loads((folder / MANIFEST).read_text()), "method": "rl"})
    w = wrapper(tiny, d)
    assert w.method == "rl" and isinstance(w.controller, LearnedController)
    assert wrapper(tiny, d, controller="heuristic").method == "heuristic"
    with pytest.raises(ValueError, match=r"has no 'warmstart' controller \(it holds heuristic, rl\)"):
        wrapper(tiny, d, controller="warmstart")
    with pytest.raises(ValueError, match="was trained with the layer bypass 'diag_lowrank-8 tuned', "
                                         "the executor runs None"):
        ANEEWrapper(ANEEConfig(model_name="tiny", defaults_dir=str(d), min_layers=0), model=tiny,
                    bypass=anee.core.bypass.BypassBank(BypassConfig("identity"), 48, 4))


def test_controller_names():
    with pytest.raises(ValueError, match=r"controller must be one of 'default', 'budget', 'heuristic', 'warmstart', "
                                         r"'rl', 'full', "
                                         r"got 'fast'; to use another controller object, pass it as ANEEWrapper"):
        ANEEConfig(controller="fast")
    assert ANEEConfig().controller == "default"


def test_a_model_without_defaults_says_what_to_run():
    model = tiny_gpt2()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w = ANEEWrapper(ANEEConfig(model_name="tiny"), model=model)
    assert w.method == "budget"
    message = " ".join(str(c.message) for c in caught)
    assert ("anee.calibrate(model, tokenizer, text, out='anee-tiny')" in message
            and "Falling back to the seed's budget policy" in message)
    with pytest.raises(ValueError, match=re.escape("controller='heuristic' needs a profiler")):
        ANEEWrapper(ANEEConfig(model_name="tiny", controller="heuristic"), model=model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ANEEWrapper(ANEEConfig(model_name="tiny", controller="budget"), model=model).method == "budget"


# -- the shipped copy (tools/ship_defaults.py): fails until the defaults are shipped ---------------------


def test_shipped_defaults_match_their_manifest_and_the_size_cap():
    folder = shipped_root() / "smollm2-135m"
    assert (folder / MANIFEST).is_file(), (f"{folder} is missing: after `make reproduce`, "
                                           "run `python tools/ship_defaults.py` "
                                           "and commit anee/defaults/")
    d = read_defaults(folder)  # every file's size and sha256
    source = d.manifest["source"]
    assert source["kind"] == "notebook run" and source["profile"] == "full" and source["code_commit"]
    assert set(source["notebooks"].values()) <= {"02_trace_collection", "03_warm_start", "04_rl_training"}
    assert set(d.methods) == {"heuristic", "warmstart", "rl"}
    files = [f for f in shipped_root().rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= MAX_SHIPPED_BYTES
    assert {f.suffix for f in files} <= {".json", ".safetensors"}  # no pickle
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"defaults/*/*.safetensors"' in pyproject and '"defaults/*/*.json"' in pyproject


def test_the_embedded_model_runs_its_shipped_default(smollm2):
    model, tokenizer = smollm2
    w = ANEEWrapper(ANEEConfig(model_name="smollm2-135m", min_layers=2), model=model, tokenizer=tokenizer)
    assert w.method == read_defaults(shipped_root() / "smollm2-135m").method
    _, result = w.generate(prompt="The future of AI is", max_new_tokens=8, energy_budget=0.8, return_result=True)
    # the generated tokens: each inside the pacing band the shipped controller was trained with, so their mean too
    # (a few tokens' mean need not be within 0.05 of the budget: 02/04 measure that over 256-token windows)
    cost, slack = result.budget_cost, w.controller.pacing.slack
    assert result.prefill == "full" and slack <= 0.1
    assert ((cost.layer_macs / cost.full_layer_macs - 0.8).abs() <= slack + 1e-9).all()
    assert abs(cost.layer_fraction - 0.8) <= slack
