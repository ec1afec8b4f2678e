"""How much the Makefile's allocator setting (`GLIBC_TUNABLES`) speeds up the notebooks' typical work.

Why it helps: a full-vocabulary logit tensor (2 x 512 tokens x 49,152 x 4 bytes = 201 MB) is far
above glibc's largest mmap threshold (32 MB), so by default every such tensor is mapped fresh and
returned on free, and the next one page-faults all of its pages in again: a fifth to a third of the
CPU time of this workload was the kernel's (minor faults), not PyTorch's, in runs on one instance.
With mmap off and no trim, freed memory stays in the heap and is reused. The arithmetic is the same,
so the numbers are too; this bench checks that (the workload's KL, bit for bit) beside the speed.

Workload: two forward passes of 2 x 512 valid tokens through the embedded model with logits and the
per-token KL between them, three times, in a fresh process per run; runs with and without the setting
alternate (`--reps` each) and the ratio of median wall times is the speed-up. Writes
results/timings_malloc.json. Run it through make (`make bench-malloc`), which sets `GLIBC_TUNABLES`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker() -> dict:
    import torch

    from anee import AdaptiveExecutor, adapter_for, load_model
    from anee.core.data import VALID_BYPASS_CHOICE, span_windows, wikitext_tokens
    from anee.core.divergence import token_kl
    from anee.evaluation.notebook import setup

    setup("full", 0)
    model, tokenizer = load_model("smollm2-135m")
    executor = AdaptiveExecutor(adapter_for(model))
    windows = span_windows(wikitext_tokens(tokenizer, "valid", VALID_BYPASS_CHOICE.stop), VALID_BYPASS_CHOICE, 4, 512)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    with torch.no_grad():
        for _ in range(3):
            a, b = executor.forward(windows[:2]).logits, executor.forward(windows[2:]).logits
            kl = token_kl(a, b).mean()
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return {"wall": wall, "user": r1.ru_utime - r0.ru_utime, "sys": r1.ru_stime - r0.ru_stime,
            "minor_faults": r1.ru_minflt - r0.ru_minflt, "kl_hex": float(kl).hex()}


def run(tunables: str | None) -> dict:
    """One worker in a fresh process, with `tunables` as its GLIBC_TUNABLES (None: glibc's defaults)."""
    env = ({k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
           | ({"GLIBC_TUNABLES": tunables} if tunables else {}))
    done = subprocess.run([sys.executable, __file__, "--worker"], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the bench's worker failed (GLIBC_TUNABLES={tunables!r}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(runs: dict[str, list[dict]], tunables: str) -> dict:
    """The record of `runs` {"default": [...], "tuned": [...]}: medians, the speed-up of the median wall
    time, and a refusal if the setting changed the workload's result."""
    values = {r["kl_hex"] for rs in runs.values() for r in rs}
    if len(values) != 1:
        raise SystemExit(f"the allocator setting changed the workload's result: {sorted(values)}")
    median = {name: {key: statistics.median(r[key] for r in rs) for key in ("wall", "user", "sys", "minor_faults")}
              for name, rs in runs.items()}
    return {"glibc_tunables": tunables, "reps": len(runs["tuned"]), "median": median,
            "speedup": round(median["default"]["wall"] / median["tuned"]["wall"], 3), "same_result": True,
            "runs": runs, "workload": "3 x (2 forward passes of 2 x 512 valid tokens with logits + per-token KL), "
            "embedded model, 2 threads, one fresh process per run"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker()))
        return 0
    tunables = os.environ.get("GLIBC_TUNABLES")
    if not tunables:
        raise SystemExit("GLIBC_TUNABLES is not set: run `make bench-malloc` (the Makefile sets it)")
    runs = {"default": [], "tuned": []}
    for _ in range(args.reps):  # alternate, so that a drift of the instance's speed hits both alike
        runs["default"].append(run(None))
        runs["tuned"].append(run(tunables))
    record = summarize(runs, tunables)
    median = record["median"]
    path = ROOT / "results" / "timings_malloc.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"allocator setting: {record['speedup']}x faster (median wall {median['default']['wall']:.2f} s -> "
          f"{median['tuned']['wall']:.2f} s; sys {median['default']['sys']:.2f} -> {median['tuned']['sys']:.2f} s); "
          f"same result bit for bit; {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
