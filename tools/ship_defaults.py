"""Ship the embedded model's defaults: copy what notebooks 02-04 wrote to the checkpoint folder into the
package (`anee/defaults/<model>/`, package data), with a manifest naming the profile, the notebooks,
the commit and the method `ANEEWrapper` runs by default.

    python tools/ship_defaults.py                      # after `make reproduce` (full profile)
    python tools/ship_defaults.py --profile quick --out /tmp/anee-quick   # a trial, outside the package

Copied (the policies of one training seed, `--seed`):

    profiler.safetensors          <- 02_trace_collection   profiler.safetensors
    bypass.safetensors            <- 02_trace_collection   bypass.safetensors
    warmstart.safetensors         <- 03_warm_start         warmstart-s<seed>.safetensors
    rl.safetensors                <- 04_rl_training        rl-s<seed>.safetensors

The default method (`--method auto`) is the one of the heuristic, warm-start and REINFORCE (each with
the bypass) with the lowest perplexity in notebook 06's `06_ppl_at_equal_savings` at net saving
`--level` (0.2: what budget 0.8 saves). The commit is the one `tools/reproduce.py` recorded in
`results/provenance.json` for a full run, else the checkout's HEAD (marked as such). The package's
shipped files must stay within 10 MB in total. Every file is checked against the manifest and every
method is loaded on the model before the folder replaces the old one (atomically).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = {"profiler.safetensors": ("02_trace_collection", "profiler.safetensors"),
             "bypass.safetensors": ("02_trace_collection", "bypass.safetensors"),
             "warmstart.safetensors": ("03_warm_start", "warmstart-s{seed}.safetensors"),
             "rl.safetensors": ("04_rl_training", "rl-s{seed}.safetensors")}
FRONTIER_ROWS = {"heuristic": "anee_heuristic+bypass", "warmstart": "anee_warmstart+bypass", "rl": "anee_rl+bypass"}
LEVELS_TABLE = "06_ppl_at_equal_savings.csv"


def results_dir(profile: str) -> Path:
    return ROOT / "results" / ("quick" if profile == "quick" else "")


def choose_method(results: Path, level: float, available: set[str]) -> tuple[str, dict]:
    """The available method with the lowest perplexity at net saving `level` in 06's table, and the
    perplexities it was chosen from."""
    path = results / LEVELS_TABLE
    if not path.is_file():
        raise SystemExit(f"{path} not found: run notebook 06 first, or name the method with --method")
    with open(path, newline="") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    column = f"{level:g}"
    ppl = {}
    for method, row_name in FRONTIER_ROWS.items():
        value = rows.get(row_name, {}).get(column, "")
        if method in available and value not in ("", None) and math.isfinite(float(value)):
            ppl[method] = float(value)
    if not ppl:
        raise SystemExit(f"{path} has no perplexity at net saving {column} for any of {sorted(available)}: "
                         "choose another --level or name the method with --method")
    return min(ppl, key=ppl.get), {"table": f"{results.relative_to(ROOT) if results.is_relative_to(ROOT) else results}/"
                                             f"{LEVELS_TABLE}", "net_saving": level, "ppl": ppl}


def provenance(results: Path) -> dict:
    """The commit the checkpoints come from: the full run's record, else this checkout's HEAD."""
    recorded = results / "provenance.json"
    if recorded.is_file():
        p = json.loads(recorded.read_text())
        runs = [r for name, r in (p.get("notebooks") or {}).items()
                if name[:2] in {nb[:2] for nb, _ in NOTEBOOKS.values()}]
        if runs and len({r.get("code_commit") for r in runs}) == 1:  # the checkpoints' notebooks ran at one commit
            p = runs[0]
        elif runs:
            return {"code_commit": None, "code_dirty": True,
                    "commit_from": f"{recorded.name}: notebooks 02-04 ran at different commits"}
        return {"code_commit": p.get("code_commit"), "code_dirty": p.get("code_dirty"),
                "commit_from": str(recorded.name)}
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "anee", "notebooks"],
                                capture_output=True, text=True).stdout.strip())
    return {"code_commit": head or None, "code_dirty": dirty,
            "commit_from": "git HEAD at shipping (no provenance.json)"}


def shipped_bytes_elsewhere(out: Path) -> int:
    """Bytes of the other models' shipped folders (the 10 MB cap is for the package as a whole)."""
    from anee.engine.defaults import shipped_root

    root = shipped_root()
    if not root.is_dir():
        return 0
    return sum(f.stat().st_size for d in root.iterdir() if d.is_dir() and d.resolve() != out.resolve()
               for f in d.rglob("*") if f.is_file())


def ship(profile: str = "full", results: Path | None = None, seed: int = 0, method: str = "auto", level: float = 0.2,
         model_name: str = "smollm2-135m", out: Path | None = None, model=None) -> dict:
    """Copy, describe, check and install the defaults folder; returns its manifest."""
    from anee.core.adapters import adapter_for
    from anee.core.loading import load_model
    from anee.engine.config import ANEEConfig
    from anee.engine.controllers.plan import PlanConfig
    from anee.engine.controllers.policy import load_policy
    from anee.engine.defaults import (
        MAX_SHIPPED_BYTES,
        METHODS,
        POLICY_FILES,
        folder_writer,
        model_fingerprint,
        read_defaults,
        shipped_root,
        write_manifest,
    )
    from anee.engine.wrapper import ANEEWrapper

    results = Path(results) if results is not None else results_dir(profile)
    checkpoints = results / "checkpoints"
    out = Path(out) if out is not None else shipped_root() / model_name
    if model is None:
        model, _ = load_model(model_name)
    adapter = adapter_for(model)
    sources = {dest: checkpoints / name.format(seed=seed) for dest, (_, name) in NOTEBOOKS.items()}
    for dest in ("profiler.safetensors", "bypass.safetensors"):
        if not sources[dest].is_file():
            raise SystemExit(f"{sources[dest]} not found: run notebook {NOTEBOOKS[dest][0]} ({profile} profile) first")
    sources = {dest: src for dest, src in sources.items() if src.is_file()}
    available = {"heuristic"} | {m for m, f in POLICY_FILES.items() if f in sources}
    if method == "auto":
        method, chosen_by = choose_method(results, level, available)
    elif method in available:
        chosen_by = {"named": "--method"}
    else:
        raise SystemExit(f"--method {method}: its checkpoint is not in {checkpoints} (have {sorted(available)}; "
                         f"methods: {METHODS})")
    warm = checkpoints / NOTEBOOKS["warmstart.safetensors"][1].format(seed=seed)
    plan = (load_policy(warm, adapter.num_layers).plan_config() if warm.is_file() else None) or PlanConfig()
    total = sum(p.stat().st_size for p in sources.values()) + shipped_bytes_elsewhere(out)
    if total > MAX_SHIPPED_BYTES:
        raise SystemExit(f"the package's shipped files would total {total / 1e6:.2f} MB, "
                         f"over the {MAX_SHIPPED_BYTES / 1e6:g} MB cap")
    with folder_writer(out) as tmp:
        for dest, src in sources.items():
            shutil.copyfile(unchanged_or(src, out / dest), tmp / dest)
        write_manifest(tmp, {"model": model_fingerprint(adapter, model_name), "method": method, "plan": asdict(plan),
                             "source": {"kind": "notebook run", "profile": profile, "seed": seed,
                                        "chosen_by": chosen_by, "notebooks": {d: NOTEBOOKS[d][0] for d in sources},
                                        "checkpoints": {d: src.name for d, src in sources.items()},
                                        **provenance(results)}})
        defaults = read_defaults(tmp)
        for m in defaults.methods:  # every method loads and runs on the model before the folder is installed
            wrapper = ANEEWrapper(ANEEConfig(model_name=model_name, controller=m, defaults_dir=str(tmp)), model=model)
            wrapper.generate_ids(probe_ids(wrapper), 2, energy_budget=0.8)
    return read_defaults(out).manifest


def unchanged_or(src: Path, shipped: Path) -> Path:
    """`shipped` when its header equals `src`'s, else `src`. Every checkpoint's header carries the
    sha256 of its format, config and tensors (`anee.core.checkpoints.save_checkpoint`), so equal
    headers mean equal content; but safetensors writes the header's keys in hash order, so a rerun
    that changed nothing would otherwise change the shipped files' bytes (and the manifest's sha256)."""
    from safetensors import safe_open

    if not shipped.is_file():
        return src
    with safe_open(str(src), "pt") as a, safe_open(str(shipped), "pt") as b:
        same = "sha256" in (a.metadata() or {}) and a.metadata() == b.metadata()
    return shipped if same else src


def probe_ids(wrapper):
    """A few token ids on the model's device."""
    import torch

    return torch.arange(2, 10, device=next(wrapper.model.parameters()).device)[None] % wrapper.adapter.dims.vocab


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=("quick", "full"), default="full")
    parser.add_argument("--results", type=Path, default=None,
                        help="results folder holding checkpoints/ (default: the profile's)")
    parser.add_argument("--seed", type=int, default=0, help="training seed of the policies to ship")
    parser.add_argument("--method", choices=("auto", "heuristic", "warmstart", "rl"), default="auto")
    parser.add_argument("--level", type=float, default=0.2,
                        help="net saving at which --method auto compares (06's columns)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", type=Path, default=None, help="default: anee/defaults/<model>/ (package data)")
    args = parser.parse_args(argv)
    manifest = ship(args.profile, args.results, args.seed, args.method, args.level, args.model, args.out)
    print(json.dumps({k: manifest[k] for k in ("method", "total_bytes", "source")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
