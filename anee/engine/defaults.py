"""What the ANEE controllers need, found, checked and turned into a controller: a *defaults folder*.

A defaults folder holds the files of one model's methods and a `manifest.json` that describes them:

    manifest.json          format, the model it is for, the default method, the layer plan, the
                           sha256 and size of every file, and where the files come from
    profiler.safetensors   the profiler (shortlist entropy, layer importance: Block Influence or
                           a searched removal order's positions, as notebook 02 chose)
    bypass.safetensors     the layer bypass (optional: without it skipped layers add nothing)
    warmstart.safetensors  the warm-started policy (optional; its layer plan inside)
    rl.safetensors         the REINFORCE policy (optional)

Two kinds exist. *Shipped* folders live in the package (`anee/defaults/<model name>/`, package
data) and are copied from a notebook run by `tools/ship_defaults.py`; the manifest names the
profile, the notebooks and the commit they come from. *Calibrated* folders are written by
`anee.calibrate` for any other model (profiler and bypass only: the heuristic is their method).

`load_defaults(model_name)` finds the shipped folder of a model, `load_defaults(model_name, folder)`
a given one; both check every file against the manifest (size and sha256: ~30 ms for the 9 MB of
SmolLM2's) before anything is loaded, and the checkpoints check themselves again on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..core.bypass import BypassBank, check_same_bypass
from ..core.devices import model_device
from .controllers.base import Controller
from .controllers.heuristic import HeuristicController
from .controllers.learned import load_controller
from .controllers.plan import PlanConfig
from .profiler import Profiler

FORMAT = "anee.defaults/1"
MANIFEST = "manifest.json"
PROFILER_FILE = "profiler.safetensors"
BYPASS_FILE = "bypass.safetensors"
POLICY_FILES = {"warmstart": "warmstart.safetensors", "rl": "rl.safetensors"}
FILES = (PROFILER_FILE, BYPASS_FILE, *POLICY_FILES.values())
METHODS = ("heuristic", "warmstart", "rl")  # what a defaults folder can run (and name as its default)
MAX_SHIPPED_BYTES = 10_000_000  # the package's shipped files, all models together (10 MB)
MODEL_KEYS = ("model_type", "num_layers", "hidden", "vocab")


def shipped_root() -> Path:
    """The package-data folder of the shipped defaults (`anee/defaults/`)."""
    return Path(str(resources.files("anee"))) / "defaults"


def shipped_models() -> list[str]:
    """Names of the models that have shipped defaults."""
    root = shipped_root()
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST).is_file()) if root.is_dir() else []


def model_fingerprint(adapter, name: str) -> dict:
    """What a defaults folder records of its model, and checks against the model it is given."""
    d = adapter.dims
    return {"name": name, "model_type": str(adapter.model.config.model_type), "num_layers": d.num_layers,
            "hidden": d.hidden, "vocab": d.vocab}


def file_record(path: Path) -> dict:
    """Size and sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def write_manifest(folder: Path, manifest: dict) -> Path:
    """Hash the folder's method files into `manifest["files"]` and write the manifest atomically
    (a crash leaves the old manifest or none, never half of one)."""
    folder = Path(folder)
    files = {name: file_record(folder / name) for name in FILES if (folder / name).is_file()}
    manifest = {**manifest, "format": FORMAT, "files": files, "total_bytes": sum(f["bytes"] for f in files.values())}
    check_manifest(manifest, folder / MANIFEST)
    path, tmp = folder / MANIFEST, folder / f".{MANIFEST}.partial"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def check_manifest(manifest, where: Path) -> dict:
    """ValueError naming `where` unless the manifest has the format, a model description, a known
    default method whose files are listed, a plan and well-formed file records."""
    def bad(why: str) -> ValueError:
        return ValueError(f"{where}: {why}; rebuild the folder (tools/ship_defaults.py for shipped defaults, "
                          "anee.calibrate for your own)")

    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise bad("not an anee defaults manifest "
                  f"(format {manifest.get('format') if isinstance(manifest, dict) else None!r}, expected {FORMAT!r})")
    model = manifest.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str) or not all(k in model for k in MODEL_KEYS):
        raise bad(f"'model' must describe the model ({', '.join(('name',) + MODEL_KEYS)})")
    files = manifest.get("files")
    if not isinstance(files, dict) or not set(files) <= set(FILES) or not all(
            isinstance(f, dict) and isinstance(f.get("sha256"), str) and isinstance(f.get("bytes"), int)
            for f in files.values()):
        raise bad(f"'files' must map some of {FILES} to their sha256 and bytes")
    if PROFILER_FILE not in files:
        raise bad(f"{PROFILER_FILE} is missing: every method needs the profiler")
    method = manifest.get("method")
    if method not in METHODS:
        raise bad(f"'method' must be one of {METHODS}, got {method!r}")
    if method in POLICY_FILES and POLICY_FILES[method] not in files:
        raise bad(f"the default method {method!r} needs {POLICY_FILES[method]}, which is not listed")
    try:
        PlanConfig(**manifest.get("plan", {}))
    except (TypeError, ValueError) as e:
        raise bad(f"'plan' is not a layer plan ({e})") from None
    return manifest


@dataclass
class Defaults:
    """A checked defaults folder: its manifest, and the methods it can run."""

    folder: Path
    manifest: dict

    @property
    def method(self) -> str:
        """The default method ("heuristic", "warmstart" or "rl")."""
        return self.manifest["method"]

    @property
    def plan(self) -> PlanConfig:
        """The heuristic's layer plan (the learned controllers carry their own, the same when shipped)."""
        return PlanConfig(**self.manifest.get("plan", {}))

    @property
    def methods(self) -> tuple[str, ...]:
        """Methods whose files this folder holds."""
        files = self.manifest["files"]
        return tuple(m for m in METHODS if m == "heuristic" or POLICY_FILES[m] in files)

    def resolve(self, controller: str) -> str:
        """The method an `ANEEConfig.controller` name runs here ("default": the manifest's)."""
        method = self.method if controller == "default" else controller
        if method not in self.methods:
            raise ValueError(f"{self.folder} has no {method!r} controller (it holds {', '.join(self.methods)}): "
                             f"choose one of those, or 'budget' / 'full'")
        return method

    def check_model(self, adapter) -> None:
        """ValueError unless the model has the depth, width, vocabulary and type these files are for."""
        want = self.manifest["model"]
        got = model_fingerprint(adapter, want["name"])
        wrong = [f"{k} {got[k]!r} (files: {want[k]!r})" for k in MODEL_KEYS if got[k] != want[k]]
        if wrong:
            raise ValueError(f"the defaults in {self.folder} are for {want['name']!r}, but this model differs: "
                             f"{', '.join(wrong)}. Set ANEEConfig(model_name=...) to the model you pass, or "
                             "build its own with anee.calibrate and point ANEEConfig(defaults_dir=...) at that folder")

    def bypass(self, adapter) -> BypassBank | None:
        """The layer bypass on the model's device (None when the folder has none)."""
        if BYPASS_FILE not in self.manifest["files"]:
            return None
        bank = BypassBank.from_checkpoint(self.folder / BYPASS_FILE, adapter.dims.hidden, adapter.num_layers)
        # float32 weights: the bypass computes in float32 at any model dtype
        return bank.to(model_device(adapter.model))

    def profiler(self, executor) -> Profiler:
        """The profiler bound to `executor` (its costs, bypass included, set the plans)."""
        return Profiler.from_checkpoint(self.folder / PROFILER_FILE, executor)

    def controller(self, method: str, executor) -> Controller:
        """The controller of `method` (after `resolve`) on `executor`."""
        profiler = self.profiler(executor)
        if method == "heuristic":
            return HeuristicController(profiler, plan=self.plan)
        path = self.folder / POLICY_FILES[method]
        controller = load_controller(path, profiler)
        check_same_bypass(controller.policy.trained_for.get("bypass"), executor.bypass, str(path),
                          "use the folder's own bypass (pass no bypass= to ANEEWrapper)")
        controller.policy.to(model_device(executor.adapter.model))
        return controller


@contextmanager
def folder_writer(out: str | Path) -> Iterator[Path]:
    """Write a defaults folder atomically: yields an empty temporary folder next to `out`; when the
    block ends without error it replaces `out` in one rename (a crash or an error leaves the old
    folder, or none, never half of one). Refuses an `out` that holds anything but a defaults folder."""
    out = Path(out).expanduser().absolute()
    if out.exists() and not (out.is_dir() and ((out / MANIFEST).is_file() or not any(out.iterdir()))):
        raise ValueError(f"{out} exists and is not a defaults folder: choose another out= (it is replaced as a whole)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the folder is meant to be read by others (package data)
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    try:
        yield tmp
        if out.exists():
            os.replace(out, old)  # a directory cannot be renamed onto a non-empty one: move the old aside first
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def read_defaults(folder: str | Path) -> Defaults:
    """The defaults folder `folder`, its manifest and every listed file checked (size, sha256)."""
    folder = Path(folder).expanduser()
    path = folder / MANIFEST
    if not path.is_file():
        raise ValueError(f"{folder} is not a defaults folder (no {MANIFEST}); write one with "
                         f"anee.calibrate(model, tokenizer, text, out='{folder}') or `python -m anee calibrate`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({type(e).__name__}: {e}); rebuild the folder") from None
    check_manifest(manifest, path)
    for name, record in manifest["files"].items():
        file = folder / name
        if not file.is_file():
            raise ValueError(f"{file} is listed in {path} but missing; "
                             "rebuild the folder (or reinstall the package for shipped defaults)")
        if file.stat().st_size != record["bytes"] or file_record(file)["sha256"] != record["sha256"]:
            raise ValueError(f"{file} does not match the size / sha256 in {path} (damaged or replaced); "
                             "rebuild the folder (or reinstall the package for shipped defaults)")
    return Defaults(folder, manifest)


def load_defaults(model_name: str, folder: str | Path | None = None) -> Defaults | None:
    """The checked defaults folder `folder`, else the shipped one of `model_name` (None: there is none)."""
    if folder is not None:
        return read_defaults(folder)
    shipped = shipped_root() / model_name
    return read_defaults(shipped) if (shipped / MANIFEST).is_file() else None


def missing_defaults(model_name: str, controller: str) -> str:
    """What to run when a controller needs a defaults folder and `model_name` has none."""
    shipped = ", ".join(repr(m) for m in shipped_models()) or "none"
    out = f"anee-{_slug(model_name)}"
    return (f"controller={controller!r} needs a profiler (and a layer bypass) for {model_name!r}, "
            f"and no defaults are shipped for it (shipped: {shipped}). "
            f"Build them once with anee.calibrate(model, tokenizer, text, out={out!r}) "
            f"(or `python -m anee calibrate --model {model_name} --out {out}`), then pass "
            f"ANEEConfig(defaults_dir={out!r}); or choose controller='budget' or 'full', which need nothing.")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-.") or "model"
