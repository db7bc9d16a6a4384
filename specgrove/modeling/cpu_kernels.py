"""Route a loaded model's linear layers through the C++ CPU kernels (``specgrove/kernels/cpu_linear.py``):
bfloat16 weights as they are, or weight-only int8 (``quantization="int8"``); and its norms, SwiGLU
activations and RoPE through the fused element-wise kernels (``specgrove/kernels/cpu_elementwise.py``).

Applied once after loading, when the kernel backend is ``cpu`` and the model runs in bfloat16
with the weights in the checkpoint's [out, in] layout. Each linear gets a ``kernel`` object its
forward calls instead of the dense matmul. The kernel holds its own packed copy of the weight
(bf16, or int8 with per-channel scales), so the float parameter is replaced by an empty one and
the weights are not held twice; the LM head of a tied model is the exception: the embedding
lookup still reads that matrix, so it stays and the head's packed copy comes on top.
"""
from __future__ import annotations

import torch
from torch import nn

from specgrove.modeling.attention import PagedAttention
from specgrove.modeling.layers import RMSNorm
from specgrove.modeling.parallel import ColumnParallelLinear, ParallelLMHead, RowParallelLinear

QUANTIZATIONS = ("none", "int8")
_LINEARS = (ColumnParallelLinear, RowParallelLinear, ParallelLMHead)


def use_cpu_kernels(model: nn.Module, quantization: str = "none") -> int:
    """The linears (:func:`use_cpu_linears`) and the element-wise steps
    (:func:`use_cpu_elementwise`) of a bfloat16 model; returns how many modules got a kernel."""
    return use_cpu_linears(model, quantization) + use_cpu_elementwise(model)


def use_cpu_elementwise(model: nn.Module) -> int:
    """Fused bf16 RMSNorm, SiLU * up and RoPE for the modules that run in bfloat16; returns how
    many got one (none where the kernels did not build)."""
    from specgrove.kernels import cpu_elementwise as kernels
    from specgrove.modeling.llama import SwiGLU

    if not kernels.available():
        return 0
    count = 0
    for module in model.modules():
        if isinstance(module, RMSNorm) and module.weight.dtype == torch.bfloat16:
            module.fused = kernels.rms_norm
        elif isinstance(module, SwiGLU) and module.gate_up_proj.weight.dtype == torch.bfloat16:
            module.act = kernels.silu_mul
        elif isinstance(module, PagedAttention) and module.qkv_proj.weight.dtype == torch.bfloat16:
            module.rope = kernels.rope
        else:
            continue
        count += 1
    return count


def use_cpu_linears(model: nn.Module, quantization: str = "none") -> int:
    """Give every fitting linear of ``model`` a CPU kernel; returns how many got one."""
    from specgrove.kernels.cpu_linear import Bf16Linear, Int8Linear, available, fits

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; choose one of {QUANTIZATIONS}")
    if not available():
        if quantization == "int8":
            raise RuntimeError("int8 weights need the CPU kernels (a CPU with AVX2+FMA or AVX512_BF16 "
                               "and a C++ compiler)")
        return 0
    shared = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) or type(m).__name__ ==
              "VocabParallelEmbedding" for p in m.parameters()}
    count = 0
    for module in model.modules():
        if not isinstance(module, _LINEARS) or module.transposed or module.kernel is not None:
            continue
        weight = module.weight  # [out, in]
        if weight.dtype != torch.bfloat16 or not fits(weight.shape[1], weight.shape[0]):
            continue
        module.kernel = Int8Linear(weight) if quantization == "int8" else Bf16Linear(weight)
        if id(weight) not in shared:  # free the [out, in] copy: the kernel packed its own
            module.weight = nn.Parameter(torch.empty(0, dtype=weight.dtype), requires_grad=False)
        count += 1
    return count
