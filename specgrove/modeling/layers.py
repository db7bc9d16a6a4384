"""RMSNorm (Zhang & Sennrich 2019) and rotary position embedding (RoFormer, Su et al. 2021)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from specgrove.kernels.cpu_elementwise import rms_norm_ref
from specgrove.kernels.cpu_elementwise import rope_ref as apply_rope  # noqa: F401 -- the model's RoPE
from specgrove.modeling.config import RopeConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, dtype) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype), requires_grad=False)
        self.fused = None  # a fused bf16 CPU kernel (modeling.cpu_kernels): (x, weight, eps) -> y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.fused(x, self.weight, self.eps)
        # Normalise in at least float32 (half precision would lose the mean of squares). The HF
        # reference uses float32 even for float64 models; we keep float64 there so that two
        # summation orders of one float64 model (decode vs tree verify) agree to ~1e-13.
        if x.dtype in (torch.float32, torch.float64):  # one fused op, same arithmetic
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return rms_norm_ref(x, self.weight, self.eps)


def rope_inv_freq(rope: RopeConfig, rot_dim: int) -> torch.Tensor:  # [rot_dim / 2] float32
    inv_freq = 1.0 / (
        rope.theta ** (torch.arange(0, rot_dim, 2, dtype=torch.int64).float() / rot_dim)
    )
    if rope.kind == "linear":
        return inv_freq / rope.factor
    if rope.kind == "llama3":
        return _llama3_scale(inv_freq, rope)
    return inv_freq


def _llama3_scale(inv_freq: torch.Tensor, rope: RopeConfig) -> torch.Tensor:
    """Llama 3.1 frequency scaling: long wavelengths divided by ``factor``, a smooth ramp between."""
    low_wavelen = rope.original_max_positions / rope.low_freq_factor
    high_wavelen = rope.original_max_positions / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (rope.original_max_positions / wavelen - rope.low_freq_factor) / (
        rope.high_freq_factor - rope.low_freq_factor
    )
    ramp = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, ramp, scaled)


class RotaryEmbedding(nn.Module):
    """RoPE tables (cos/sin cached in float32), looked up once per forward for all layers."""

    def __init__(self, head_dim: int, max_positions: int, rope: RopeConfig, dtype) -> None:
        super().__init__()
        self.dtype = dtype
        inv_freq = rope_inv_freq(rope, head_dim)
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", freqs.cos(), persistent=False)  # [max_pos, head_dim / 2]
        self.register_buffer("sin", freqs.sin(), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin at ``positions`` ([T]) in the model dtype: [T, 1, head_dim / 2] each."""
        cos = self.cos[positions].to(self.dtype).unsqueeze(1)
        sin = self.sin[positions].to(self.dtype).unsqueeze(1)
        return cos, sin

