"""Where the model runs and in what precision: one reading of "auto", "cuda", "float16", ... for the
notebooks (`DEVICE`, `DTYPE`), the command line (`--device`, `--dtype`), `ANEEConfig` and `load_model`.

"auto" is CUDA when torch sees a GPU, else the CPU. Every tensor the package creates next to model
tensors takes its device from them (never a hard-coded one), so a model moved to a GPU keeps its
whole run there; timings synchronise the device before reading a clock (`anee.core.timing`).
"""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda", "mps")  # plus "cuda:<index>"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """A torch.device: "auto" -> CUDA when available, else CPU; a named device must be available,
    else ValueError saying which ones are."""
    if isinstance(device, torch.device):
        name = str(device)
    elif isinstance(device, str):
        name = device.strip().lower()
    else:
        raise TypeError(f"device must be a str such as 'auto', 'cpu' or 'cuda', got {type(device).__name__} {device!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind = name.split(":", 1)[0]
    if kind not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES} or 'cuda:<index>', got {device!r}")
    try:
        resolved = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device {device!r} is not a valid torch device ({e}); use 'auto', 'cpu' or 'cuda'") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA GPU (torch {torch.__version__}); "
                         "use device='auto' or 'cpu', or install a CUDA build of torch")
    if kind == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} asked for, but MPS is not available here; use 'auto' or 'cpu'")
    return resolved


def resolve_dtype(dtype: str | torch.dtype = "float32") -> torch.dtype:
    """A floating torch.dtype from a name in `DTYPES` (or a torch.dtype among them)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype}")
        return dtype
    if not isinstance(dtype, str):
        raise TypeError(f"dtype must be a name such as 'float32' or a torch.dtype, "
                        f"got {type(dtype).__name__} {dtype!r}")
    name = dtype.strip().lower().removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[name]


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's parameters (the CPU for a model without any)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued GPU work (CUDA kernels run asynchronously, so a clock read without this measures
    only the launch); a no-op on the CPU and when CUDA was never initialised."""
    if device is not None and torch.device(device).type != "cuda":
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
