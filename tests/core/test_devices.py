"""One reading of device and dtype names ("auto" = CUDA when available), and clocks that wait for the device."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import VOCAB, tiny_llama, wrap

from anee import AdaptiveExecutor, adapter_for
from anee.core.actions import PROCESS
from anee.core.devices import model_device, resolve_device, resolve_dtype, synchronize
from anee.core.loading import load_model
from anee.core.timing import Stopwatch


def test_auto_is_cuda_when_available_else_cpu():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(" CPU ") == resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_missing_gpu_is_named():
    with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
        resolve_device("cuda")


def test_wrong_device_and_dtype_names():
    with pytest.raises(ValueError, match="device must be one of"):
        resolve_device("tpu")
    with pytest.raises(TypeError, match="device must be a str"):
        resolve_device(0)
    assert resolve_dtype("torch.float16") == resolve_dtype(torch.float16) == torch.float16
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("int8")
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype(torch.int64)


def test_model_device_and_stopwatch():
    assert model_device(torch.nn.Linear(2, 2)) == model_device(torch.nn.ReLU()) == torch.device("cpu")
    synchronize("cpu")
    with Stopwatch() as clock:
        time.sleep(0.01)
    assert clock.seconds >= 0.01


def test_auto_device_runs_the_executor_and_wrapper_where_the_model_is():
    """The path a notebook with DEVICE = "auto" takes: the model on `resolve_device("auto")` (CUDA iff
    torch sees a GPU; on a CPU-only machine this is the CPU branch), full compute equal to HF's logits
    and every output on that device, through the executor and through the wrapper."""
    device = resolve_device("auto")
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    model = tiny_llama().to(device)
    assert model_device(model) == device
    ids = torch.randint(2, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        reference = model(ids).logits
    out = AdaptiveExecutor(adapter_for(model)).forward(ids)
    wrapped = wrap(model, energy_budget=1.0)(ids)
    for result in (out, wrapped):
        assert result.logits.device.type == device.type and result.trace.decisions.device.type == device.type
        torch.testing.assert_close(result.logits, reference, atol=1e-5, rtol=0)
        assert (result.trace.decisions == PROCESS).all()
    half = wrap(model, energy_budget=0.5)  # the budget controller's bookkeeping stays on the device too
    adaptive = half(ids)
    assert adaptive.logits.device.type == device.type and (adaptive.trace.decisions != PROCESS).any()
    assert adaptive.trace.cost(half.executor.cost).layer_fraction <= 0.5 + 1e-6


@pytest.mark.parametrize(("device", "dtype", "match"), [("auto", "float64", "dtype must be one of"),
                                                         ("auto", "fp16", "dtype must be one of"),
                                                         ("gpu", "float32", "device must be one of")])
def test_notebook_parameters_are_checked_before_loading(device, dtype, match):
    """A notebook's `load_model(MODEL, device=DEVICE, dtype=DTYPE)` with a bad DEVICE or DTYPE fails at
    once with a ValueError naming the accepted values (before any file is read)."""
    with pytest.raises(ValueError, match=match):
        load_model("no-such-model-anywhere", device=device, dtype=dtype)
