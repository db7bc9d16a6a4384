"""The kernel backend is chosen once, from the configured name, the environment and the device."""
from __future__ import annotations

import pytest


def test_backend_choice(monkeypatch):
    import torch

    from specgrove.kernels.backend import select_backend

    cpu = torch.device("cpu")
    from specgrove.kernels import cpu_attention

    # auto on CPU: the C++ kernels where they build, else the references
    assert select_backend("auto", cpu).name == ("cpu" if cpu_attention.available() else "torch")
    monkeypatch.setenv("SPECGROVE_KERNEL_BACKEND", "torch")
    assert select_backend("triton", cpu).name == "torch"  # the environment overrides config
    monkeypatch.setenv("SPECGROVE_KERNEL_BACKEND", "cuda-magic")
    with pytest.raises(ValueError, match="unknown kernel backend"):
        select_backend("auto", cpu)
    monkeypatch.delenv("SPECGROVE_KERNEL_BACKEND")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        select_backend("triton", cpu)
