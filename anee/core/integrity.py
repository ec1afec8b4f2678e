"""Integrity of a folder of converted weights: a record written at conversion, checked on load.

`write_record` stores, in `anee-integrity.json` beside the weights, the size and sha256 of every
file of the folder (weights, config, tokenizer) and the model's parameter count. `verify_files`
checks the sizes on every load and the sha256 once per process per file state (path, size,
modification time); `check_weights` compares the parameter count and refuses non-finite weights on
every load.

Cost, measured on SmolLM2-135M (a 538 MB weights file, 4 MB of others) on the reference 2-core CPU,
one thread: the sha256 of every file 0.45 s idle, 0.5-0.7 s with the other core busy, once per
process (a later load: 0.3 ms); the finiteness check 0.06-0.09 s on every load (one sum per
parameter; the element-wise count runs only when a sum is not finite); record, sizes and parameter
count well under a millisecond. For scale, `from_pretrained` itself takes 0.2-0.5 s with the file
in the page cache and 2.7 s from disk: the first load in a process pays about twice the warm cost.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

RECORD = "anee-integrity.json"
FORMAT = "anee.weights-integrity/1"
_VERIFIED: set[tuple[str, int, int, str]] = set()  # (file, size, mtime_ns, sha256) already hashed in this process


class IntegrityError(ValueError):
    """Files that do not match their record, or non-finite weights; the message names the fix."""


def recorded_files(folder: Path) -> list[str]:
    """Names of the files of `folder` a record covers: every regular file but the record itself."""
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in (RECORD, f".{RECORD}.partial"))


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def write_record(folder: Path, parameters: int) -> None:
    """Hash the files of `folder` and write the record beside them (atomically)."""
    files = {}
    for name in recorded_files(folder):
        path = folder / name
        files[name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        _VERIFIED.add(_state(path, files[name]["sha256"]))
    tmp = folder / f".{RECORD}.partial"
    tmp.write_text(json.dumps({"format": FORMAT, "parameters": parameters, "files": files}, indent=1, sort_keys=True))
    os.replace(tmp, folder / RECORD)


def read_record(folder: Path, fix: str) -> dict | None:
    """The record of `folder` (None when it has none); IntegrityError naming `fix` if it is unreadable."""
    path = folder / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        ok = (record["format"] == FORMAT and _is_count(record["parameters"]) and isinstance(record["files"], dict)
              and all(_is_count(f["bytes"]) and isinstance(f["sha256"], str) for f in record["files"].values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise IntegrityError(f"{path} is not a valid integrity record ({type(e).__name__}: {e}); {fix}") from None
    if not ok:
        raise IntegrityError(f"{path} is not a valid integrity record (wrong format or field types); {fix}")
    return record


def files_complete(folder: Path, record: dict) -> bool:
    """Whether every recorded file is there with its recorded size, and no other one (cheap: stat only)."""
    files = record["files"]
    if recorded_files(folder) != sorted(files):
        return False
    return all((folder / name).stat().st_size == f["bytes"] for name, f in files.items())


def verify_files(folder: Path, record: dict, fix: str) -> None:
    """IntegrityError naming `fix` unless the files match the record (sha256 once per process)."""
    if not files_complete(folder, record):
        raise IntegrityError(f"{folder}: the files {recorded_files(folder)} are not the ones recorded at conversion "
                             f"({sorted(record['files'])}, with their sizes); {fix}")
    for name, f in record["files"].items():
        path = folder / name
        if _state(path, f["sha256"]) in _VERIFIED:
            continue
        if _sha256(path) != f["sha256"]:
            raise IntegrityError(f"{path} does not match the sha256 recorded at conversion: "
                                 f"it changed on disk since; {fix}")
        _VERIFIED.add(_state(path, f["sha256"]))


def check_weights(model: torch.nn.Module, where: str, fix: str, parameters: int | None = None) -> None:
    """IntegrityError naming `fix` if the model has another parameter count than recorded, or a non-finite weight."""
    count = parameter_count(model)
    if parameters is not None and count != parameters:
        raise IntegrityError(f"{where}: the model has {count:,} parameters, "
                             f"{parameters:,} were recorded at conversion; {fix}")
    suspect = [(name, p) for name, p in model.named_parameters()
               if p.is_floating_point() and not torch.isfinite(p.detach().sum())]
    bad = {name: int((~torch.isfinite(p.detach())).sum()) for name, p in suspect}
    bad = {name: n for name, n in bad.items() if n}  # a sum can also overflow with finite values only
    if bad:
        raise IntegrityError(f"{where}: {sum(bad.values()):,} non-finite weights in {len(bad)} tensors (first: "
                             f"{next(iter(bad))}); the weights are corrupt; {fix}")


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _state(path: Path, sha: str) -> tuple[str, int, int, str]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns, sha


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
