"""Run every numbered notebook in order with papermill and a given profile.

Executed copies go to results/executed/ (the sources stay clean); every table and figure is
rewritten by the notebooks themselves through anee.evaluation.results.

Order: the notebooks that demonstrate the shipped defaults (`AFTER_SHIPPING`: 01 and 09) read
`anee/defaults/`, which the full profile rebuilds from notebooks 02-06 (`tools/ship_defaults.py`),
so in the full profile they run after the others and after shipping. The quick profile never
ships (its checkpoints are trial-sized): its 01 and 09 use the committed defaults.

Full profile, also for a partial run (`--only`): results/provenance.json records, per notebook, the
commit it ran at and whether the code under anee/ and notebooks/ had uncommitted changes (then its
results cannot be traced to a commit); `make verify` warns when code changed after that commit.
Wall times per notebook go to results/timings_reproduce.json (merged per notebook: a partial run
replaces the entries of the notebooks it ran), the only file here allowed to differ between runs.
`--record-make-since EPOCH` (called by `make reproduce` after its benchmarks) writes the wall time of
the whole target, set-up included, to results/timings_reproduce_make.json, beside a probe of how fast
the instance is (`machine_probe`) and the allocator setting it ran with (the Makefile's `GLIBC_TUNABLES`).
The wall time of every code cell of a full-profile run goes to results/timings_reproduce_cells.json
(merged per notebook as well), to show where a notebook spends its time.
"""

from __future__ import annotations

import argparse
import json
import os
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
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # e.g. AVX2, AVX512: INT8 kernels differ by it
            **cpu_model()}


VECTOR_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_model(cpuinfo: str | None = None) -> dict:
    """The CPU's model name and which of `VECTOR_FLAGS` it has (from /proc/cpuinfo; {} where there is
    none): PyTorch's capability has no level above AVX512, so it cannot tell an AVX-512 instance with
    AMX from one without, and instance types differ in speed and in the last digits of float results."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        if not path.is_file():
            return {}
        cpuinfo = path.read_text()
    # the last processor's (all alike)
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    return {"cpu_model": fields.get("model name", ""), "cpu_flags": [f for f in VECTOR_FLAGS if f in flags]}


AFTER_SHIPPING = ("01", "09")  # notebooks that demonstrate anee/defaults/ (see the module docstring)
SHIPPED_FROM = ("02", "03", "04", "06")  # notebooks whose outputs tools/ship_defaults.py copies or reads


def run_order(notebooks: list[Path], profile: str) -> tuple[list[Path], list[Path]]:
    """(before shipping, after shipping): numeric order, and in the full profile `AFTER_SHIPPING` last."""
    if profile != "full":
        return notebooks, []
    later = [nb for nb in notebooks if nb.name[:2] in AFTER_SHIPPING]
    return [nb for nb in notebooks if nb not in later], later


def read_json(path: Path) -> dict:
    """The JSON object at `path`, or {} when there is none yet."""
    return json.loads(path.read_text()) if path.is_file() else {}


def ship_defaults() -> None:
    print("== tools/ship_defaults.py (full)", flush=True)
    subprocess.run([sys.executable, str(ROOT / "tools" / "ship_defaults.py")], check=True)


def cell_seconds(executed) -> list[dict]:
    """Wall time of every code cell of a papermill-executed notebook (its metadata.papermill.duration),
    with the cell's first source line to say which one it is."""
    rows = []
    for index, cell in enumerate(executed.cells):
        duration = cell.get("metadata", {}).get("papermill", {}).get("duration")
        if cell.cell_type == "code" and duration is not None:
            first = next((line for line in cell.source.splitlines() if line.strip()), "")
            rows.append({"cell": index, "seconds": round(float(duration), 1), "first_line": first[:100]})
    return rows


def record_cells(notebook: str, cells: list[dict], fresh: bool) -> None:
    """Per-cell wall times of one full-profile notebook, merged into timings_reproduce_cells.json."""
    path = ROOT / "results" / "timings_reproduce_cells.json"
    timed = ({} if fresh else read_json(path)) | {notebook: cells}
    path.write_text(json.dumps({k: timed[k] for k in sorted(timed)}, indent=1) + "\n")


def record_full_run(origin: dict, notebook: str, seconds: float, fresh: bool) -> None:
    """Record one finished notebook of a full-profile run in provenance.json and timings_reproduce.json
    at once (a later failure keeps the records of what finished). `fresh`: the first notebook of a
    complete run, whose records replace the old ones instead of updating them."""
    prov_path, time_path = ROOT / "results" / "provenance.json", ROOT / "results" / "timings_reproduce.json"
    run = {notebook: {"code_commit": origin["code_commit"], "code_dirty": origin["code_dirty"]}}
    machine = {k: v for k, v in origin.items() if k not in ("code_commit", "code_dirty")}
    record = dict(origin) if fresh else read_json(prov_path) | machine
    record["notebooks"] = run if fresh else record.get("notebooks", {}) | run
    record.pop("note", None)
    prov_path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    timed = {} if fresh else read_json(time_path)
    timed = {k: v for k, v in timed.items() if k not in ("total", "note")} | {notebook: seconds}
    timed = {k: timed[k] for k in sorted(timed)} | {"total": round(sum(timed.values()), 1)}
    time_path.write_text(json.dumps(timed, indent=2) + "\n")


PROBE = {"size": 1024, "reps": 40, "rounds": 5, "threads": 2}  # the fixed workload `make reproduce` times


def probe_description(size: int, reps: int, rounds: int, threads: int) -> str:
    return (f"seconds of a fixed fp32 workload ({reps} matmuls {size}x{size} at {threads} threads, "
            f"median of {rounds}): "
            "how fast this instance is")


def machine_probe(size: int = PROBE["size"], reps: int = PROBE["reps"], rounds: int = PROBE["rounds"],
                  threads: int = PROBE["threads"]) -> float:
    """Median seconds of `reps` fp32 matmuls of `size` x `size` at `threads` threads. Instances of the same
    kind differ by several per cent (make reproduce of one commit took 62 to 74 min), so a wall time is
    only comparable with the probe of its run beside it. Restores the thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(size, size, generator=torch.Generator().manual_seed(0))
        times = []
        for _ in range(rounds + 1):  # the first round warms up
            t0 = time.perf_counter()
            for _ in range(reps):
                a @ a
            times.append(time.perf_counter() - t0)
        return sorted(times[1:])[rounds // 2]
    finally:
        torch.set_num_threads(before)


def record_make_wall(since: float, now: float | None = None, probe: float | None = None) -> Path:
    """Wall time of `make reproduce` from `since` (seconds since the epoch, taken before its set-up),
    with the instance's `machine_probe` taken at the end of the run."""
    now = time.time() if now is None else now
    if not 0 <= now - since < 86400:
        raise ValueError(f"--record-make-since {since} is not a start time within the last day (now {now:.0f})")
    path = ROOT / "results" / "timings_reproduce_make.json"
    record = {"seconds": round(now - since, 1), "covers": "make reproduce: set-up, notebooks, "
              "shipped defaults, bench, int8_bench (not the README or verify)",
              # the Makefile's allocator setting: it changes the time
              "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}
    if probe is not None:
        record |= {"machine_probe_seconds": round(probe, 3), "machine_probe": probe_description(**PROBE)}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", choices=("quick", "full"), default="full")
    parser.add_argument("--only", nargs="*", default=None, help="notebook prefixes, e.g. 01 06")
    parser.add_argument("--record-make-since", type=float, default=None, metavar="EPOCH",
                        help="only record the wall time of make reproduce since EPOCH (see the module docstring)")
    args = parser.parse_args()
    if args.record_make_since is not None:
        now = time.time()  # the probe's own seconds are not the run's
        print(f"make reproduce: {record_make_wall(args.record_make_since, now, machine_probe()).read_text()}", end="")
        return 0
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
    before, after = run_order(notebooks, args.profile)
    ran = []

    def execute(nb: Path) -> None:
        t0 = time.perf_counter()
        print(f"== {nb.name} ({args.profile})", flush=True)
        executed = pm.execute_notebook(
            str(nb), str(out_dir / nb.name), parameters={"PROFILE": args.profile},
            cwd=str(nb.parent), kernel_name="python3", progress_bar=True,
        )
        timings[nb.stem] = round(time.perf_counter() - t0, 1)
        if args.profile == "full":  # per notebook: the commit it ran at, its wall times
            fresh = not args.only and not ran  # the first notebook of a complete run replaces the old records
            record_full_run(origin, nb.stem, timings[nb.stem], fresh=fresh)
            record_cells(nb.stem, cell_seconds(executed), fresh=fresh)
        ran.append(nb)
        print(f"   {timings[nb.stem]:.0f} s", flush=True)

    for nb in before:
        execute(nb)
    if args.profile == "full" and any(n.name[:2] in SHIPPED_FROM for n in ran):
        ship_defaults()
    for nb in after:
        execute(nb)
    elapsed = round(time.perf_counter() - start, 1)
    if args.profile == "full":
        path = ROOT / "results" / "timings_reproduce.json"
    else:
        timings["total"] = elapsed
        path = ROOT / "results" / "quick" / ("timings_reproduce_quick.json" if not args.only
                                             else f"timings_partial_{args.profile}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(timings, indent=2) + "\n")
    print(f"this run: {elapsed:.0f} s -> {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
