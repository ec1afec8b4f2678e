"""One reading of device and dtype names ("auto" = CUDA when available), and clocks that wait for the device."""

from __future__ import annotations

import time

import pytest
import torch

from anee.core.devices import model_device, resolve_device, resolve_dtype, synchronize
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
