// linear_cpu.cpp: small-M bf16 / weight-only int8 linears (AVX512_BF16) over packed weights;
// design notes, measurements and the packing itself in kernels/cpu_linear.py.
//
// Packed weight ("pairs layout"): w[N, K] -> p[Nb, K2, 16, 2] with Nb = ceil(N / 16),
// K2 = ceil(K / 2), p[b][j][l][t] = w[16 b + l][2 j + t] (zero padded). One pair index j of one
// block is 32 values: 16 output features x 2 consecutive inputs, exactly the operand VDPBF16PS
// multiplies against a broadcast pair (x[2j], x[2j + 1]). Each 16-lane float32 accumulator then
// holds 16 finished outputs: no horizontal reductions.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>
#define SG_HAS_BF16_KERNELS 1
#else
#define SG_HAS_BF16_KERNELS 0
#endif

namespace {

constexpr int64_t kLanes = 16;     // output features per packed block (one zmm of float32)
constexpr int64_t kPair = 2 * kLanes;  // values per (block, pair index): one zmm of bf16
constexpr int kMaxNV = 4;          // blocks per register tile (64 outputs)
constexpr int kMaxMR = 6;          // activation rows per register tile: 6 x 4 = 24 accumulators

#if SG_HAS_BF16_KERNELS
// 32 weights of block-stream `w` at value offset `off` as bf16 pairs. int8 is widened exactly
// (|q| <= 127 has 7 significant bits; bf16 keeps 8): int8 -> int32 -> float32 -> bf16.
template <typename W>
inline __m512bh load_pairs(const W* w, int64_t off);

template <>
inline __m512bh load_pairs<uint16_t>(const uint16_t* w, int64_t off) {
  return (__m512bh)_mm512_loadu_si512(w + off);
}

template <>
inline __m512bh load_pairs<int8_t>(const int8_t* w, int64_t off) {
  const __m128i lo8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + off));
  const __m128i hi8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + off + 16));
  const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo8));
  const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi8));
  return _mm512_cvtne2ps_pbh(hi, lo);  // values 0..15 from lo, 16..31 from hi: memory order
}

inline __m512bh broadcast_pair(const uint16_t* x) {  // (x[0], x[1]) in all 16 lanes
  int32_t pair;
  std::memcpy(&pair, x, sizeof(pair));
  return (__m512bh)_mm512_set1_epi32(pair);
}

// A byte range to pull into L2 while a tile computes: `lines` cache lines per pair index, from
// `next` until `end` (both null: nothing to prefetch).
struct Prefetch {
  const char* next = nullptr;
  const char* end = nullptr;
  int64_t lines = 0;
};

// y[m][n0 + 16 v + l] = sum_j dot(x[m][2j..2j+1], p[v][j][l][0..1]) (* scale) for m < MR,
// v < NV. x: [MR rows, stride ldx] bf16 with 2 * K2 values a row; w: NV block streams
// `bstride` values apart, each [K2][16][2]; scale: [N] or null; y: [.., ldy] bf16, columns >= N
// not written.
template <int MR, int NV, typename W>
void tile(const uint16_t* x, int64_t ldx, const W* w, int64_t bstride, int64_t K2,
          const float* scale, at::BFloat16* y, int64_t ldy, int64_t n0, int64_t N, Prefetch pf) {
  __m512 acc[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) acc[m][v] = _mm512_setzero_ps();
  for (int64_t j = 0; j < K2; ++j) {
    for (int64_t i = 0; i < pf.lines && pf.next < pf.end; ++i, pf.next += 64)
      _mm_prefetch(pf.next, _MM_HINT_T1);
    __m512bh wv[NV];
    for (int v = 0; v < NV; ++v) wv[v] = load_pairs(w, v * bstride + j * kPair);
    for (int m = 0; m < MR; ++m) {
      const __m512bh xb = broadcast_pair(x + m * ldx + 2 * j);
      for (int v = 0; v < NV; ++v) acc[m][v] = _mm512_dpbf16_ps(acc[m][v], wv[v], xb);
    }
  }
  for (int v = 0; v < NV; ++v) {
    const int64_t n = n0 + v * kLanes;
    const int64_t valid = std::min<int64_t>(kLanes, N - n);
    if (valid <= 0) break;
    const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1u);
    const __m512 s = scale ? _mm512_maskz_loadu_ps(mask, scale + n) : _mm512_set1_ps(1.0f);
    for (int m = 0; m < MR; ++m) {
      const __m256i out = (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(acc[m][v], s));  // RNE
      _mm256_mask_storeu_epi16(y + m * ldy + n, mask, out);
    }
  }
}

template <typename W>
using TileFn = void (*)(const uint16_t*, int64_t, const W*, int64_t, int64_t, const float*,
                        at::BFloat16*, int64_t, int64_t, int64_t, Prefetch);

template <typename W>
TileFn<W> pick_tile(int mr, int nv) {  // mr in [1, kMaxMR], nv in [1, kMaxNV]
#define SG_ROW(R) {&tile<R, 1, W>, &tile<R, 2, W>, &tile<R, 3, W>, &tile<R, 4, W>}
  static const TileFn<W> table[kMaxMR][kMaxNV] = {SG_ROW(1), SG_ROW(2), SG_ROW(3),
                                                   SG_ROW(4), SG_ROW(5), SG_ROW(6)};
#undef SG_ROW
  return table[mr - 1][nv - 1];
}

// Widen nv int8 block streams [K2][16][2] to bf16, once per call when several row tiles reuse them.
void widen_blocks(const int8_t* q, int64_t bstride, int nv, int64_t K2, uint16_t* dst) {
  for (int v = 0; v < nv; ++v)
    for (int64_t j = 0; j < K2; ++j)
      _mm512_storeu_si512(dst + (v * K2 + j) * kPair,
                          (__m512i)load_pairs(q + v * bstride, j * kPair));
}
#endif

// Rows [0, M) in ceil(M / kMaxMR) tiles of near-equal height (M = 9: 5 + 4, not 6 + 3).
std::vector<int64_t> row_starts(int64_t M) {
  const int64_t tiles = (M + kMaxMR - 1) / kMaxMR;
  std::vector<int64_t> starts{0};
  for (int64_t t = 0; t < tiles; ++t) starts.push_back(starts.back() + M / tiles + (t < M % tiles));
  return starts;
}

// y[M, N] = x[M, 2 K2] @ unpack(w)^T (* scale): bf16 pairs (w bf16) or weight-only int8.
at::Tensor run_packed(const at::Tensor& x, const at::Tensor& w, const float* scale, int64_t N) {
  TORCH_CHECK(SG_HAS_BF16_KERNELS, "cpu_linear: built without AVX512_BF16");
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "cpu_linear: CPU tensors only");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16 && x.is_contiguous(),
              "cpu_linear: x must be a contiguous bfloat16 [M, K] matrix");
  TORCH_CHECK(w.dim() == 4 && w.size(2) == kLanes && w.size(3) == 2 && w.is_contiguous(),
              "cpu_linear: packed weight must be contiguous [ceil(N/16), ceil(K/2), 16, 2]");
  const int64_t M = x.size(0), Nb = w.size(0), K2 = w.size(1);
  TORCH_CHECK(x.size(1) == 2 * K2, "cpu_linear: x has ", x.size(1), " columns, the packed weight ",
              2 * K2, " (pad x with zeros to an even K)");
  TORCH_CHECK(N > (Nb - 1) * kLanes && N <= Nb * kLanes, "cpu_linear: N does not match the packed blocks");
  auto y = at::empty({M, N}, x.options());
#if SG_HAS_BF16_KERNELS
  if (M == 0) return y;
  const bool int8 = w.scalar_type() == at::kChar;
  const uint16_t* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  at::BFloat16* yp = y.data_ptr<at::BFloat16>();
  const std::vector<int64_t> rows = row_starts(M);
  const bool reuse = rows.size() > 2;  // several row tiles read each weight block
  const int64_t bstride = K2 * kPair;  // values per block stream
  // Grain: a task streams >= ~64 KB of weights, so small layers do not pay a thread fork.
  const int64_t grain = std::max<int64_t>(1, (64 << 10) / (bstride * w.element_size()));
  const char* wbytes = static_cast<const char*>(w.data_ptr());
  const int64_t block_bytes = bstride * w.element_size();
  const int64_t tiles = static_cast<int64_t>(rows.size()) - 1;
  at::parallel_for(0, Nb, grain, [&](int64_t b0, int64_t b1) {
    std::vector<uint16_t> wide(int8 && reuse ? kMaxNV * bstride : 0);
    for (int64_t b = b0; b < b1; b += kMaxNV) {
      const int nv = static_cast<int>(std::min<int64_t>(kMaxNV, b1 - b));
      const int64_t n0 = b * kLanes;
      // With several row tiles the blocks below are read from DRAM once, then from L2, and the
      // later tiles are compute-bound: they pull this thread's next blocks into L2 meanwhile,
      // 1/tiles of them each, so memory and compute overlap instead of taking turns.
      const char* next = wbytes + (b + nv) * block_bytes;
      const char* next_end = wbytes + std::min(b1, b + nv + kMaxNV) * block_bytes;
      const int64_t share = (next_end - next + tiles - 1) / tiles;  // bytes per row tile
      for (int64_t r = 0; r < tiles; ++r) {
        const int mr = static_cast<int>(rows[r + 1] - rows[r]);
        const uint16_t* xr = xp + rows[r] * 2 * K2;
        at::BFloat16* yr = yp + rows[r] * N;
        Prefetch pf;
        if (reuse && next < next_end) {
          pf.next = next + r * share;
          pf.end = std::min(next_end, pf.next + share);
          pf.lines = (share + 64 * K2 - 1) / (64 * K2);
        }
        if (!int8) {
          const uint16_t* wp = reinterpret_cast<const uint16_t*>(wbytes + b * block_bytes);
          pick_tile<uint16_t>(mr, nv)(xr, 2 * K2, wp, bstride, K2, nullptr, yr, N, n0, N, pf);
        } else if (!reuse) {  // one row tile: widen in registers
          const int8_t* qp = reinterpret_cast<const int8_t*>(wbytes + b * block_bytes);
          pick_tile<int8_t>(mr, nv)(xr, 2 * K2, qp, bstride, K2, scale, yr, N, n0, N, pf);
        } else {  // several: widen the blocks once into an L2-sized buffer
          if (r == 0)
            widen_blocks(reinterpret_cast<const int8_t*>(wbytes + b * block_bytes), bstride, nv, K2,
                         wide.data());
          pick_tile<uint16_t>(mr, nv)(xr, 2 * K2, wide.data(), bstride, K2, scale, yr, N, n0, N, pf);
        }
      }
    }
  });
#endif
  return y;
}

}  // namespace

at::Tensor linear_bf16(at::Tensor x, at::Tensor w, int64_t n) {
  TORCH_CHECK(w.scalar_type() == at::kBFloat16, "cpu_linear: linear_bf16 takes packed bfloat16 weights");
  return run_packed(x, w, nullptr, n);
}

at::Tensor linear_int8(at::Tensor x, at::Tensor q, at::Tensor scale) {
  TORCH_CHECK(q.scalar_type() == at::kChar, "cpu_linear: linear_int8 takes packed int8 weights");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.dim() == 1 && scale.is_contiguous(),
              "cpu_linear: scale must be a contiguous float32 [N] vector");
  return run_packed(x, q, scale.data_ptr<float>(), scale.numel());
}

bool available() { return SG_HAS_BF16_KERNELS; }

TORCH_LIBRARY(specgrove_cpu_linear, m) {
  m.def("linear_bf16(Tensor x, Tensor w, int n) -> Tensor");
  m.def("linear_int8(Tensor x, Tensor q, Tensor scale) -> Tensor");
  m.def("available() -> bool");
}

TORCH_LIBRARY_IMPL(specgrove_cpu_linear, CPU, m) {
  m.impl("linear_bf16", &linear_bf16);
  m.impl("linear_int8", &linear_int8);
}
TORCH_LIBRARY_IMPL(specgrove_cpu_linear, CompositeExplicitAutograd, m) { m.impl("available", &available); }
