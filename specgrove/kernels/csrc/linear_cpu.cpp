// linear_cpu.cpp: small-M bf16 / weight-only int8 linears over packed weights, built for the CPU
// it is compiled on (-march=native): AVX512_BF16 (VDPBF16PS register tiles, plus AMX tiles where
// present), else AVX2 + FMA (float32 arithmetic on the same packed weights). Design notes,
// measurements and the packing itself in kernels/cpu_linear.py.
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
#include <string>
#include <vector>

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>
#define SG_HAS_AVX512_BF16 1
#define SG_HAS_AVX2 0
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SG_HAS_AVX512_BF16 0
#define SG_HAS_AVX2 1
#else
#define SG_HAS_AVX512_BF16 0
#define SG_HAS_AVX2 0
#endif
#define SG_HAS_KERNELS (SG_HAS_AVX512_BF16 || SG_HAS_AVX2)
#if SG_HAS_AVX512_BF16 && defined(__AMX_TILE__) && defined(__AMX_BF16__)
#include <sys/syscall.h>
#include <unistd.h>
#define SG_HAS_AMX 1
#else
#define SG_HAS_AMX 0
#endif

namespace {

constexpr int64_t kLanes = 16;     // output features per packed block (one zmm of float32)
constexpr int64_t kPair = 2 * kLanes;  // values per (block, pair index): one zmm of bf16

#if SG_HAS_KERNELS
// A byte range to pull into L2 while a tile computes: `lines` cache lines per pair index, from
// `next` until `end` (both null: nothing to prefetch).
struct Prefetch {
  const char* next = nullptr;
  const char* end = nullptr;
  int64_t lines = 0;

  void step() {  // once per pair index
    for (int64_t i = 0; i < lines && next < end; ++i, next += 64) _mm_prefetch(next, _MM_HINT_T1);
  }
};

// A register tile's function: MR rows of x (X: bf16 or float32 values, row stride ldx) times
// NV blocks of weights W (`bstride` values apart), written to y [.., ldy] from column n0.
template <typename X, typename W>
using TileFn = void (*)(const X*, int64_t, const W*, int64_t, int64_t, const float*,
                        at::BFloat16*, int64_t, int64_t, int64_t, Prefetch);
#endif

#if SG_HAS_AVX512_BF16
// ---- AVX512_BF16 register tiles (VDPBF16PS) ---------------------------------------------------
constexpr int kMaxNV = 4;          // blocks per register tile (64 outputs)
constexpr int kMaxMR = 6;          // activation rows per register tile: 6 x 4 = 24 accumulators
using XValue = uint16_t;           // the tiles read x as bf16 pairs
constexpr int64_t kWidenTiles = 2; // int8 from 2 row tiles on: widen each group to bf16 once

// x [M, 2 K2] as the tiles read it: in place.
inline const XValue* tile_rows(const uint16_t* x, int64_t /*count*/, std::vector<XValue>& /*buf*/) {
  return x;
}

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
    pf.step();
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
TileFn<XValue, W> pick_tile(int mr, int nv) {  // mr in [1, kMaxMR], nv in [1, kMaxNV]
#define SG_ROW(R) {&tile<R, 1, W>, &tile<R, 2, W>, &tile<R, 3, W>, &tile<R, 4, W>}
  static const TileFn<XValue, W> table[kMaxMR][kMaxNV] = {SG_ROW(1), SG_ROW(2), SG_ROW(3),
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
#elif SG_HAS_AVX2
// ---- AVX2 + FMA register tiles -----------------------------------------------------------------
// No bf16 arithmetic on these CPUs: the weights are widened to float32 in registers and
// multiplied with FMA. In the pairs layout one 32-bit lane holds (w[n][2j], w[n][2j+1]), two bf16
// with the odd input's in the high half, and a bf16 is the high half of its float32. So a 256-bit
// load of 8 lanes (8 outputs, one pair) gives two float32 vectors for two integer ops:
//   even inputs' weights: lane << 16            odd inputs' weights: lane & 0xFFFF0000
// multiplied by broadcasts of x[m][2j] and x[m][2j+1] (x widened to float32 once per call), both
// FMAs into the same accumulator of 8 outputs. As with VDPBF16PS, accumulators hold finished
// outputs (no horizontal reductions), products of bf16 values are exact in float32, sums are
// float32 and the output is rounded to bf16 once.
// int8 pairs sign-extended as int16 (vpmovsxwd) hold q_even in bits 0-7 and q_odd above: the
// even weight is (lane << 24) >> 24, the odd one lane >> 8 (arithmetic shifts), both then
// converted to float32 (exact).
constexpr int kMaxNV = 4;  // blocks per group (64 outputs): run_packed's unit of L2 reuse
constexpr int kMaxMR = 5;  // activation rows per row tile (M = 16: 4 tiles of 4 rows)
// Blocks per register tile by rows (index MR - 1), so that accumulators (2 MR NB), weights and
// broadcasts fit the 16 ymm registers: 8, 8, 6, 8, 10 accumulators (8 keep both FMA ports busy
// through the latency of 4 although each takes 2 dependent FMAs per pair index; 3 x 2 would
// spill, 6 x 1 leaves no register free). A group of 4 blocks runs as 4 / NB register tiles one
// after the other. Measured on the 2-core EPYC, one thread, bf16 weights in L2: M = 1 13, 2 24,
// 4 31, 5 34, 16 (4 tiles of 4 rows) 35, 32 38 GMAC/s, of a peak of 2 FMA x 8 lanes x ~3 GHz = 48.
constexpr int kTileBlocks[kMaxMR] = {4, 2, 1, 1, 1};
// int8 from this many row tiles on: widen each group of blocks to bf16 once into an L2 buffer
// (then 2 integer ops per 8 weights and row tile instead of 5). Weights in L2: at 2 tiles
// widening in registers is faster (M = 8: 31 against 27 GMAC/s), at 4 equal (M = 16: 33), at 7
// the buffer is faster (M = 32: 37.5 against 35).
constexpr int64_t kWidenTiles = 3;
using XValue = float;      // the tiles broadcast float32 values of x

// x [M, 2 K2] bf16 -> float32 in `buf` (exact: a bf16 is the high half of its float32).
inline const XValue* tile_rows(const uint16_t* x, int64_t count, std::vector<XValue>& buf) {
  buf.resize(count);
  for (int64_t i = 0; i < count; ++i) {
    const uint32_t bits = static_cast<uint32_t>(x[i]) << 16;
    std::memcpy(&buf[i], &bits, sizeof(bits));
  }
  return buf.data();
}

// Float32 weights of 8 outputs for the inputs 2j (even) and 2j + 1 (odd); p: 8 lanes of pairs.
inline void split_pairs(const uint16_t* p, __m256& even, __m256& odd) {
  const __m256i lanes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  even = _mm256_castsi256_ps(_mm256_slli_epi32(lanes, 16));
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  odd = _mm256_castsi256_ps(_mm256_and_si256(lanes, high));
}

inline void split_pairs(const int8_t* p, __m256& even, __m256& odd) {
  const __m256i lanes = _mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  even = _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(lanes, 24), 24));
  odd = _mm256_cvtepi32_ps(_mm256_srai_epi32(lanes, 8));
}

// 8 float32 -> 8 bf16, round to nearest even (NaN stays a quiet NaN), as c10::BFloat16 rounds.
inline __m128i to_bf16(__m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  const __m256i bias = _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(bits, bias), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), nan);
  return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}

// y[0..valid) = bf16(acc * s), valid in [1, 8] (a partial group goes through a small buffer).
inline void store8(__m256 acc, __m256 s, at::BFloat16* y, int64_t valid) {
  const __m128i out = to_bf16(_mm256_mul_ps(acc, s));
  if (valid == 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y), out);
  } else {
    alignas(16) uint16_t part[8];
    _mm_store_si128(reinterpret_cast<__m128i*>(part), out);
    std::memcpy(y, part, valid * sizeof(uint16_t));
  }
}

// y[m][n0 + 8 h + l] = bf16(sums[m][h][l] * scale[n0 + 8 h + l]) (scale null: 1), columns >= N
// not written.
template <int MR, int NB>
void store_tile(const float (&sums)[MR][2 * NB][8], const float* scale, at::BFloat16* y,
                int64_t ldy, int64_t n0, int64_t N) {
  for (int h = 0; h < 2 * NB; ++h) {
    const int64_t n = n0 + 8 * h;
    const int64_t valid = std::min<int64_t>(8, N - n);
    if (valid <= 0) break;
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(valid)),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256 s = scale ? _mm256_maskload_ps(scale + n, mask) : _mm256_set1_ps(1.0f);
    for (int m = 0; m < MR; ++m) store8(_mm256_load_ps(sums[m][h]), s, y + m * ldy + n, valid);
  }
}

// One pair index of a register tile: acc[m][h] += x[m][0] * w_even + x[m][1] * w_odd, x[m] at
// x + m * ldx, half h (8 outputs) of block v at w + v * bstride + 16 h. The same FMAs in one of
// two orders, whichever keeps the tile in the 16 ymm registers (GCC spills the other): up to 2
// rows, every row's two broadcasts stay and the weight halves stream through (MR = 2, NB = 2:
// 8 accumulators + 4 broadcasts + 2 weights; at M = 2 24 GMAC/s against 16); more rows, the
// tile's weights stay and the rows' broadcasts stream (MR = 4, NB = 1: 8 + 4 weights + 2).
template <int MR, int NB, typename W>
[[gnu::always_inline]] inline void step(const float* x, int64_t ldx, const W* w, int64_t bstride,
                                        __m256 (&acc)[MR][2 * NB]) {
  // Loops unrolled by pragma, before GCC's scalar replacement: acc, indexed by constants only,
  // stays in registers (otherwise GCC keeps it in memory and stores it on every step).
  if constexpr (MR <= 2) {
    __m256 xe[MR], xo[MR];
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      xe[m] = _mm256_broadcast_ss(x + m * ldx);
      xo[m] = _mm256_broadcast_ss(x + m * ldx + 1);
    }
#pragma GCC unroll 16
    for (int h = 0; h < 2 * NB; ++h) {
      __m256 even, odd;
      split_pairs(w + (h / 2) * bstride + (h % 2) * 16, even, odd);
#pragma GCC unroll 16
      for (int m = 0; m < MR; ++m)
        acc[m][h] = _mm256_fmadd_ps(odd, xo[m], _mm256_fmadd_ps(even, xe[m], acc[m][h]));
    }
  } else {
    __m256 even[2 * NB], odd[2 * NB];
#pragma GCC unroll 16
    for (int h = 0; h < 2 * NB; ++h)
      split_pairs(w + (h / 2) * bstride + (h % 2) * 16, even[h], odd[h]);
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      const __m256 xe = _mm256_broadcast_ss(x + m * ldx);
      const __m256 xo = _mm256_broadcast_ss(x + m * ldx + 1);
#pragma GCC unroll 16
      for (int h = 0; h < 2 * NB; ++h)
        acc[m][h] = _mm256_fmadd_ps(odd[h], xo, _mm256_fmadd_ps(even[h], xe, acc[m][h]));
    }
  }
}

// One register tile, MR rows x NB blocks: y[m][n0 + 8 h + l] = sum_j x[m][2j] * w_even +
// x[m][2j+1] * w_odd (* scale) over the 2 NB halves h of the blocks (pair j of block v at
// w + v * bstride + 32 j). Returns the prefetch range left.
template <int MR, int NB, typename W>
Prefetch register_tile(const float* x, int64_t ldx, const W* w, int64_t bstride, int64_t K2,
                       const float* scale, at::BFloat16* y, int64_t ldy, int64_t n0, int64_t N,
                       Prefetch pf) {
  __m256 acc[MR][2 * NB];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 16
    for (int h = 0; h < 2 * NB; ++h) acc[m][h] = _mm256_setzero_ps();
  for (int64_t j = 0; j < K2; ++j) {
    pf.step();
    step<MR, NB>(x + 2 * j, ldx, w + j * kPair, bstride, acc);
  }
  alignas(32) float sums[MR][2 * NB][8];  // the stores index halves at run time: via memory
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 16
    for (int h = 0; h < 2 * NB; ++h) _mm256_store_ps(sums[m][h], acc[m][h]);
  store_tile<MR, NB>(sums, scale, y, ldy, n0, N);
  return pf;
}

// y[m][n0 + 16 v + l] = sum_j x[m][2j..2j+1] . p[v][j][l][0..1] (* scale) for m < MR, v < NV,
// as register tiles of kTileBlocks[MR - 1] blocks one after the other (the later ones read
// their blocks from L2). x: [MR rows, stride ldx] float32; the rest as the AVX-512 tile.
template <int MR, int NV, typename W>
void tile(const float* x, int64_t ldx, const W* w, int64_t bstride, int64_t K2,
          const float* scale, at::BFloat16* y, int64_t ldy, int64_t n0, int64_t N, Prefetch pf) {
  constexpr int NB = std::min(NV, kTileBlocks[MR - 1]);
  pf = register_tile<MR, NB>(x, ldx, w, bstride, K2, scale, y, ldy, n0, N, pf);
  if constexpr (NV > NB)
    tile<MR, NV - NB, W>(x, ldx, w + NB * bstride, bstride, K2, scale, y, ldy, n0 + NB * kLanes, N,
                         pf);
}

template <typename W>
TileFn<XValue, W> pick_tile(int mr, int nv) {  // mr in [1, kMaxMR], nv in [1, kMaxNV]
#define SG_ROW(R) {&tile<R, 1, W>, &tile<R, 2, W>, &tile<R, 3, W>, &tile<R, 4, W>}
  static const TileFn<XValue, W> table[kMaxMR][kMaxNV] = {SG_ROW(1), SG_ROW(2), SG_ROW(3),
                                                          SG_ROW(4), SG_ROW(5)};
#undef SG_ROW
  return table[mr - 1][nv - 1];
}

// Widen nv int8 block streams [K2][16][2] to bf16 pairs (exact), once per call when kWidenTiles
// or more row tiles reuse them: the bf16 tiles then split them with 2 integer ops per 8 lanes
// instead of 5.
void widen_blocks(const int8_t* q, int64_t bstride, int nv, int64_t K2, uint16_t* dst) {
  for (int v = 0; v < nv; ++v)
    for (int64_t i = 0; i < K2 * kPair; i += 16) {  // 8 lanes: 16 int8 -> 16 bf16
      __m256 even, odd;  // exact float32, so their high halves are the bf16 values
      split_pairs(q + v * bstride + i, even, odd);
      const __m256i high = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
      const __m256i pairs = _mm256_or_si256(_mm256_srli_epi32(_mm256_castps_si256(even), 16),
                                            _mm256_and_si256(_mm256_castps_si256(odd), high));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + v * K2 * kPair + i), pairs);
    }
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

#if SG_HAS_KERNELS
// Rows [0, M) in ceil(M / kMaxMR) tiles of near-equal height (M = 9: 5 + 4, not 6 + 3).
std::vector<int64_t> row_starts(int64_t M) {
  const int64_t tiles = (M + kMaxMR - 1) / kMaxMR;
  std::vector<int64_t> starts{0};
  for (int64_t t = 0; t < tiles; ++t) starts.push_back(starts.back() + M / tiles + (t < M % tiles));
  return starts;
}
#endif

// y[M, N] = x[M, 2 K2] @ unpack(w)^T (* scale): bf16 pairs (w bf16) or weight-only int8.
at::Tensor run_packed(const at::Tensor& x, const at::Tensor& w, const float* scale, int64_t N,
                      bool amx = false) {
  TORCH_CHECK(SG_HAS_KERNELS, "cpu_linear: built without AVX2+FMA or AVX512_BF16");
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
#if SG_HAS_KERNELS
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
  std::vector<XValue> xbuf;
  const XValue* xs = tile_rows(xp, M * 2 * K2, xbuf);
  const std::vector<int64_t> rows = row_starts(M);
  const bool reuse = rows.size() > 2;  // several row tiles read each weight block
  const int64_t bstride = K2 * kPair;  // values per block stream
  // Grain: a task streams >= ~64 KB of weights, so small layers do not pay a thread fork.
  const int64_t grain = std::max<int64_t>(1, (64 << 10) / (bstride * w.element_size()));
  const char* wbytes = static_cast<const char*>(w.data_ptr());
  const int64_t block_bytes = bstride * w.element_size();
  const int64_t tiles = static_cast<int64_t>(rows.size()) - 1;
  const bool widen = int8 && tiles >= kWidenTiles;
  at::parallel_for(0, Nb, grain, [&](int64_t b0, int64_t b1) {
    std::vector<uint16_t> wide(widen ? kMaxNV * bstride : 0);
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
        const XValue* xr = xs + rows[r] * 2 * K2;
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
        } else if (!widen) {  // few row tiles: widen in registers
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

bool available() { return SG_HAS_KERNELS; }

// The kernel set built: "avx512_bf16", "avx2" or "" (none).
std::string isa() { return SG_HAS_AVX512_BF16 ? "avx512_bf16" : SG_HAS_AVX2 ? "avx2" : ""; }

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
  m.def("isa() -> str");
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
  m.impl("isa", &isa);
}
