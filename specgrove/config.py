"""Small frozen configuration objects shared by the services and the CLI, validated once.

Torch-free: the gateway, ``specgrove up`` and ``specgrove trace`` import this module without
loading torch; the torch objects (``torch_dtype``, ``torch_device``) are resolved on access.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from specgrove.errors import InvalidRequest
from specgrove.kv import KVCacheConfig
from specgrove.tree import parse_branching
from specgrove.types import TreeBudget

DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")
QUANTIZATIONS = ("none", "int8")


def auto_cpu_dtype(kernel_backend: str = "auto") -> str:
    """What ``--dtype auto`` runs on a CPU: bfloat16 where it is fast, else float32.

    bfloat16 is fast where the CPU computes it natively (AVX512_BF16 or AMX), and on AVX2 + FMA
    CPUs with the C++ kernels (``--kernels auto`` or ``cpu``): their linears keep the weights in
    bfloat16 and multiply in float32 registers, half the bytes per step of float32 weights
    (a 16-node verify of SmolLM2-135M on a 2-core Zen 3: 110 ms against 228 in float32). Without
    the kernels, torch's bfloat16 matmuls on such CPUs are slower than float32 ones.
    """
    from specgrove.kernels.cpu_build import has_native_bf16

    if has_native_bf16():
        return "bfloat16"
    from specgrove.kernels.backend import ENV_VAR

    if (os.environ.get(ENV_VAR, kernel_backend) or "auto") in ("auto", "cpu"):
        from specgrove.kernels import cpu_attention, cpu_linear

        if cpu_linear.available() and cpu_attention.available():
            return "bfloat16"
    return "float32"


@dataclass(frozen=True)
class ModelRunConfig:
    """Which checkpoint, in which precision, on which device, with which kernels and KV size."""

    model: str
    dtype: str = "auto"  # auto: bfloat16 on GPUs, on CPUs as auto_cpu_dtype says
    device: str = "auto"
    kernel_backend: str = "auto"
    kv: KVCacheConfig = KVCacheConfig()
    transposed: bool | None = None  # weight layout; None = the loader's default for the device
    quantization: str = "none"  # "int8": weight-only int8 linears (CPU kernels)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise InvalidRequest("dtype", f"{self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.quantization not in QUANTIZATIONS:
            raise InvalidRequest("quantization", f"{self.quantization!r} is not one of {', '.join(QUANTIZATIONS)}")

    @property
    def dtype_name(self) -> str:
        """The dtype actually used (``auto`` resolved for this machine)."""
        if self.dtype != "auto":
            return self.dtype
        if self.torch_device.type != "cpu":
            return "bfloat16"
        return auto_cpu_dtype(self.kernel_backend)

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype_name)

    @property
    def torch_device(self):
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


def parse_tree_option(text: str) -> TreeBudget:
    """The one tree syntax of every entry point (CLI, REST string, docs): ``NODES:DEPTH[:TOP_K]``
    (dynamic, EAGLE-2; TOP_K 4 by default) or a static shape ``4,2,2,1`` (a lone ``4`` is static)."""
    if ":" not in text:
        return TreeBudget(branching=parse_branching(text))
    try:
        parts = [int(x) for x in text.split(":")]
    except ValueError:
        parts = []
    if len(parts) not in (2, 3):
        raise InvalidRequest("tree", f"expected NODES:DEPTH[:TOP_K] or a shape like 4,2,2,1; got {text!r}")
    return TreeBudget(max_nodes=parts[0], max_depth=parts[1], top_k=parts[2] if len(parts) == 3 else 4)


def parse_drafter_option(text: str) -> tuple[str, str]:
    """The one drafter syntax of every entry point: ``NAME=KIND[:SPEC]`` -> (name, spec).
    ``KIND[:SPEC]`` alone is named after its kind (``--drafter ngram`` is ``ngram=ngram``). A
    name holds no ``:``, so ``suffix:budget=0`` is a spec (its options use ``=``), not a name."""
    name, sep, spec = text.partition("=")
    if not sep or ":" in name:
        name, spec = text.partition(":")[0], text
    if not name or not spec:
        raise InvalidRequest("drafter", f"expected [NAME=]KIND[:SPEC], got {text!r}")
    return name, spec

