"""The command line: every command's --help, one-line errors with exit status 2, and each command's
output, on a tiny model (the loader patched) and once end to end on the embedded SmolLM2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama

import anee
from anee.cli import COMMANDS, heatmap, main
from anee.cli import options as cli_options
from anee.core.bypass import BypassConfig


class CharTokenizer:
    """Just what the commands ask of a tokenizer, one token per character."""

    pad_token_id, eos_token_id = None, 1

    def __call__(self, text, add_special_tokens=True, return_tensors=None):
        ids = [2 + ord(c) % 90 for c in text]
        return {"input_ids": torch.tensor([ids]) if return_tensors == "pt" else ids}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(97 + int(i) % 26) for i in ids)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    model = tiny_llama()
    ids = torch.randint(2, 97, (1, 600), generator=torch.Generator().manual_seed(0))
    out = tmp_path_factory.mktemp("cli") / "anee-tiny"
    anee.calibrate(model, None, ids, out=out, bypass=BypassConfig("diag_lowrank", 8), progress=False)
    return model, out


@pytest.fixture()
def tiny(tiny_folder, monkeypatch):
    model, folder = tiny_folder
    monkeypatch.setattr(cli_options, "load_model",
                        lambda name, device="auto", dtype="float32": (model, CharTokenizer()))
    return ["--model", "tiny", "--defaults-dir", str(folder), "--min-layers", "0"]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("command", [[]] + [[c] for c in COMMANDS])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit:
        main([*command, "--help"])
    assert exit.value.code == 0 and capsys.readouterr().out.startswith(f"usage: anee {' '.join(command)}".rstrip())


@pytest.mark.parametrize("argv, message", [
    (["generate", "x", "--budget", "2"],
     r"anee generate: error: argument --budget: energy_budget must be a finite number in [0, 1]"),
    (["generate", "x", "--controller", "fast"], "anee generate: error: argument --controller: invalid choice: 'fast'"),
    (["generate", ""], "anee generate: error: argument prompt: the prompt is empty"),
    (["generate", "   "], "anee generate: error: argument prompt: the prompt is empty"),
    (["generate", "x", "--max-new-tokens", "0"], "argument --max-new-tokens: must be a positive integer, got 0"),
    (["generate", "x", "--capacity", "0.5"], "--capacity and --target-speedup are for --hierarchical"),
    (["generate", "x", "--hierarchical"], "--hierarchical needs --capacity or --target-speedup"),
    (["generate", "x", "--hierarchical", "--capacity", "0.95"], "argument --capacity: capacity must be in [0.1, 0.9]"),
    (["generate", "x", "--hierarchical", "--capacity", "0.5", "--target-speedup", "2"], "not allowed with argument"),
    (["eval", "--budgets", "0.9", "1.5"], "anee eval: error: argument --budgets: energy_budget must be"),
    (["eval", "--window", "64", "--stride", "128"], "--stride (128) must not exceed --window (64)"),
    (["heatmap", "x", "--out", "map.jpg"], "--out must name a .png file"),
    (["bench", "--skip-fraction", "1.5"], "--skip-fraction must be in (0, 1)"),
    (["calibrate"], "the following arguments are required: --out"),
    (["frobnicate"], "anee: error: argument command: invalid choice: 'frobnicate'"),
    ([], "anee: error: the following arguments are required"),
])
def test_wrong_arguments_give_one_line_and_status_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    line = error_line(capsys)
    assert message in line and line.endswith("--help)")


def test_what_the_package_refuses_is_one_line_and_status_2(tiny, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit:
        main(["generate", "x", "--controller", "rl", *tiny])
    assert exit.value.code == 2 and "has no 'rl' controller (it holds heuristic)" in error_line(capsys)
    with pytest.raises(SystemExit) as exit:
        main(["generate", "x", "--hierarchical", "--capacity", "0.5", "--checkpoint-dir", str(tmp_path)])
    assert exit.value.code == 2 and "the hierarchical model is trained by notebook 05" in error_line(capsys)


def test_generate_prints_text_layers_fraction_saving_and_speed(tiny, capsys):
    assert main(["generate", "hello there", "--budget", "0.6", "--max-new-tokens", "5", *tiny]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2].startswith("controller          : heuristic")
    layers = out[3].split(":", 1)[1].split("(of 4")[0]
    prompt, new = layers.split("|")
    assert len(prompt.split()) == len("hello there") and 1 <= len(new.split()) <= 5
    assert (out[4].startswith("realized fraction   : 0.") and "of layer compute" in out[5]
            and out[6].startswith("tokens/s"))


def test_generate_with_a_full_depth_prompt_reports_the_generated_tokens(tiny, capsys):
    assert main(["generate", "hello there", "--budget", "0.6", "--max-new-tokens", "5", "--prefill", "full",
                 *tiny]) == 0
    out = capsys.readouterr().out.splitlines()
    prompt, new = out[3].split(":", 1)[1].split("(of 4")[0].split("|")
    assert prompt.split() == ["4"] * len("hello there")  # every prompt token ran all 4 layers
    assert (out[4].startswith("realized fraction   : 0.")
            and "for the generated tokens (the prompt runs every layer; " in out[4])
    assert out[5].endswith("(overheads included; generated tokens)")
    with pytest.raises(SystemExit) as exit:
        main(["generate", "x", "--prefill", "half", *tiny])
    assert exit.value.code == 2 and "--prefill: invalid choice: 'half'" in error_line(capsys)
    with pytest.raises(SystemExit) as exit:
        main(["generate", "x", "--hierarchical", "--capacity", "0.5", "--prefill", "full", *tiny])
    assert exit.value.code == 2 and "--prefill is for ANEE's controllers" in error_line(capsys)


def test_generate_samples_and_warns_without_defaults(tiny, capsys):
    argv = ["generate", "hello", "--sample", "--temperature", "0.7", "--seed", "3", "--model", "tiny"]
    assert main(argv) == 0
    first = capsys.readouterr()
    assert ("anee generate: warning: controller='default' needs a profiler" in first.err
            and "controller          : budget" in first.out)
    main(argv)
    assert capsys.readouterr().out.splitlines()[0] == first.out.splitlines()[0]  # the seed fixes the draw


def test_eval_prints_a_table(tiny, capsys):
    assert main(["eval", "--budgets", "1.0", "0.6", "--tokens", "200", "--window", "64", "--stride", "32", *tiny]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("tiny, WikiText-2 test: 199 tokens scored") and out[1].split() == [
        "method", "budget", "ppl", "layer_fraction", "layer_saved_net", "total_saved_net"]
    assert [line.split()[:2] for line in out[2:]] == [["heuristic", "1"], ["heuristic", "0.6"]]


def test_heatmap_writes_a_png(tiny, capsys, tmp_path):
    assert main(["heatmap", "hello", "--out", str(tmp_path / "m.png"), "--max-new-tokens", "3", *tiny]) == 0
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("extra", "says"), [
    ([], " (generated tokens)"),  # the default: prefill="full"
    (["--prefill", "adaptive"], ": layer fraction 0."),
    (["--prefill", "full", "--max-new-tokens", "1"],
     ": layer fraction 1.000 (prompt at full depth, no token under the budget)"),
])
def test_heatmap_title_names_the_tokens_its_fraction_covers(tiny, monkeypatch, tmp_path, extra, says):
    titles = []
    real = heatmap.execution_map
    monkeypatch.setattr(heatmap, "execution_map",
                        lambda d, tokens, title: titles.append(title) or real(d, tokens, title))
    assert main(["heatmap", "hello", "--out", str(tmp_path / "m.png"), "--budget", "0.5", "--max-new-tokens", "3",
                 *extra, *tiny]) == 0
    assert says in titles[0] and titles[0].count("(") == (0 if "adaptive" in extra else 1)


def test_calibrate_writes_a_folder(tiny_folder, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("anee.cli.calibrate.load_model",
                        lambda name, device="auto", dtype="float32": (tiny_folder[0], CharTokenizer()))
    (tmp_path / "t.txt").write_text("calibration text for a tiny model " * 30)
    assert main(["calibrate", "--model", "tiny", "--out", str(tmp_path / "d"), "--text-file", str(tmp_path / "t.txt"),
                 "--no-bypass"]) == 0
    assert "method heuristic" in capsys.readouterr().out and (tmp_path / "d" / "manifest.json").is_file()
    assert main(["calibrate", "--model", "tiny", "--out", str(tmp_path / "g"), "--text-file", str(tmp_path / "t.txt"),
                 "--no-bypass", "--greedy-steps", "1"]) == 0
    assert json.loads((tmp_path / "g" / "manifest.json").read_text())["source"]["removal_order"] == "greedy (1 steps)"


def test_python_dash_m_on_the_embedded_model():
    """`python -m anee generate ... --budget 0.8` offline; a wrong budget exits 2 in one line."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    ok = subprocess.run([sys.executable, "-m", "anee", "generate", "The future of AI is", "--budget", "0.8",
                         "--max-new-tokens", "4"],
                        capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "realized fraction   : 0." in ok.stdout and "tokens/s" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "anee", "generate", "x", "--budget", "2"], capture_output=True,
                         text=True, env=env)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_the_console_script_is_installed_and_runs_the_same_command_line():
    """`anee` (pyproject's [project.scripts]) is on the venv's path and answers like `python -m anee`."""
    import tomllib

    scripts = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"anee": "anee.cli:main"}
    script = Path(sys.executable).parent / "anee"
    assert script.is_file(), f"{script} missing: `make setup` (pip install -e .) installs it"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    ok = subprocess.run([str(script), "bench", "--help"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and ok.stdout.startswith("usage: anee bench") and "--hierarchical" in ok.stdout
    bad = subprocess.run([str(script), "eval", "--budgets", "1.5"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_bench_times_the_hierarchical_capacities(monkeypatch, tmp_path, capsys):
    from _anee_tiny import hier_llama, randomize

    from anee.cli import hierarchical as cli_hierarchical
    from anee.evaluation.methods.hierarchical import checkpoint_path
    from anee.hierarchical import HierarchicalModel

    base = hier_llama()
    randomize(HierarchicalModel(base)).save(checkpoint_path(tmp_path))
    monkeypatch.setattr(cli_hierarchical, "load_model",
                        lambda name, device="auto", dtype="float32": (base, CharTokenizer()))
    argv = ["bench", "--hierarchical", "--capacities", "0.9", "0.5", "--tokens", "64", "--repeats", "1",
            "--checkpoint-dir", str(tmp_path)]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("hierarchical sparse path on 64 WikiText-2 test tokens, fastest of 1 interleaved rounds")
    header, rows = lines[1].split(), [dict(zip(lines[1].split(), line.split())) for line in lines[2:]]
    assert {"wallclock_speedup_vs_hf", "wallclock_speedup_vs_own_full", "total_saved_net"} <= set(header)
    assert [float(r["capacity"]) for r in rows] == [1.0, 0.9, 0.5]
    assert float(rows[0]["total_saved_net"]) == 0.0 and float(rows[0]["wallclock_speedup_vs_own_full"]) == 1.0
    assert 0.0 < float(rows[1]["total_saved_net"]) < float(rows[2]["total_saved_net"])
    with pytest.raises(SystemExit) as exit:
        main(["bench", "--hierarchical", "--capacities", "0.95"])
    assert exit.value.code == 2 and "capacity must be in [0.1, 0.9]" in error_line(capsys)
