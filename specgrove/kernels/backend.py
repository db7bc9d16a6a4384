"""Kernel backend, chosen once at start-up.

``torch`` runs the plain references (any device, any dtype); ``triton`` runs the Triton kernels
(CUDA, or CPU under ``TRITON_INTERPRET=1``); ``cpu`` runs the C++ CPU kernels (paged tree
attention, and -- in bfloat16 -- the small-M linears, see ``specgrove.modeling.cpu_kernels``),
built at first use. ``auto`` picks Triton on CUDA devices when it is importable, the CPU
kernels on CPU when they build, the references otherwise. ``SPECGROVE_KERNEL_BACKEND``
overrides the configured name.
Call sites receive a :class:`KernelBackend` and never branch on the device.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from specgrove.kernels.paged_kv import commit_kv_ref, write_kv_ref
from specgrove.kernels.tree_attention import tree_attention_ref

BACKEND_NAMES = ("auto", "torch", "triton", "cpu")
ENV_VAR = "SPECGROVE_KERNEL_BACKEND"


@dataclass(frozen=True)
class KernelBackend:
    name: str
    tree_attention: Callable[..., torch.Tensor]
    write_kv: Callable[..., None]
    commit_kv: Callable[..., None]


def _torch_backend() -> KernelBackend:
    return KernelBackend("torch", tree_attention_ref, write_kv_ref, commit_kv_ref)


def _triton_backend(device: torch.device) -> KernelBackend:
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            f"the triton kernel backend needs a CUDA device; on {device.type} set "
            "TRITON_INTERPRET=1 (before start-up) to run it under Triton's interpreter"
        )
    try:
        from specgrove.kernels.paged_kv import commit_kv, write_kv  # type: ignore[attr-defined]
        from specgrove.kernels.tree_attention import tree_attention  # type: ignore[attr-defined]
    except ImportError as exc:  # triton missing or kernels not built in this version
        raise RuntimeError(f"the triton kernel backend is not available: {exc}") from exc
    return KernelBackend("triton", tree_attention, write_kv, commit_kv)


def _cpu_backend(device: torch.device) -> KernelBackend:
    from specgrove.kernels import cpu_attention

    if device.type != "cpu":
        raise RuntimeError(f"the cpu kernel backend runs on the CPU, not {device.type}")
    if not cpu_attention.available():
        raise RuntimeError("the cpu kernel backend did not build (see the warning above)")
    return KernelBackend("cpu", cpu_attention.tree_attention_cpu, write_kv_ref, commit_kv_ref)


def select_backend(name: str, device: torch.device) -> KernelBackend:
    """Resolve a backend name (possibly overridden by the environment) for ``device``."""
    name = os.environ.get(ENV_VAR, name) or "auto"
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {BACKEND_NAMES}")
    if name == "torch":
        return _torch_backend()
    if name == "triton":
        return _triton_backend(device)
    if name == "cpu":
        return _cpu_backend(device)
    try:
        return _triton_backend(device) if device.type == "cuda" else _cpu_backend(device)
    except RuntimeError:
        return _torch_backend()
