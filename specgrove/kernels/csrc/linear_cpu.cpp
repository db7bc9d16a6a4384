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
#if SG_HAS_BF16_KERNELS && defined(__AMX_TILE__) && defined(__AMX_BF16__)
#include <sys/syscall.h>
#include <unistd.h>
#define SG_HAS_AMX 1
#else
#define SG_HAS_AMX 0
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

#if SG_HAS_AMX
// ---- AMX tiles (Intel SDM Vol. 1, ch. 18 "Intel AMX") -----------------------------------------
// The pairs layout is already AMX's "VNNI" B operand: 16 consecutive pair indices of one block,
// [16 pairs][16 outputs][2], are one 16-row x 64-byte tile, 1 KB contiguous. A tile of x is up
// to 16 rows x 32 bf16 (16 pairs), read in place with the row stride. TDPBF16PS adds the
// 16 x 16 pair-dot-products into a 16 x 16 float32 tile: the same exact products and float32
// sums as VDPBF16PS, 32x the work per instruction.
constexpr int64_t kTilePairs = 16;  // pair indices per B tile (K = 32 values)
constexpr int64_t kTileRows = 16;   // rows of x per A / C tile

struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Linux hands out AMX tile state only to a process that asks (arch_prctl ARCH_REQ_XCOMP_PERM).
bool amx_permitted() {
  static const bool ok = [] {
    constexpr int kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}

// Tiles 0-3: C, one per 16-output block, mr rows; 4: A (mr rows of 16 pairs); 5, 6: B,
// alternating so that a block's load overlaps the previous block's product.
void configure_tiles(int mr) {
  TileConfig cfg;
  for (int t = 0; t < 5; ++t) cfg.rows[t] = static_cast<uint8_t>(mr), cfg.colsb[t] = 64;
  for (int t = 5; t < 7; ++t) cfg.rows[t] = kTilePairs, cfg.colsb[t] = 64;
  _tile_loadconfig(&cfg);
}

// c[v][m][l] = sum over all K of x[m] . block v, for NV blocks `bstride` values apart (their
// first pair index at w) and the configured mr rows of x (row stride ldx values).
template <int NV>
void amx_blocks(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t bstride, int64_t K2,
                float* c) {
  _tile_zero(0);
  if constexpr (NV > 1) _tile_zero(1);
  if constexpr (NV > 2) _tile_zero(2);
  if constexpr (NV > 3) _tile_zero(3);
  for (int64_t j = 0; j < K2; j += kTilePairs) {
    _tile_loadd(4, x + 2 * j, ldx * 2);
    _tile_loadd(5, w + j * kPair, 64);
    _tile_dpbf16ps(0, 4, 5);
    if constexpr (NV > 1) { _tile_loadd(6, w + bstride + j * kPair, 64); _tile_dpbf16ps(1, 4, 6); }
    if constexpr (NV > 2) { _tile_loadd(5, w + 2 * bstride + j * kPair, 64); _tile_dpbf16ps(2, 4, 5); }
    if constexpr (NV > 3) { _tile_loadd(6, w + 3 * bstride + j * kPair, 64); _tile_dpbf16ps(3, 4, 6); }
  }
  _tile_stored(0, c, 64);
  if constexpr (NV > 1) _tile_stored(1, c + kTileRows * kLanes, 64);
  if constexpr (NV > 2) _tile_stored(2, c + 2 * kTileRows * kLanes, 64);
  if constexpr (NV > 3) _tile_stored(3, c + 3 * kTileRows * kLanes, 64);
}

using AmxFn = void (*)(const uint16_t*, int64_t, const uint16_t*, int64_t, int64_t, float*);
constexpr AmxFn kAmxBlocks[kMaxNV] = {&amx_blocks<1>, &amx_blocks<2>, &amx_blocks<3>, &amx_blocks<4>};

// y = x @ unpack(w)^T (* scale) on AMX tiles; K2 a multiple of 16. Threads own ranges of
// output blocks; for each group of 4 blocks every 16-row chunk of x runs against them, so the
// group's weights come from DRAM once and from L2 for the other chunks (int8 widened once
// per group into an L2 buffer).
void run_amx(const uint16_t* xp, int64_t M, const char* wbytes, bool int8, int64_t Nb, int64_t K2,
             const float* scale, at::BFloat16* yp, int64_t N) {
  const int64_t bstride = K2 * kPair;
  const int64_t block_bytes = bstride * (int8 ? 1 : 2);
  const int64_t grain = std::max<int64_t>(kMaxNV, (64 << 10) / block_bytes);
  at::parallel_for(0, Nb, grain, [&](int64_t b0, int64_t b1) {
    std::vector<uint16_t> wide(int8 ? kMaxNV * bstride : 0);
    alignas(64) float c[kMaxNV * kTileRows * kLanes];
    int configured = 0;
    for (int64_t b = b0; b < b1; b += kMaxNV) {
      const int nv = static_cast<int>(std::min<int64_t>(kMaxNV, b1 - b));
      const uint16_t* wp = reinterpret_cast<const uint16_t*>(wbytes + b * block_bytes);
      if (int8) {
        widen_blocks(reinterpret_cast<const int8_t*>(wbytes + b * block_bytes), bstride, nv, K2, wide.data());
        wp = wide.data();
      }
      for (int64_t m0 = 0; m0 < M; m0 += kTileRows) {
        const int mr = static_cast<int>(std::min<int64_t>(kTileRows, M - m0));
        if (mr != configured) configure_tiles(configured = mr);
        kAmxBlocks[nv - 1](xp + m0 * 2 * K2, 2 * K2, wp, bstride, K2, c);
        for (int v = 0; v < nv; ++v) {
          const int64_t n = (b + v) * kLanes;
          const int64_t valid = std::min<int64_t>(kLanes, N - n);
          const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1u);
          const __m512 s = scale ? _mm512_maskz_loadu_ps(mask, scale + n) : _mm512_set1_ps(1.0f);
          for (int m = 0; m < mr; ++m) {
            const __m512 acc = _mm512_load_ps(c + (v * kTileRows + m) * kLanes);
            const __m256i out = (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(acc, s));  // RNE
            _mm256_mask_storeu_epi16(yp + (m0 + m) * N + n, mask, out);
          }
        }
      }
    }
    if (configured) _tile_release();
  });
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
at::Tensor run_packed(const at::Tensor& x, const at::Tensor& w, const float* scale, int64_t N,
                      bool amx = false) {
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
  if (amx) {
#if SG_HAS_AMX
    TORCH_CHECK(K2 % kTilePairs == 0, "cpu_linear: the AMX path needs K a multiple of 32");
    TORCH_CHECK(amx_permitted(), "cpu_linear: the kernel refused this process AMX tile state");
    run_amx(xp, M, static_cast<const char*>(w.data_ptr()), int8, Nb, K2, scale, yp, N);
    return y;
#else
    TORCH_CHECK(false, "cpu_linear: built without AMX");
#endif
  }
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

at::Tensor linear_bf16_amx(at::Tensor x, at::Tensor w, int64_t n) {
  TORCH_CHECK(w.scalar_type() == at::kBFloat16, "cpu_linear: linear_bf16_amx takes packed bfloat16 weights");
  return run_packed(x, w, nullptr, n, /*amx=*/true);
}

at::Tensor linear_int8_amx(at::Tensor x, at::Tensor q, at::Tensor scale) {
  TORCH_CHECK(q.scalar_type() == at::kChar, "cpu_linear: linear_int8_amx takes packed int8 weights");
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.dim() == 1 && scale.is_contiguous(),
              "cpu_linear: scale must be a contiguous float32 [N] vector");
  return run_packed(x, q, scale.data_ptr<float>(), scale.numel(), /*amx=*/true);
}

bool available() { return SG_HAS_BF16_KERNELS; }

// Built with AMX tiles and granted them by the kernel.
bool amx_available() {
#if SG_HAS_AMX
  return amx_permitted();
#else
  return false;
#endif
}

TORCH_LIBRARY(specgrove_cpu_linear, m) {
  m.def("linear_bf16(Tensor x, Tensor w, int n) -> Tensor");
  m.def("linear_int8(Tensor x, Tensor q, Tensor scale) -> Tensor");
  m.def("linear_bf16_amx(Tensor x, Tensor w, int n) -> Tensor");
  m.def("linear_int8_amx(Tensor x, Tensor q, Tensor scale) -> Tensor");
  m.def("available() -> bool");
  m.def("amx_available() -> bool");
}

TORCH_LIBRARY_IMPL(specgrove_cpu_linear, CPU, m) {
  m.impl("linear_bf16", &linear_bf16);
  m.impl("linear_int8", &linear_int8);
  m.impl("linear_bf16_amx", &linear_bf16_amx);
  m.impl("linear_int8_amx", &linear_int8_amx);
}
TORCH_LIBRARY_IMPL(specgrove_cpu_linear, CompositeExplicitAutograd, m) {
  m.impl("available", &available);
  m.impl("amx_available", &amx_available);
}
