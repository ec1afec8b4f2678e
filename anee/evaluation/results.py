"""The one place that writes results (CSV/JSON) and saves figures.

`full` profile outputs go to `results/` and `figures/` at the repository root (the files the README
embeds); `quick` outputs (CI, nbval) go to `results/quick/` and `figures/quick/`, which git ignores,
so running the tests never overwrites the reported numbers. `ANEE_OUTPUT_ROOT` overrides the root.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

PROFILES = ("quick", "full")


def repo_root() -> Path:
    """The checkout this package lives in (folder with pyproject.toml), else the working directory."""
    if "ANEE_OUTPUT_ROOT" in os.environ:
        return Path(os.environ["ANEE_OUTPUT_ROOT"])
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file() and (parent / "anee").is_dir():
            return parent
    return Path.cwd()


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"PROFILE must be one of {PROFILES}, got {profile!r}")
    return profile


def output_dir(kind: str, profile: str) -> Path:
    """`results` or `figures` folder for a profile, created on demand."""
    check_profile(profile)
    path = repo_root() / kind / ("quick" if profile == "quick" else "")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _atomic_write(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def save_table(df, name: str, profile: str, float_format: str = "%.6g") -> Path:
    """Write a pandas DataFrame as `results/<name>.csv` with fixed float formatting (byte-stable)."""
    path = output_dir("results", profile) / f"{name}.csv"
    return _atomic_write(path, df.to_csv(index=False, float_format=float_format, lineterminator="\n"))


def save_json(obj: Any, name: str, profile: str) -> Path:
    """Write `results/<name>.json`, floats rounded to 6 significant digits, keys sorted."""
    path = output_dir("results", profile) / f"{name}.json"
    return _atomic_write(path, json.dumps(_round(obj), indent=2, sort_keys=True) + "\n")


def load_json(name: str, profile: str) -> Any:
    return json.loads((output_dir("results", profile) / f"{name}.json").read_text())


def save_figure(fig, name: str, profile: str, dpi: int = 120) -> Path:
    """Save a matplotlib figure as `figures/<name>.png` (no timestamp metadata, so reruns match)."""
    return save_png(fig, output_dir("figures", profile) / f"{name}.png", dpi)


def save_png(fig, path: str | Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure as a PNG at `path`, atomically, without timestamp metadata."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial.png")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    os.replace(tmp, path)
    return path


def _round(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if (math.isnan(obj) or math.isinf(obj) or obj == 0) else float(f"{obj:.6g}")
    if isinstance(obj, dict):
        return {str(k): _round(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_round(v) for v in obj]
    return obj
