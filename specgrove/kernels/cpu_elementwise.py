"""The small bfloat16 ops around the matmuls on CPU, one pass each (``csrc/elementwise_cpu.cpp``):
a decoder layer's RMSNorm (Zhang & Sennrich 2019), SiLU(gate) * up of the SwiGLU MLP (Shazeer 2020)
and rotate-half RoPE (Su et al. 2021), and the greedy argmax over the logits, beside the torch
references they replace.

Why: in bfloat16 each of these is several torch ops (RMSNorm: widen, square, mean, rsqrt,
multiply, narrow, scale; RoPE: two halves, four products, a difference, a sum and a
concatenation), and on a small model at decode sizes each op costs a dispatch, an allocation
and a pass over memory for a few hundred elements. Measured on a 2-core Xeon (bfloat16, torch
2.13, per call): RMSNorm 16-22 us at 1 row and 26-34 us at 16, RoPE 13 / 23 us, SiLU * up 7 /
30 us; times 2 norms, 2 RoPEs and 1 SwiGLU per layer and 30 layers: 2.4 ms of a decode step,
4.5 ms of a 16-node verify. torch's bf16 argmax over 16 x 49152 logits took 1.4 ms (0.74 ms
through float32); two vectorised passes per row (max, then its first index) read them once or
twice from cache. On a 2-core AMD EPYC Zen 3, AVX2/FMA, no AVX-512, SiLU * up had no vector
path (the AVX-512 one needs AVX512_BF16; gcc left the scalar exp loop unvectorised): an 8-lane
AVX2 path takes a 16-row call from 182 to 35 us (5.5 -> 1.1 ms of a 16-node verify), and the
AVX2 argmax 16 x 49152 from 541 us to ~90 us (1 thread); RMSNorm and RoPE were already vectorised
by `omp simd` (3-8 us per call) and keep it.

Rounding: every bf16 torch op computes in float32 and rounds its result to bfloat16, so each
kernel rounds at the same points as the expression it replaces; results then agree to the last
bit, except where the float32 arithmetic itself differs (the order of RMSNorm's sum of squares,
the last ulp of ``exp``), which moves a result by at most one bf16 step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from specgrove.kernels.cpu_build import load_library


def available() -> bool:
    return load_library("elementwise_cpu")


# --- references: the torch expressions of specgrove.modeling (bfloat16 path) --------------------
def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    work = x.float()
    work = work * torch.rsqrt(work.pow(2).mean(-1, keepdim=True) + eps)
    return weight * work.to(x.dtype)


def silu_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:  # [..., 2I] -> [..., I]
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def rope_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on [T, H, D] with cos/sin [T, 1, D/2]."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


# --- kernels -------------------------------------------------------------------------------------
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:  # [..., H] bf16
    return torch.ops.specgrove_cpu_elementwise.rms_norm(x, weight, float(eps))


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:  # [..., 2I] bf16 -> [..., I]
    return torch.ops.specgrove_cpu_elementwise.silu_mul(gate_up)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """[T, H, D] bf16 (a view of the QKV output is fine) -> contiguous [T, H, D]."""
    return torch.ops.specgrove_cpu_elementwise.rope(x, cos, sin)


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """[N, V] -> [N] int64, torch.argmax(dim=-1)'s result: the kernel for bf16 CPU logits (where
    it built), torch otherwise."""
    if logits.dtype == torch.bfloat16 and logits.device.type == "cpu" and logits.dim() == 2 \
            and logits.shape[1] > 0 and available():
        return torch.ops.specgrove_cpu_elementwise.argmax_rows(logits)
    return logits.argmax(dim=-1)
