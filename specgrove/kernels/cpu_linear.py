"""Small-M CPU linears for decoding: bfloat16 weights, and weight-only int8 weights
(``csrc/linear_cpu.cpp``), plus the plain-torch references they are tested against.

``y[M, N] = x[M, K] @ W[N, K]^T`` for the few rows of a decode step (M = 1) or a tree verify
(M = 16..32). oneDNN's bfloat16 GEMV streams ~12 GB/s of weights on this project's 2-core EPYC
while the memory system delivers ~45 GB/s. Both kernels use the AVX512_BF16 dot product
VDPBF16PS (16 lanes x 2 bf16 products accumulated in float32; Intel SDM, "VDPBF16PS"), so
products are exact and sums float32, as in a bf16 GEMM with float32 accumulation. A thread owns
a range of output features; 4 weight rows are applied to every activation row before moving
on, so each weight byte is read from memory once per call whatever M is.

Weight-only int8 (``--quantization int8``): symmetric per-output-channel scales,
``w ~= q * s`` with ``q`` in [-127, 127] and ``s = max|w_row| / 127``; each 4-row block of
``q`` is widened to bfloat16 in L1 (exact for |q| <= 127) and the bf16 micro-kernel runs,
``y = (x @ q^T) * s``. Activations stay bfloat16: per-tensor activation quantisation (fbgemm's
dynamic int8) measured 69% greedy agreement on SmolLM2, against 97% for weight-only.

Measured (all 121 linears of SmolLM2-135M in model order, M = 1): oneDNN bf16 31.9 ms, this
bf16 kernel 18.1 ms, this int8 kernel 10.0 ms. K must be a multiple of 32 and N of 4.
"""
from __future__ import annotations

import torch

from specgrove.kernels.cpu_build import has_native_bf16, load_library


def available() -> bool:
    """Whether the kernels are built for this CPU (AVX512_BF16 needed)."""
    return has_native_bf16() and load_library("linear_cpu") and bool(
        torch.ops.specgrove_cpu_linear.available())


def fits(in_features: int, out_features: int) -> bool:
    return in_features % 32 == 0 and out_features % 4 == 0


def quantize_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> (q [N, K] int8, scale [N] float32), symmetric per output channel."""
    w = w.float().contiguous()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8).contiguous()
    return q, scale


class Bf16Linear:
    """y = x @ w^T with the bf16 kernel; ``w``: [N, K] bfloat16 (the checkpoint layout)."""

    def __init__(self, w: torch.Tensor) -> None:
        self.w = w.to(torch.bfloat16).contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # [..., K] -> [..., N] bf16
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16).contiguous()
        return torch.ops.specgrove_cpu_linear.linear_bf16(flat, self.w).reshape(*x.shape[:-1], -1)


class Int8Linear:
    """y = x @ (q * s)^T with the weight-only int8 kernel."""

    def __init__(self, w: torch.Tensor) -> None:
        self.q, self.scale = quantize_per_channel(w)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16).contiguous()
        return torch.ops.specgrove_cpu_linear.linear_int8(flat, self.q, self.scale).reshape(*x.shape[:-1], -1)

    def dequantized(self) -> torch.Tensor:  # [N, K] float32: the weight this layer applies
        return self.q.float() * self.scale[:, None]
