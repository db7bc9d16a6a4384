"""Small-M CPU linears for decoding and tree verification: bfloat16 weights, and weight-only int8
weights (``csrc/linear_cpu.cpp``), plus the plain-torch references they are tested against.

``y[M, N] = x[M, K] @ W[N, K]^T`` for the few rows of a decode step (M = 1) or of a tree verify
(M = 2..32 draft nodes in one forward). At M = 1 a linear is a weight stream: every weight byte
is used once, so the kernel must run at memory bandwidth. As M grows each weight is used M
times and the kernel must not turn compute- or load-bound before the bandwidth does.

The library is compiled for the CPU it runs on (``-march=native``) and holds one of two kernel
sets (:func:`isa`): AVX512_BF16 (VDPBF16PS register tiles, below, and AMX tiles where present)
or, on CPUs without it, AVX2 + FMA (float32 FMAs on the same packed weights, last section).

**Packed weights.** The constructor packs ``W`` once into pairs layout, ``[ceil(N/16),
ceil(K/2), 16, 2]`` (:func:`pack_pairs`): for one block of 16 output features and one pair of
inputs (2j, 2j + 1), the 32 weights are contiguous. That is the operand of the AVX512_BF16 dot
product VDPBF16PS (Intel SDM Vol. 2C, "VDPBF16PS - Dot Product of BF16 Pairs Accumulated Into
Packed Single Precision"): lane l accumulates ``a[2l] * b[2l] + a[2l+1] * b[2l+1]`` into a
float32, products exact (8-bit significands), sums rounded to float32. The activation side is
the pair ``(x[m][2j], x[m][2j+1])`` broadcast to all 16 lanes, so one instruction advances 16
output features of one row, and each accumulator ends holding 16 finished outputs: no horizontal
reductions (the previous kernel dotted weight rows against activation rows and reduced every
output across a vector).

**Register tile.** Up to 6 activation rows x 4 blocks (64 outputs) = 24 float32 accumulators,
4 weight vectors loaded per pair index and reused by every row of the tile, each row's pair
loaded once and reused by the 4 blocks: 24 dot products per 10 loads. M is cut into
``ceil(M / 6)`` tiles of equal height (9 = 5 + 4); every row tile of a thread re-reads the same
weight blocks from L2, so DRAM still sees each weight byte once per call. Threads own ranges of
output blocks (``at::parallel_for``). Prefetch: the hardware prefetchers follow the 4 weight
streams on their own (software prefetch a few lines ahead measured no gain at M = 1, and slower
at 8+ lines); what they cannot do is overlap DRAM with compute once M needs several row tiles,
since the first tile waits on memory and the later ones on the dot products. So with several
tiles, each tile pulls its share of the thread's next 64-output blocks into L2 (9-10% less time
at M = 9 and 16 on one thread). N and K need not be multiples of anything: packing pads W with zero rows and
columns, the kernel masks the stores of a partial last block, and an odd K gets one zero
column in x too.

**Weight-only int8** (``--quantization int8``): symmetric per-output-channel scales,
``w ~= q * s`` with ``q`` in [-127, 127] and ``s = max|w_row| / 127``, packed like bf16. Each
32-weight vector is widened to bfloat16 in registers (int8 -> int32 -> float32 -> bf16, exact:
|q| <= 127 needs 7 significant bits, bf16 has 8); with several row tiles the thread's 64-output
blocks are widened once into an L2 buffer instead. ``y = (x @ q^T) * s`` with ``s`` applied to
the float32 sums. Activations stay bfloat16: per-tensor activation quantisation (fbgemm's dynamic
int8) measured 69% greedy agreement on SmolLM2, against 97% for weight-only.

Measured with ``benchmarks/cpu_linear.py`` (``benchmarks/results/cpu_linear_cpu.json``; 2-core
EPYC, 2 threads, machine otherwise idle): all 121 linears of SmolLM2-135M, ms, medians.

=================  =====  =====  =====  =====
M                      1      9     16     32
=================  =====  =====  =====  =====
oneDNN bf16         26.4   31.4   36.4   48.5
previous bf16       18.9   27.3   34.4   48.8
packed bf16         11.2   11.9   15.3   25.6
previous int8        9.8   22.7   29.7   49.4
packed int8          7.4   12.4   17.5   28.0
=================  =====  =====  =====  =====

M = 1 streams the 270 MB of bf16 weights at ~24 GB/s. At M = 32 the kernel is compute-bound at
~85% of VDPBF16PS peak (one 512-bit VDPBF16PS per cycle per core on this Zen 4); at M = 16 DRAM
and compute are about equal and overlap imperfectly. int8 widening costs ~10% over bf16 once the
kernel is compute-bound (M >= 8).

**AMX.** On a CPU with Intel AMX tiles (Sapphire Rapids and later) the same packed weights run
on tiles (bf16 at every height, int8 from 8 rows: :data:`AMX_MIN_ROWS`): the pairs layout is already AMX's B operand (16 pair
indices of one block, ``[16][16][2]``, are one 16-row x 64-byte tile, 1 KB contiguous), x is
read in place as 16-row x 32-value A tiles, and TDPBF16PS adds a 16 x 16 x 32 product per
instruction into float32 C tiles: the same exact products and float32 sums as VDPBF16PS (the
summation order differs, so results agree within one bf16 step), 32 times the work per
instruction. Each thread takes groups of 4 blocks (64 outputs) and runs every 16-row chunk of x
against them, so weights stream from memory once per call (int8 groups are widened to bf16
once into an L2 buffer). K must be a multiple of 32; other layers stay on the register tiles.
The process asks the kernel for the tile state (``arch_prctl(ARCH_REQ_XCOMP_PERM)``) at first use.

Measured with ``benchmarks/cpu_linear.py --no-rows --heights 1,2,4,8,16,32,300`` on a 2-core
Xeon with AMX, all linears of SmolLM2-135M, ms, medians of 5
(``benchmarks/results/cpu_linear_xeon_amx.json``):

=========================  =====  =====  =====  =====  =====  =====  =====
M                              1      2      4      8     16     32    300
=========================  =====  =====  =====  =====  =====  =====  =====
packed bf16, VDPBF16PS      12.5   13.6   14.7   18.4   27.2   46.2  382.9
packed bf16, AMX tiles      11.1   11.4   11.4   11.3   11.4   14.8   59.8
packed int8, VDPBF16PS       8.7    9.3   11.6   16.8   27.7   48.2  383.5
packed int8, AMX tiles      14.0   13.8   14.8   14.9   15.0   18.4   79.5
oneDNN ``F.linear``         25.8   25.2   25.3   25.6   26.0   28.2   74.9
oneDNN, reordered weights   20.7   17.2   17.1   17.6   17.7   20.6   66.6
=========================  =====  =====  =====  =====  =====  =====  =====

On AMX a 16-row linear costs what a 1-row one does: the weights stream at the same speed and
the tiles' arithmetic hides behind it.

``SPECGROVE_CPU_AMX=0`` keeps every height on the VDPBF16PS kernel.

**AVX2 + FMA** (``isa() == "avx2"``): the same packed weights, ops and results on CPUs without
AVX512_BF16, in float32 arithmetic. One 32-bit lane of the pairs layout holds ``(w[n][2j],
w[n][2j+1])``, and a bf16 is the high half of its float32: a 256-bit load of 8 lanes gives the
even inputs' weights as ``lane << 16`` and the odd inputs' as ``lane & 0xFFFF0000``, two float32
vectors for two integer ops, multiplied (FMA) by broadcasts of ``x[m][2j]`` and ``x[m][2j+1]``
(x widened to float32 once per call) into the same accumulator of 8 outputs. int8 pairs are
sign-extended as int16 and split by arithmetic shifts (``(v << 24) >> 24``, ``v >> 8``), exact in
float32. The products are exact and the sums float32, as with VDPBF16PS, and the output is rounded
to bf16 once (nearest even, as torch). Register tiles hold 8-10 of the 16 ymm registers as
accumulators: 1 row x 4 blocks, 2 x 2, then 3-5 rows x 1 block (a 64-output group runs as several
tiles); up to 5 rows a tile, equal heights as above; int8 is widened to a bf16 L2 buffer from 3
row tiles on (M >= 11), in registers below. Threads, prefetch and the N / K tails as above. With
one thread and the weights in L2 the tiles reach 13 (M = 1), 24 (2), 31 (4), 35 (16) and 38 (32)
GMAC/s, of ~48 (2 FMA ports x 8 lanes x ~3 GHz).

Measured with ``benchmarks/cpu_linear.py --no-rows --heights 1,2,4,8,16,32 --repeats 15`` on a
2-core AMD EPYC Zen 3, AVX2/FMA, no AVX-512, 2 threads
(``benchmarks/results/cpu_linear_epyc_avx2.json``): all 121 linears of SmolLM2-135M, ms, medians. The machine's speed drifts between runs minutes
apart (packed bf16 at M = 16: medians of 38 to 58 ms in repeated runs); the minima of this run are
15-35% below its medians from M = 8 on.

=========================  =====  =====  =====  =====  =====  =====
M                              1      2      4      8     16     32
=========================  =====  =====  =====  =====  =====  =====
packed bf16, AVX2           15.2   18.1   21.1   35.5   55.7   99.5
packed int8, AVX2           10.8   12.5   15.9   29.8   62.8  102.9
oneDNN ``F.linear`` bf16    22.9   39.6   73.7  146.4  283.2  568.6
oneDNN ``F.linear`` fp32    60.0  110.6  118.7  110.5  134.3  174.7
=========================  =====  =====  =====  =====  =====  =====

M = 1 streams the 270 MB of bf16 weights at ~18 GB/s (int8: 135 MB at ~12 GB/s); from M = 8 on
the time grows with M, compute-bound (M = 32: 43 GMAC/s at the median, 68 at the minimum, of ~96
on the 2 cores). Without native bf16, oneDNN's bf16 linear costs ~17 ms per row. Verify ms per
step by tree size (``--verify --dense``, same file, 300-token prefix, medians of 3):

=========================  =====  =====  =====  =====  =====  =====
nodes                          1      2      4      8     16     32
=========================  =====  =====  =====  =====  =====  =====
packed bf16                 30.5   34.9   44.3   70.3  109.5  171.9
packed int8                 23.3   30.8   38.6   52.5   82.9  143.2
``F.linear`` bf16           34.7   64.0  100.7  174.2  345.9  645.3
``F.linear``, float32       65.3   88.1  162.3  198.3  227.7  315.2
=========================  =====  =====  =====  =====  =====  =====
"""
from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

from specgrove.kernels.cpu_build import load_library

LANES = 16  # output features per packed block
AMX_PAIRS = 16  # pair indices per AMX B tile: the AMX path needs K to be a multiple of 32
# Rows from which a layer runs on AMX tiles (table above): bf16 at every height (even one row
# streams faster through tile loads); int8 from 8, below which widening each group to bf16
# costs more than the register tiles' in-register widening.
AMX_MIN_ROWS = {"bf16": 1, "int8": 8}


@functools.cache
def isa() -> str | None:
    """The kernel set built for this CPU: ``"avx512_bf16"`` (VDPBF16PS, and AMX tiles where
    present), ``"avx2"`` (AVX2 + FMA, float32 arithmetic on the same packed weights), or None
    (neither instruction set, or no compiler)."""
    if not load_library("linear_cpu"):
        return None
    return str(torch.ops.specgrove_cpu_linear.isa()) or None


def available() -> bool:
    """Whether the kernels are built for this CPU (AVX2+FMA or AVX512_BF16 needed)."""
    return isa() is not None


@functools.cache
def amx_available() -> bool:
    """Whether the AMX path is built for this CPU and the OS grants this process the tile state
    (and ``SPECGROVE_CPU_AMX`` is not 0)."""
    return os.environ.get("SPECGROVE_CPU_AMX", "1") != "0" and available() and bool(
        torch.ops.specgrove_cpu_linear.amx_available())


def _use_amx(amx: bool | None, in_features: int) -> bool:
    """AMX for this layer: asked for (None: where available) and K a whole number of tiles."""
    if amx is None:
        amx = amx_available()
    return amx and in_features % (2 * AMX_PAIRS) == 0


def fits(in_features: int, out_features: int) -> bool:
    """Any shape: packing pads N to 16 and K to 2 (kept for callers that ask)."""
    return in_features > 0 and out_features > 0


def pack_pairs(w: torch.Tensor) -> torch.Tensor:
    """[N, K] -> [ceil(N/16), ceil(K/2), 16, 2], same dtype, zero padded:
    ``p[b, j, l, t] = w[16 b + l, 2 j + t]``."""
    n, k = w.shape
    w = F.pad(w, (0, k % 2, 0, -n % LANES))  # [16 Nb, 2 K2]
    return w.view(w.shape[0] // LANES, LANES, w.shape[1] // 2, 2).permute(0, 2, 1, 3).contiguous()


def unpack_pairs(p: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_pairs`: [Nb, K2, 16, 2] -> [n, k]."""
    nb, k2 = p.shape[:2]
    return p.permute(0, 2, 1, 3).reshape(nb * LANES, 2 * k2)[:n, :k]


def quantize_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] float -> (q [N, K] int8, scale [N] float32), symmetric per output channel."""
    w = w.float().contiguous()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8).contiguous()
    return q, scale


def linear_bf16_ref(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The bf16 kernel's computation in plain torch: x [M, K], w [N, K] -> [M, N] bf16
    (float32 sums of exact products, rounded once)."""
    return (x.float() @ w.float().t()).to(torch.bfloat16)


def linear_int8_ref(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The int8 kernel's computation in plain torch: x [M, K], q [N, K] int8, scale [N]."""
    return ((x.float() @ q.float().t()) * scale.float()).to(torch.bfloat16)


def _require() -> None:
    if not available():
        raise RuntimeError("the CPU linear kernels need AVX2+FMA or AVX512_BF16 and a C++ compiler")


def _rows(x: torch.Tensor, k2: int) -> torch.Tensor:
    """[..., K] -> contiguous bf16 [M, 2 k2] (an odd K gets a zero column, matching the packing)."""
    if x.dim() == 2 and x.dtype == torch.bfloat16 and x.shape[1] == 2 * k2 and x.is_contiguous():
        return x  # the usual case, a few microseconds per call saved on 121 calls a step
    flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
    if flat.shape[1] != 2 * k2:
        flat = F.pad(flat, (0, 2 * k2 - flat.shape[1]))
    return flat.contiguous()


class Bf16Linear:
    """y = x @ w^T with the bf16 kernel; ``w``: [N, K] (the checkpoint layout), packed here, so the
    caller may drop its own copy. ``amx``: AMX tiles from AMX_MIN_ROWS["bf16"] rows (None:
    where available)."""

    def __init__(self, w: torch.Tensor, amx: bool | None = None) -> None:
        _require()
        self.out_features, self.in_features = w.shape
        self.packed = pack_pairs(w.to(torch.bfloat16))  # [Nb, K2, 16, 2] bf16
        self.amx = _use_amx(amx, self.in_features)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # [..., K] -> [..., N] bf16
        flat = _rows(x, self.packed.shape[1])
        op = torch.ops.specgrove_cpu_linear
        kernel = op.linear_bf16_amx if self.amx and flat.shape[0] >= AMX_MIN_ROWS["bf16"] else op.linear_bf16
        y = kernel(flat, self.packed, self.out_features)
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

    def dequantized(self) -> torch.Tensor:  # [N, K] float32: the weight this layer applies
        return unpack_pairs(self.packed, self.out_features, self.in_features).float()


class Int8Linear:
    """y = x @ (q * s)^T with the weight-only int8 kernel (AMX tiles from AMX_MIN_ROWS["int8"] rows,
    on ``q`` widened to bf16 per group of blocks)."""

    def __init__(self, w: torch.Tensor, amx: bool | None = None) -> None:
        _require()
        self.out_features, self.in_features = w.shape
        q, self.scale = quantize_per_channel(w)  # [N, K] int8, [N] float32
        self.packed = pack_pairs(q)  # [Nb, K2, 16, 2] int8
        self.amx = _use_amx(amx, self.in_features)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = _rows(x, self.packed.shape[1])
        op = torch.ops.specgrove_cpu_linear
        kernel = op.linear_int8_amx if self.amx and flat.shape[0] >= AMX_MIN_ROWS["int8"] else op.linear_int8
        y = kernel(flat, self.packed, self.scale)
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

    @property
    def q(self) -> torch.Tensor:  # [N, K] int8
        return unpack_pairs(self.packed, self.out_features, self.in_features)

    def dequantized(self) -> torch.Tensor:  # [N, K] float32: the weight this layer applies
        return self.q.float() * self.scale[:, None]
