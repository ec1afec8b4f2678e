"""Run every numbered notebook in order with papermill and a given profile.

Executed copies go to results/executed/ (the sources stay clean); every table and figure is
rewritten by the notebooks themselves through anee.evaluation.results. Wall times per notebook are
written to results/timings_reproduce.json (full run; partial runs: results/executed/), the only
file here allowed to differ between runs. A full run also writes results/provenance.json: the
commit the results come from and whether the code under anee/ and notebooks/ had uncommitted
changes (then the results cannot be traced to a commit, and `make verify` says so).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import papermill as pm

ROOT = Path(__file__).resolve().parent.parent


def provenance() -> dict:
    """The commit the results are generated from, and whether its code is what runs."""
    def git(*args):
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "anee", "notebooks")
    import torch

    return {"code_commit": git("rev-parse", "HEAD"), "code_dirty": bool(dirty), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "machine": platform.machine()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", choices=("quick", "full"), default="full")
    parser.add_argument("--only", nargs="*", default=None, help="notebook prefixes, e.g. 01 06")
    args = parser.parse_args()
    out_dir = ROOT / "results" / "executed"
    out_dir.mkdir(parents=True, exist_ok=True)
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if args.only:
        notebooks = [nb for nb in notebooks if nb.name[:2] in args.only]
    timings = {}
    origin = provenance()
    if origin["code_dirty"]:
        print("note: anee/ or notebooks/ has uncommitted changes: these results will not match any commit", flush=True)
    start = time.perf_counter()
    for nb in notebooks:
        t0 = time.perf_counter()
        print(f"== {nb.name} ({args.profile})", flush=True)
        pm.execute_notebook(
            str(nb), str(out_dir / nb.name), parameters={"PROFILE": args.profile},
            cwd=str(nb.parent), kernel_name="python3", progress_bar=True,
        )
        timings[nb.stem] = round(time.perf_counter() - t0, 1)
        print(f"   {timings[nb.stem]:.0f} s", flush=True)
    timings["total"] = round(time.perf_counter() - start, 1)
    # a partial run's timings are not the artifact's: they go beside the executed copies (git-ignored)
    if args.only:
        path = out_dir / f"timings_partial_{args.profile}.json"
    elif args.profile == "full":
        path = ROOT / "results" / "timings_reproduce.json"
    else:
        path = ROOT / "results" / "quick" / "timings_reproduce_quick.json"
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(timings, indent=2) + "\n")
    if args.profile == "full" and not args.only:
        (ROOT / "results" / "provenance.json").write_text(json.dumps(origin, indent=2, sort_keys=True) + "\n")
    print(f"total {timings['total']:.0f} s -> {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
