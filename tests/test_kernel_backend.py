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


@pytest.mark.parametrize("native,kernels,backend,want", [
    (True, False, "auto", "bfloat16"),  # AVX512_BF16 / AMX: bf16 whatever the kernels
    (False, True, "auto", "bfloat16"),  # AVX2 + FMA with the C++ kernels: bf16 weights, float32 FMAs
    (False, True, "cpu", "bfloat16"),
    (False, True, "torch", "float32"),  # no kernels asked for: torch's bf16 matmuls are slow there
    (False, False, "auto", "float32"),  # the kernels did not build
])
def test_auto_dtype_on_cpu(monkeypatch, native, kernels, backend, want):
    from specgrove.config import ModelRunConfig
    from specgrove.kernels import cpu_attention, cpu_build, cpu_linear

    monkeypatch.delenv("SPECGROVE_KERNEL_BACKEND", raising=False)
    monkeypatch.setattr(cpu_build, "has_native_bf16", lambda: native)
    monkeypatch.setattr(cpu_linear, "available", lambda: kernels)
    monkeypatch.setattr(cpu_attention, "available", lambda: kernels)
    assert ModelRunConfig("m", device="cpu", kernel_backend=backend).dtype_name == want
    monkeypatch.setenv("SPECGROVE_KERNEL_BACKEND", "torch")  # the environment's backend counts
    assert ModelRunConfig("m", device="cpu", kernel_backend=backend).dtype_name == (
        "bfloat16" if native else "float32")
