// tree_attention_cpu.cpp: paged tree attention on CPU; design notes in kernels/cpu_attention.py.
// Light headers (not torch/extension.h, whose pybind11 + full ATen cost ~36 s of compile).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu_math.h"
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif
// AVX2 + FMA paths where AVX-512 is missing (the AVX-512 paths take precedence).
#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
#define SPECGROVE_AVX2 1
#endif

namespace {

constexpr int64_t kChunk = 32;            // keys per online-softmax step
constexpr int64_t kTileQ = 16;            // queries per group
constexpr int64_t kMinKeysPerPart = 128;  // never split a key range finer than this
constexpr int64_t kItemsPerThread = 4;    // split key ranges until there are this many items
constexpr int64_t kRowsForTranspose = 8;  // rows per group from which keys are transposed

// ---- element conversion (storage dtype -> accumulation dtype) -------------------------------

template <typename scalar_t, typename acc_t>
inline void load_row(const scalar_t* src, acc_t* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<acc_t>(src[i]);
}

// bfloat16 is the top half of a float32: widen by a 16-bit shift (vectorises).
template <>
inline void load_row<c10::BFloat16, float>(const c10::BFloat16* src, float* dst, int64_t n) {
  const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
  uint32_t* d = reinterpret_cast<uint32_t*>(dst);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) d[i] = static_cast<uint32_t>(s[i]) << 16;
}

// ---- exp ------------------------------------------------------------------------------------

inline float exp_acc(float x) { return exp_poly(x); }
inline double exp_acc(double x) { return std::exp(x); }


// ---- inner products ---------------------------------------------------------------------------

// sum_d a[d] * b[d]. AVX-512: one 16-lane accumulator and one shuffle-tree reduction per dot
// (gcc's epilogue for an `omp simd` reduction adds the 16 lanes one by one).
inline float dot(const float* a, const float* b, int64_t n) {
#if defined(__AVX512F__)
  if (n % 16 == 0) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16)
      acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
    return _mm512_reduce_add_ps(acc);
  }
#elif defined(SPECGROVE_AVX2)
  // two 8-lane accumulators (FMA latency), one shuffle-tree reduction
  if (n % 16 == 0) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), a1);
    }
    return hsum256(_mm256_add_ps(a0, a1));
  }
  if (n % 8 == 0) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 8)
      acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    return hsum256(acc);
  }
#endif
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}
inline double dot(const double* a, const double* b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Scores of `rows` query rows against a transposed key chunk kt[D][kChunk]:
// s[r][j] = sum_d q[r][d] * kt[d][j]. Vectorised over keys, so no horizontal sums: the form
// for many rows per key (trees, prefill), where the transpose is paid once for all rows.
template <typename acc_t>
inline void scores_transposed(const acc_t* q, const acc_t* kt, acc_t* s, int64_t rows,
                              int64_t D) {
  for (int64_t r = 0; r < rows; ++r) {
    acc_t sr[kChunk] = {};
    const acc_t* qr = q + r * D;
    for (int64_t d = 0; d < D; ++d) {
      const acc_t qd = qr[d];
      const acc_t* kd = kt + d * kChunk;
#pragma omp simd
      for (int64_t j = 0; j < kChunk; ++j) sr[j] += qd * kd[j];
    }
    std::memcpy(s + r * kChunk, sr, sizeof(sr));
  }
}

#if defined(SPECGROVE_AVX2)
// pv_update on dims [0, 8 NB) of acc / v rows (row stride D): NB <= 8 accumulators in registers
// (16 ymm in all), V read as FMA memory operands.
template <int NB>
inline void pv_block_avx2(float* acc, float alpha, const float* p, const float* v, int64_t n,
                          int64_t D) {
  __m256 a[NB];
  const __m256 al = _mm256_set1_ps(alpha);
  for (int b = 0; b < NB; ++b) a[b] = _mm256_mul_ps(_mm256_loadu_ps(acc + 8 * b), al);
  for (int64_t j = 0; j < n; ++j) {
    const __m256 pj = _mm256_set1_ps(p[j]);
    for (int b = 0; b < NB; ++b) a[b] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + j * D + 8 * b), a[b]);
  }
  for (int b = 0; b < NB; ++b) _mm256_storeu_ps(acc + 8 * b, a[b]);
}
#endif

// acc[d] = acc[d] * alpha + sum_j p[j] * v[j][d], acc kept in registers across the keys.
inline void pv_update(float* acc, float alpha, const float* p, const float* v, int64_t n,
                      int64_t D) {
#if defined(__AVX512F__)
  if (D % 16 == 0 && D <= 256) {
    __m512 a[16];
    const int64_t nb = D / 16;
    const __m512 al = _mm512_set1_ps(alpha);
    for (int64_t b = 0; b < nb; ++b) a[b] = _mm512_mul_ps(_mm512_loadu_ps(acc + 16 * b), al);
    for (int64_t j = 0; j < n; ++j) {
      const __m512 pj = _mm512_set1_ps(p[j]);
      for (int64_t b = 0; b < nb; ++b)
        a[b] = _mm512_fmadd_ps(pj, _mm512_loadu_ps(v + j * D + 16 * b), a[b]);
    }
    for (int64_t b = 0; b < nb; ++b) _mm512_storeu_ps(acc + 16 * b, a[b]);
    return;
  }
#elif defined(SPECGROVE_AVX2)
  if (D % 8 == 0) {  // 64 dims at a time
    for (int64_t d0 = 0; d0 < D; d0 += 64) {
      switch (std::min<int64_t>(64, D - d0) / 8) {
        case 8: pv_block_avx2<8>(acc + d0, alpha, p, v + d0, n, D); break;
        case 7: pv_block_avx2<7>(acc + d0, alpha, p, v + d0, n, D); break;
        case 6: pv_block_avx2<6>(acc + d0, alpha, p, v + d0, n, D); break;
        case 5: pv_block_avx2<5>(acc + d0, alpha, p, v + d0, n, D); break;
        case 4: pv_block_avx2<4>(acc + d0, alpha, p, v + d0, n, D); break;
        case 3: pv_block_avx2<3>(acc + d0, alpha, p, v + d0, n, D); break;
        case 2: pv_block_avx2<2>(acc + d0, alpha, p, v + d0, n, D); break;
        default: pv_block_avx2<1>(acc + d0, alpha, p, v + d0, n, D); break;
      }
    }
    return;
  }
#endif
  for (int64_t d = 0; d < D; ++d) acc[d] *= alpha;
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < D; ++d) acc[d] += p[j] * v[j * D + d];
}
inline void pv_update(double* acc, double alpha, const double* p, const double* v, int64_t n,
                      int64_t D) {
  for (int64_t d = 0; d < D; ++d) acc[d] *= alpha;
  for (int64_t j = 0; j < n; ++j)
    for (int64_t d = 0; d < D; ++d) acc[d] += p[j] * v[j * D + d];
}



#if defined(__AVX512F__)
// Scores of 4 rows at once against kt[D][32] (kChunk == 32): 8 accumulators, each key vector
// loaded once per 4 rows, query elements broadcast from memory.
inline void scores4_avx512(const float* q, const float* kt, float* s, int64_t D) {
  __m512 a[4][2];
  for (int r = 0; r < 4; ++r) a[r][0] = a[r][1] = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; ++d) {
    const __m512 k0 = _mm512_loadu_ps(kt + d * 32), k1 = _mm512_loadu_ps(kt + d * 32 + 16);
    for (int r = 0; r < 4; ++r) {
      const __m512 qd = _mm512_set1_ps(q[r * D + d]);
      a[r][0] = _mm512_fmadd_ps(qd, k0, a[r][0]);
      a[r][1] = _mm512_fmadd_ps(qd, k1, a[r][1]);
    }
  }
  for (int r = 0; r < 4; ++r) {
    _mm512_storeu_ps(s + r * 32, a[r][0]);
    _mm512_storeu_ps(s + r * 32 + 16, a[r][1]);
  }
}

// acc[r] = acc[r] * alpha[r] + sum_j p[r][j] v[j] for 4 rows of head dim 64: 16 accumulators,
// each V row loaded once per 4 rows.
inline void pv4_d64_avx512(float* acc, const float* alpha, const float* p, int64_t p_stride,
                           const float* v, int64_t n) {
  __m512 a[4][4];
  for (int r = 0; r < 4; ++r) {
    const __m512 al = _mm512_set1_ps(alpha[r]);
    for (int b = 0; b < 4; ++b) a[r][b] = _mm512_mul_ps(_mm512_loadu_ps(acc + r * 64 + 16 * b), al);
  }
  for (int64_t j = 0; j < n; ++j) {
    const __m512 v0 = _mm512_loadu_ps(v + j * 64), v1 = _mm512_loadu_ps(v + j * 64 + 16);
    const __m512 v2 = _mm512_loadu_ps(v + j * 64 + 32), v3 = _mm512_loadu_ps(v + j * 64 + 48);
    for (int r = 0; r < 4; ++r) {
      const __m512 pj = _mm512_set1_ps(p[r * p_stride + j]);
      a[r][0] = _mm512_fmadd_ps(pj, v0, a[r][0]);
      a[r][1] = _mm512_fmadd_ps(pj, v1, a[r][1]);
      a[r][2] = _mm512_fmadd_ps(pj, v2, a[r][2]);
      a[r][3] = _mm512_fmadd_ps(pj, v3, a[r][3]);
    }
  }
  for (int r = 0; r < 4; ++r)
    for (int b = 0; b < 4; ++b) _mm512_storeu_ps(acc + r * 64 + 16 * b, a[r][b]);
}
#endif

#if defined(SPECGROVE_AVX2)
// Scores of 4 rows at once against kt[D][32] (kChunk == 32), one 16-key half at a time:
// 8 accumulators, each key vector loaded once per 4 rows, query elements broadcast from memory.
inline void scores4_avx2(const float* q, const float* kt, float* s, int64_t D) {
  for (int64_t h = 0; h < 32; h += 16) {
    __m256 a[4][2];
    for (int r = 0; r < 4; ++r) a[r][0] = a[r][1] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; ++d) {
      const __m256 k0 = _mm256_loadu_ps(kt + d * 32 + h), k1 = _mm256_loadu_ps(kt + d * 32 + h + 8);
      for (int r = 0; r < 4; ++r) {
        const __m256 qd = _mm256_broadcast_ss(q + r * D + d);
        a[r][0] = _mm256_fmadd_ps(qd, k0, a[r][0]);
        a[r][1] = _mm256_fmadd_ps(qd, k1, a[r][1]);
      }
    }
    for (int r = 0; r < 4; ++r) {
      _mm256_storeu_ps(s + r * 32 + h, a[r][0]);
      _mm256_storeu_ps(s + r * 32 + h + 8, a[r][1]);
    }
  }
}
#endif

// Scores for `rows` rows against the transposed chunk: 4-row AVX-512 / AVX2 blocks where possible.
inline void scores_rows(const float* q, const float* kt, float* s, int64_t rows, int64_t D) {
  int64_t r = 0;
#if defined(__AVX512F__)
  static_assert(kChunk == 32, "scores4_avx512 assumes 32-key chunks");
  for (; r + 4 <= rows; r += 4) scores4_avx512(q + r * D, kt, s + r * kChunk, D);
#elif defined(SPECGROVE_AVX2)
  static_assert(kChunk == 32, "scores4_avx2 assumes 32-key chunks");
  for (; r + 4 <= rows; r += 4) scores4_avx2(q + r * D, kt, s + r * kChunk, D);
#endif
  scores_transposed<float>(q + r * D, kt, s + r * kChunk, rows - r, D);
}
inline void scores_rows(const double* q, const double* kt, double* s, int64_t rows, int64_t D) {
  scores_transposed<double>(q, kt, s, rows, D);
}

// ---- online softmax step ------------------------------------------------------------------------

// One online-softmax step of one query row over the scores s[0, n) of a key chunk (masked keys
// hold -inf): on return s holds exp(s - m_new) (0 where masked), m and l are updated and
// *alpha is the factor exp(m_old - m_new) the caller applies to the row's accumulator.
// Returns false (nothing changed) when the row sees none of these keys.
template <typename acc_t>
inline bool softmax_step_generic(acc_t* s, int64_t n, acc_t* m, acc_t* l, acc_t* alpha) {
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  acc_t row_max = neg_inf;
  for (int64_t j = 0; j < n; ++j) row_max = std::max(row_max, s[j]);
  if (row_max == neg_inf) return false;
  const acc_t m_new = std::max(*m, row_max);
  *alpha = *m == neg_inf ? acc_t(0) : exp_acc(*m - m_new);
  acc_t sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    s[j] = s[j] == neg_inf ? acc_t(0) : exp_acc(s[j] - m_new);
    sum += s[j];
  }
  *m = m_new;
  *l = *l * *alpha + sum;
  return true;
}

#if defined(__AVX512F__)
inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
}
#elif defined(SPECGROVE_AVX2)
inline __m256i tail_mask8(int64_t left) {  // lanes [0, min(left, 8)) set
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::min<int64_t>(left, 8))),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
#endif

inline bool softmax_step(float* s, int64_t n, float* m, float* l, float* alpha) {
#if defined(__AVX512F__)
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const __m512 vninf = _mm512_set1_ps(neg_inf);
  __m512 vmax = vninf;
  for (int64_t j = 0; j < n; j += 16)
    vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(vninf, tail_mask(n - j), s + j));
  const float row_max = _mm512_reduce_max_ps(vmax);
  if (row_max == neg_inf) return false;
  const float m_new = std::max(*m, row_max);
  *alpha = *m == neg_inf ? 0.0f : std::exp(*m - m_new);
  const __m512 vm = _mm512_set1_ps(m_new);
  __m512 vsum = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = tail_mask(n - j);
    const __m512 v = _mm512_mask_loadu_ps(vninf, k, s + j);
    const __mmask16 seen = _mm512_mask_cmp_ps_mask(k, v, vninf, _CMP_NEQ_OQ);
    const __m512 e = _mm512_maskz_mov_ps(seen, exp512(_mm512_sub_ps(v, vm)));
    _mm512_mask_storeu_ps(s + j, k, e);
    vsum = _mm512_add_ps(vsum, e);
  }
  *m = m_new;
  *l = *l * *alpha + _mm512_reduce_add_ps(vsum);
  return true;
#elif defined(SPECGROVE_AVX2)
  // as AVX-512 in 8 lanes; masked-off tail lanes read as -inf and are neither stored nor summed
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const __m256 vninf = _mm256_set1_ps(neg_inf);
  __m256 vmax = vninf;
  for (int64_t j = 0; j < n; j += 8) {
    const __m256i k = tail_mask8(n - j);
    const __m256 v = _mm256_blendv_ps(vninf, _mm256_maskload_ps(s + j, k), _mm256_castsi256_ps(k));
    vmax = _mm256_max_ps(vmax, v);
  }
  const float row_max = hmax256(vmax);
  if (row_max == neg_inf) return false;
  const float m_new = std::max(*m, row_max);
  *alpha = *m == neg_inf ? 0.0f : std::exp(*m - m_new);
  const __m256 vm = _mm256_set1_ps(m_new);
  __m256 vsum = _mm256_setzero_ps();
  for (int64_t j = 0; j < n; j += 8) {
    const __m256i k = tail_mask8(n - j);
    const __m256 v = _mm256_blendv_ps(vninf, _mm256_maskload_ps(s + j, k), _mm256_castsi256_ps(k));
    const __m256 seen = _mm256_cmp_ps(v, vninf, _CMP_NEQ_OQ);
    const __m256 e = _mm256_and_ps(seen, exp256(_mm256_sub_ps(v, vm)));
    _mm256_maskstore_ps(s + j, k, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  *m = m_new;
  *l = *l * *alpha + hsum256(vsum);
  return true;
#else
  return softmax_step_generic<float>(s, n, m, l, alpha);
#endif
}
inline bool softmax_step(double* s, int64_t n, double* m, double* l, double* alpha) {
  return softmax_step_generic<double>(s, n, m, l, alpha);
}

// ---- problem description --------------------------------------------------------------------

struct Problem {
  const void* q; const void* k; const void* v; void* out;
  const int32_t* block_tables; const int32_t* kv_lens; const int32_t* cu_q;
  const bool* tree_mask; const int32_t* tree_lens;  // null when causal
  int64_t num_q_heads, num_kv_heads, head_dim, page;
  int64_t sq_t, sq_h, so_t, so_h;              // q / out strides (elements)
  int64_t sk_b, sk_s, sk_h, sv_b, sv_s, sv_h;  // cache strides
  int64_t s_table, s_mask;
  double scale;
};

// One sequence x KV head x query tile; its key range [0, kv_end) split into `parts` items.
struct Group {
  int64_t seq, kv_head, q0, q1;  // queries [q0, q1) of the sequence
  int64_t q_begin, q_len, kv_len, win0, full_end, kv_end;
  int64_t parts, part_base;      // partial-result slot of part 0 (when parts > 1)
};

struct Item { int64_t group, k0, k1, part; };

template <typename acc_t>
struct Partials {  // per part: running max, sum, accumulator of every row
  std::vector<acc_t> m, l, acc;
};

// Does row token `t` (index within the sequence) see key `key`?
inline bool visible(const Problem& p, const Group& g, int64_t t, int64_t key) {
  if (p.tree_mask == nullptr) return key <= g.win0 + t;
  if (key < g.win0) return true;
  return p.tree_mask[(g.q_begin + t) * p.s_mask + (key - g.win0)];
}

template <typename scalar_t, typename acc_t>
void attend(const Problem& p, const Group& g, const Item& it, acc_t* qs, acc_t* kf, acc_t* kt, acc_t* vf,
            acc_t* s, acc_t* alpha, acc_t* m, acc_t* l, acc_t* acc) {
  const int64_t G = p.num_q_heads / p.num_kv_heads, D = p.head_dim;
  const int64_t rows = (g.q1 - g.q0) * G;
  const scalar_t* q = static_cast<const scalar_t*>(p.q);
  const scalar_t* kc = static_cast<const scalar_t*>(p.k);
  const scalar_t* vc = static_cast<const scalar_t*>(p.v);
  const int32_t* table = p.block_tables + g.seq * p.s_table;
  const acc_t scale = static_cast<acc_t>(p.scale);
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();

  // Q tile, pre-scaled: row r = query q0 + r / G of query head kv_head * G + r % G.
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = g.q0 + r / G, h = g.kv_head * G + r % G;
    load_row<scalar_t, acc_t>(q + (g.q_begin + t) * p.sq_t + h * p.sq_h, qs + r * D, D);
    for (int64_t d = 0; d < D; ++d) qs[r * D + d] *= scale;
    m[r] = neg_inf;
    l[r] = 0;
    std::fill(acc + r * D, acc + (r + 1) * D, acc_t(0));
  }

  // Few rows per key (decoding): one dot per (row, key). Many rows (trees, prefill): transpose
  // the chunk's keys once and score all rows with key-vectorised FMAs.
  const bool transposed = rows >= kRowsForTranspose;
  for (int64_t c0 = it.k0; c0 < it.k1; c0 += kChunk) {
    const int64_t n = std::min(kChunk, it.k1 - c0);
    for (int64_t j = 0; j < n; ++j) {  // page walk: logical key -> physical block and offset
      const int64_t key = c0 + j;
      const int64_t block = table[key / p.page], off = key % p.page;
      load_row<scalar_t, acc_t>(kc + block * p.sk_b + off * p.sk_s + g.kv_head * p.sk_h,
                                kf + j * D, D);
      load_row<scalar_t, acc_t>(vc + block * p.sv_b + off * p.sv_s + g.kv_head * p.sv_h,
                                vf + j * D, D);
    }
    if (transposed) {
      for (int64_t d = 0; d < D; ++d) {
        acc_t* ktd = kt + d * kChunk;
        for (int64_t j = 0; j < n; ++j) ktd[j] = kf[j * D + d];
        for (int64_t j = n; j < kChunk; ++j) ktd[j] = 0;
      }
      scores_rows(qs, kt, s, rows, D);
    } else {
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < n; ++j) s[r * kChunk + j] = dot(qs + r * D, kf + j * D, D);
    }
    const bool masked = c0 + n > g.full_end;
    // Softmax step per row; rows that see none of these keys get alpha = 1 and p = 0.
    for (int64_t r = 0; r < rows; ++r) {
      acc_t* sr = s + r * kChunk;
      if (masked) {
        const int64_t t = g.q0 + r / G;
        for (int64_t j = 0; j < n; ++j)
          if (!visible(p, g, t, c0 + j)) sr[j] = neg_inf;
      }
      if (!softmax_step(sr, n, m + r, l + r, alpha + r)) {
        alpha[r] = 1;
        std::fill(sr, sr + n, acc_t(0));
      }
    }
    int64_t r = 0;
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<acc_t, float>) {
      if (D == 64)
        for (; r + 4 <= rows; r += 4)
          pv4_d64_avx512(acc + r * D, alpha + r, s + r * kChunk, kChunk, vf, n);
    }
#endif
    for (; r < rows; ++r) pv_update(acc + r * D, alpha[r], s + r * kChunk, vf, n, D);
  }
}

template <typename scalar_t>
inline void store_row(scalar_t* dst, const float* src, float inv, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i] * inv);
}
template <typename scalar_t>
inline void store_row(scalar_t* dst, const double* src, double inv, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i] * inv);
}

template <typename scalar_t, typename acc_t>
void write_rows(const Problem& p, const Group& g, const acc_t* l, const acc_t* acc) {
  const int64_t G = p.num_q_heads / p.num_kv_heads, D = p.head_dim;
  scalar_t* out = static_cast<scalar_t*>(p.out);
  for (int64_t r = 0; r < (g.q1 - g.q0) * G; ++r) {
    const int64_t t = g.q0 + r / G, h = g.kv_head * G + r % G;
    const acc_t inv = l[r] > 0 ? acc_t(1) / l[r] : acc_t(0);  // a row that saw no key: zeros
    store_row<scalar_t>(out + (g.q_begin + t) * p.so_t + h * p.so_h, acc + r * D, inv, D);
  }
}

template <typename scalar_t, typename acc_t>
void run(const Problem& p, std::vector<Group>& groups, std::vector<Item>& items,
         int64_t num_parts) {
  const int64_t G = p.num_q_heads / p.num_kv_heads, D = p.head_dim;
  const int64_t max_rows = kTileQ * G;
  Partials<acc_t> parts;
  parts.m.resize(num_parts * max_rows);
  parts.l.resize(num_parts * max_rows);
  parts.acc.resize(num_parts * max_rows * D);
  std::atomic<int64_t> next{0};
  const int64_t num_items = static_cast<int64_t>(items.size());
  const int64_t tasks = std::min<int64_t>(at::get_num_threads(), num_items);
  at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) {
    std::vector<acc_t> qs(max_rows * D), kf(kChunk * D), kt(kChunk * D), vf(kChunk * D);
    std::vector<acc_t> s(max_rows * kChunk), alpha(max_rows);
    std::vector<acc_t> m(max_rows), l(max_rows), acc(max_rows * D);
    for (int64_t i = next++; i < num_items; i = next++) {
      const Item& it = items[i];
      const Group& g = groups[it.group];
      if (g.parts == 1) {
        attend<scalar_t, acc_t>(p, g, it, qs.data(), kf.data(), kt.data(), vf.data(), s.data(), alpha.data(), m.data(),
                                l.data(), acc.data());
        write_rows<scalar_t, acc_t>(p, g, l.data(), acc.data());
      } else {
        const int64_t slot = g.part_base + it.part;
        attend<scalar_t, acc_t>(p, g, it, qs.data(), kf.data(), kt.data(), vf.data(), s.data(), alpha.data(),
                                parts.m.data() + slot * max_rows, parts.l.data() + slot * max_rows,
                                parts.acc.data() + slot * max_rows * D);
      }
    }
  });
  // Merge the parts of split groups: rescale each to the common max (log-sum-exp merge).
  std::vector<acc_t> l(max_rows), acc(max_rows * D);
  for (const Group& g : groups) {
    if (g.parts == 1) continue;
    const int64_t rows = (g.q1 - g.q0) * G;
    for (int64_t r = 0; r < rows; ++r) {
      acc_t mx = -std::numeric_limits<acc_t>::infinity();
      for (int64_t k = 0; k < g.parts; ++k)
        mx = std::max(mx, parts.m[(g.part_base + k) * max_rows + r]);
      l[r] = 0;
      std::fill(acc.begin() + r * D, acc.begin() + (r + 1) * D, acc_t(0));
      if (mx == -std::numeric_limits<acc_t>::infinity()) continue;
      for (int64_t k = 0; k < g.parts; ++k) {
        const int64_t slot = g.part_base + k;
        const acc_t mk = parts.m[slot * max_rows + r];
        if (mk == -std::numeric_limits<acc_t>::infinity()) continue;
        const acc_t w = std::exp(mk - mx);
        l[r] += w * parts.l[slot * max_rows + r];
        const acc_t* src = parts.acc.data() + (slot * max_rows + r) * D;
        for (int64_t d = 0; d < D; ++d) acc[r * D + d] += w * src[d];
      }
    }
    write_rows<scalar_t, acc_t>(p, g, l.data(), acc.data());
  }
}

}  // namespace

at::Tensor tree_attention_cpu(at::Tensor q, at::Tensor k_cache, at::Tensor v_cache,
                                 at::Tensor block_tables, at::Tensor kv_lens,
                                 at::Tensor cu_seqlens_q, c10::optional<at::Tensor> tree_mask,
                                 c10::optional<at::Tensor> tree_lens, double scale) {
  TORCH_CHECK(q.device().is_cpu(), "tree_attention_cpu: tensors must be on the CPU");
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes(),
              "tree_attention_cpu: q [T, Hq, D], k_cache/v_cache [num_blocks, block_size, Hkv, D]");
  TORCH_CHECK(k_cache.scalar_type() == q.scalar_type() && v_cache.scalar_type() == q.scalar_type(),
              "tree_attention_cpu: q, k_cache and v_cache dtypes differ");
  TORCH_CHECK(q.size(2) == k_cache.size(3) && q.size(1) % k_cache.size(2) == 0,
              "tree_attention_cpu: head dims differ or Hq is not a multiple of Hkv");
  TORCH_CHECK(q.stride(2) == 1 && k_cache.stride(3) == 1 && v_cache.stride(3) == 1,
              "tree_attention_cpu: q and the caches need a contiguous last dim");
  TORCH_CHECK(q.size(1) / k_cache.size(2) <= 64, "tree_attention_cpu: GQA group above 64");
  auto bt = block_tables.contiguous(), lens = kv_lens.contiguous(), cu = cu_seqlens_q.contiguous();
  TORCH_CHECK(bt.scalar_type() == at::kInt && lens.scalar_type() == at::kInt &&
                  cu.scalar_type() == at::kInt, "tree_attention_cpu: index tensors must be int32");
  const bool tree = tree_mask.has_value();
  TORCH_CHECK(tree == tree_lens.has_value(), "tree_attention_cpu: give tree_mask and tree_lens together");
  at::Tensor mask, tlens;
  if (tree) {
    mask = tree_mask->contiguous();
    tlens = tree_lens->contiguous();
    TORCH_CHECK(mask.scalar_type() == at::kBool && mask.dim() == 2 && mask.size(0) == q.size(0),
                "tree_attention_cpu: tree_mask must be bool [T, W]");
    TORCH_CHECK(tlens.scalar_type() == at::kInt, "tree_attention_cpu: tree_lens must be int32");
  }
  auto out = at::empty_like(q);
  const int64_t num_seqs = lens.size(0);
  Problem p{q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), out.data_ptr(),
            bt.data_ptr<int32_t>(), lens.data_ptr<int32_t>(), cu.data_ptr<int32_t>(),
            tree ? mask.data_ptr<bool>() : nullptr, tree ? tlens.data_ptr<int32_t>() : nullptr,
            q.size(1), k_cache.size(2), q.size(2), k_cache.size(1),
            q.stride(0), q.stride(1), out.stride(0), out.stride(1),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
            bt.size(0) ? bt.stride(0) : 0, tree ? mask.stride(0) : 0, scale};

  // Groups: (sequence, KV head, query tile) with the key range each needs.
  std::vector<Group> groups;
  int64_t total_keys = 0;
  for (int64_t b = 0; b < num_seqs; ++b) {
    const int64_t q_begin = p.cu_q[b], q_len = p.cu_q[b + 1] - q_begin, kv_len = p.kv_lens[b];
    for (int64_t q0 = 0; q0 < q_len; q0 += kTileQ) {
      const int64_t q1 = std::min(q_len, q0 + kTileQ);
      Group g{b, 0, q0, q1, q_begin, q_len, kv_len, 0, 0, 0, 1, 0};
      if (tree) {
        g.win0 = kv_len - p.tree_lens[b];
        g.full_end = g.win0;
        g.kv_end = kv_len;
      } else {
        g.win0 = kv_len - q_len;            // key position of query 0
        g.full_end = g.win0 + q0 + 1;       // every row of the tile sees keys below this
        g.kv_end = std::min(kv_len, g.win0 + q1);
      }
      g.full_end = std::max<int64_t>(0, g.full_end);
      g.kv_end = std::max<int64_t>(0, g.kv_end);
      for (int64_t h = 0; h < p.num_kv_heads; ++h) {
        g.kv_head = h;
        groups.push_back(g);
        total_keys += g.kv_end;
      }
    }
  }
  // Split long key ranges (Flash-Decoding) until every thread has a few items.
  const int64_t want = kItemsPerThread * at::get_num_threads();
  std::vector<Item> items;
  int64_t num_parts = 0;
  for (int64_t gi = 0; gi < static_cast<int64_t>(groups.size()); ++gi) {
    Group& g = groups[gi];
    int64_t parts = 1;
    if (static_cast<int64_t>(groups.size()) < want && total_keys > 0) {
      // Share of the wanted items proportional to this group's keys.
      const int64_t share = (want * g.kv_end + total_keys - 1) / total_keys;
      parts = std::max<int64_t>(1, std::min(share, g.kv_end / kMinKeysPerPart));
    }
    g.parts = parts;
    g.part_base = parts > 1 ? num_parts : 0;
    if (parts > 1) num_parts += parts;
    // Part boundaries on chunk multiples, so every part but the last is whole chunks.
    const int64_t chunks = (g.kv_end + kChunk - 1) / kChunk;
    for (int64_t k = 0; k < parts; ++k) {
      const int64_t k0 = std::min(g.kv_end, chunks * k / parts * kChunk);
      const int64_t k1 = std::min(g.kv_end, chunks * (k + 1) / parts * kChunk);
      items.push_back(Item{gi, k0, k1, k});
    }
  }
  if (items.empty()) return out;
  switch (q.scalar_type()) {
    case at::kBFloat16: run<c10::BFloat16, float>(p, groups, items, num_parts); break;
    case at::kHalf: run<c10::Half, float>(p, groups, items, num_parts); break;
    case at::kFloat: run<float, float>(p, groups, items, num_parts); break;
    case at::kDouble: run<double, double>(p, groups, items, num_parts); break;
    default: TORCH_CHECK(false, "tree_attention_cpu: unsupported dtype ", q.scalar_type());
  }
  return out;
}

TORCH_LIBRARY(specgrove_cpu, m) {
  m.def("tree_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, "
        "Tensor kv_lens, Tensor cu_seqlens_q, Tensor? tree_mask, Tensor? tree_lens, "
        "float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(specgrove_cpu, CPU, m) { m.impl("tree_attention", &tree_attention_cpu); }
