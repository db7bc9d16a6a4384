// elementwise_cpu.cpp: the small bfloat16 ops around the matmuls, one pass each: a decoder layer's
// RMSNorm, SiLU(gate) * up and rotate-half RoPE, and the greedy argmax over the logits; design
// notes and references in kernels/cpu_elementwise.py.
//
// Each op rounds to bfloat16 where the torch expression it replaces rounds (every bf16 torch op
// computes in float32 and rounds its result), so results agree with the references to the last
// bit except where float32 arithmetic itself differs (RMSNorm's sum order, exp's last ulp).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>
#include <c10/util/BFloat16.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "cpu_math.h"

namespace {

using bf16 = c10::BFloat16;
constexpr int64_t kGrainRows = 16;  // rows per task: small batches stay on one thread

// bfloat16 <-> float32 on the bits, branch-free so that `omp simd` loops vectorise (c10's
// conversions do not): widening is a shift; narrowing rounds to nearest even, NaN stays NaN.
inline float widen(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
inline uint16_t narrow(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return f != f ? uint16_t(0x7FC0) : static_cast<uint16_t>(rounded);
}
// float32 -> bfloat16 -> float32 (what a bf16 torch op's result goes through).
inline float round_bf16(float x) { return widen(narrow(x)); }
#if defined(__AVX512F__) && defined(__AVX512BF16__)
inline __m512 widen16(__m256i b) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16)); }
inline __m512 round16(__m512 x) { return widen16((__m256i)_mm512_cvtneps_pbh(x)); }  // VCVTNEPS2BF16: nearest even
#endif
#if defined(__AVX2__) && defined(__FMA__)
// 8 lanes of widen / narrow / round_bf16 (the same bit arithmetic; NaN -> 0x7FC0).
inline __m256 widen8(const uint16_t* p) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(b), 16));
}
inline __m256i narrow_bits8(__m256 x) {  // bf16 bits in the low half of each 32-bit lane
  const __m256i u = _mm256_castps_si256(x);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), nan);
}
inline void narrow8(uint16_t* p, __m256 x) {
  const __m256i r = narrow_bits8(x);
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);  // lanes 0, 2
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}
inline __m256 round8(__m256 x) { return _mm256_castsi256_ps(_mm256_slli_epi32(narrow_bits8(x), 16)); }
#endif
inline const uint16_t* bits(const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<bf16>()); }
inline uint16_t* bits_out(at::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<bf16>()); }

void check_bf16(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kBFloat16,
              "specgrove elementwise: ", what, " must be a bfloat16 CPU tensor");
}

// y = bf16(bf16(x * rsqrt(mean(x^2) + eps)) * w) per row of x [T, H]; w [H].
at::Tensor rms_norm(const at::Tensor& x_in, const at::Tensor& w_in, double eps) {
  check_bf16(x_in, "x");
  check_bf16(w_in, "weight");
  auto x = x_in.contiguous(), w = w_in.contiguous();
  const int64_t H = x.size(-1), T = H ? x.numel() / H : 0;
  TORCH_CHECK(w.numel() == H, "rms_norm: weight has ", w.numel(), " elements, rows ", H);
  auto y = at::empty(x.sizes(), x.options());
  const uint16_t* xp = bits(x);
  const uint16_t* wp = bits(w);
  uint16_t* yp = bits_out(y);
  at::parallel_for(0, T, kGrainRows, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const uint16_t* xr = xp + t * H;
      uint16_t* yr = yp + t * H;
      float ss = 0;
#pragma omp simd reduction(+ : ss)
      for (int64_t i = 0; i < H; ++i) ss += widen(xr[i]) * widen(xr[i]);
      const float r = 1.0f / std::sqrt(ss / static_cast<float>(H) + static_cast<float>(eps));
#pragma omp simd
      for (int64_t i = 0; i < H; ++i) yr[i] = narrow(round_bf16(widen(xr[i]) * r) * widen(wp[i]));
    }
  });
  return y;
}

// out[t, i] = bf16(bf16(silu(g)) * u) with g = gu[t, i], u = gu[t, I + i]; gu [T, 2I] -> [T, I].
at::Tensor silu_mul(const at::Tensor& gu_in) {
  check_bf16(gu_in, "gate_up");
  auto gu = gu_in.contiguous();
  const int64_t I = gu.size(-1) / 2, T = I ? gu.numel() / (2 * I) : 0;
  TORCH_CHECK(gu.size(-1) == 2 * I, "silu_mul: the last dimension must be even");
  auto sizes = gu.sizes().vec();
  sizes.back() = I;
  auto out = at::empty(sizes, gu.options());
  const uint16_t* src = bits(gu);
  uint16_t* dst = bits_out(out);
  at::parallel_for(0, T, kGrainRows, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const uint16_t* g = src + t * 2 * I;
      const uint16_t* u = g + I;
      uint16_t* o = dst + t * I;
      int64_t i = 0;
#if defined(__AVX512F__) && defined(__AVX512BF16__)
      // gcc does not vectorise the scalar loop below (the exp); 16 lanes by hand
      for (; i < I; i += 16) {
        const __mmask16 live = I - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (I - i)) - 1);
        const __m512 a = widen16(_mm256_maskz_loadu_epi16(live, g + i));
        const __m512 b = widen16(_mm256_maskz_loadu_epi16(live, u + i));
        const __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), a));
        const __m512 silu = round16(_mm512_div_ps(a, _mm512_add_ps(_mm512_set1_ps(1.0f), e)));
        _mm256_mask_storeu_epi16(o + i, live, (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(silu, b)));
      }
#elif defined(__AVX2__) && defined(__FMA__)
      // 8 lanes by hand as well (the tail below: fewer than 8 columns)
      for (; i + 8 <= I; i += 8) {
        const __m256 a = widen8(g + i), b = widen8(u + i);
        const __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), a));
        const __m256 silu = round8(_mm256_div_ps(a, _mm256_add_ps(_mm256_set1_ps(1.0f), e)));
        narrow8(o + i, _mm256_mul_ps(silu, b));
      }
#endif
#pragma omp simd
      for (int64_t j = i; j < I; ++j) {
        const float a = widen(g[j]);
        o[j] = narrow(round_bf16(a / (1.0f + exp_poly(-a))) * widen(u[j]));
      }
    }
  });
  return out;
}

// Rotate-half RoPE of x [T, H, D] (any strides, last dim contiguous) with cos/sin [T, D/2]:
// out = cat(x1 c - x2 s, x2 c + x1 s), each product and sum rounded as the torch expression does.
// Returns a contiguous [T, H, D].
at::Tensor rope(const at::Tensor& x, const at::Tensor& cos_in, const at::Tensor& sin_in) {
  check_bf16(x, "x");
  check_bf16(cos_in, "cos");
  check_bf16(sin_in, "sin");
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1, "rope: x must be [T, H, D] with a contiguous last dim");
  const int64_t T = x.size(0), H = x.size(1), D = x.size(2), half = D / 2;
  TORCH_CHECK(D % 2 == 0, "rope: odd head dim");
  auto c = cos_in.reshape({T, half}).contiguous(), s = sin_in.reshape({T, half}).contiguous();
  auto out = at::empty({T, H, D}, x.options());
  const uint16_t* xp = bits(x);
  const uint16_t* cp = bits(c);
  const uint16_t* sp = bits(s);
  uint16_t* op = bits_out(out);
  const int64_t st = x.stride(0), sh = x.stride(1);
  at::parallel_for(0, T, kGrainRows, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const uint16_t* ct = cp + t * half;
      const uint16_t* stt = sp + t * half;
      for (int64_t h = 0; h < H; ++h) {
        const uint16_t* xr = xp + t * st + h * sh;
        uint16_t* o = op + (t * H + h) * D;
#pragma omp simd
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = widen(xr[i]), x2 = widen(xr[half + i]);
          const float cv = widen(ct[i]), sv = widen(stt[i]);
          o[i] = narrow(round_bf16(x1 * cv) - round_bf16(x2 * sv));
          o[half + i] = narrow(round_bf16(x2 * cv) + round_bf16(x1 * sv));
        }
      }
    }
  });
  return out;
}

// Greedy tokens: the index of each row's maximum of logits [N, V], the first one on ties and the
// first NaN if there is one (torch.argmax's rules). AVX-512: one pass, each lane keeping its best
// value and the first index that held it (a strict > keeps the first); then the smallest index
// among the lanes holding the row's best. A row with a NaN takes the scalar loop.
int64_t argmax_row_scalar(const uint16_t* row, int64_t V) {
  int64_t index = 0;
  float best = widen(row[0]);
  for (int64_t v = 0; v < V && best == best; ++v) {
    const float x = widen(row[v]);
    if (x > best || x != x) best = x, index = v;
  }
  return index;
}

int64_t argmax_row(const uint16_t* row, int64_t V) {
#if defined(__AVX512F__)
  __m512 vbest = _mm512_set1_ps(-INFINITY);
  __m512i vindex = _mm512_setzero_si512();
  __m512i current = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16);
  __mmask16 nan = 0;
  for (int64_t v = 0; v < V; v += 16) {
    const __mmask16 live = V - v >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (V - v)) - 1);
    const __m256i raw = _mm256_maskz_loadu_epi16(live, row + v);
    const __m512 x = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
    nan |= _mm512_mask_cmp_ps_mask(live, x, x, _CMP_UNORD_Q);
    const __mmask16 better = _mm512_mask_cmp_ps_mask(live, x, vbest, _CMP_GT_OQ);
    vbest = _mm512_mask_mov_ps(vbest, better, x);
    vindex = _mm512_mask_mov_epi32(vindex, better, current);
    current = _mm512_add_epi32(current, step);
  }
  if (nan) return argmax_row_scalar(row, V);
  const float best = _mm512_reduce_max_ps(vbest);
  const __mmask16 holders = _mm512_cmp_ps_mask(vbest, _mm512_set1_ps(best), _CMP_EQ_OQ);
  return _mm512_mask_reduce_min_epi32(holders, vindex);  // an all -inf row: every lane, index 0
#elif defined(__AVX2__) && defined(__FMA__)
  // AVX2: the same one pass over whole 8-lane blocks; the tail (indices above every lane's)
  // continues the scan in scalar with the same strict >.
  __m256 vbest = _mm256_set1_ps(-INFINITY);
  __m256i vindex = _mm256_setzero_si256();
  __m256i current = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i step = _mm256_set1_epi32(8);
  __m256 nan = _mm256_setzero_ps();
  const int64_t whole = V / 8 * 8;
  for (int64_t v = 0; v < whole; v += 8) {
    const __m256 x = widen8(row + v);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    const __m256 better = _mm256_cmp_ps(x, vbest, _CMP_GT_OQ);
    vbest = _mm256_blendv_ps(vbest, x, better);
    vindex = _mm256_blendv_epi8(vindex, current, _mm256_castps_si256(better));
    current = _mm256_add_epi32(current, step);
  }
  if (_mm256_movemask_ps(nan)) return argmax_row_scalar(row, V);
  float best = hmax256(vbest);
  const int holders = _mm256_movemask_ps(_mm256_cmp_ps(vbest, _mm256_set1_ps(best), _CMP_EQ_OQ));
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), vindex);
  int64_t index = std::numeric_limits<int64_t>::max();
  for (int l = 0; l < 8; ++l)
    if (holders >> l & 1) index = std::min<int64_t>(index, lanes[l]);  // all -inf: every lane, 0
  for (int64_t v = whole; v < V; ++v) {
    const float x = widen(row[v]);
    if (x != x) return v;  // the first NaN (none before the tail)
    if (x > best) best = x, index = v;
  }
  return index;
#else
  return argmax_row_scalar(row, V);
#endif
}

at::Tensor argmax_rows(const at::Tensor& logits_in) {
  check_bf16(logits_in, "logits");
  auto logits = logits_in.contiguous();
  TORCH_CHECK(logits.dim() == 2 && logits.size(1) > 0 && logits.size(1) < (int64_t(1) << 31),
              "argmax_rows: logits must be [N, V], 0 < V < 2^31");
  const int64_t N = logits.size(0), V = logits.size(1);
  auto out = at::empty({N}, logits.options().dtype(at::kLong));
  const uint16_t* src = bits(logits);
  int64_t* dst = out.data_ptr<int64_t>();
  at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) dst[n] = argmax_row(src + n * V, V);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(specgrove_cpu_elementwise, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("silu_mul(Tensor gate_up) -> Tensor");
  m.def("rope(Tensor x, Tensor cos, Tensor sin) -> Tensor");
  m.def("argmax_rows(Tensor logits) -> Tensor");
}

TORCH_LIBRARY_IMPL(specgrove_cpu_elementwise, CPU, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("silu_mul", &silu_mul);
  m.impl("rope", &rope);
  m.impl("argmax_rows", &argmax_rows);
}
