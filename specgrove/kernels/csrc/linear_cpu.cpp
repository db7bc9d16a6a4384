// linear_cpu.cpp: small-M bf16 / weight-only int8 linears (AVX512_BF16); design notes in kernels/cpu_linear.py.
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

constexpr int64_t kRowsN = 4;  // output features per block
constexpr int64_t kRowsM = 4;  // activation rows per micro-kernel call

#if SG_HAS_BF16_KERNELS
// out[m][n] = sum_k x[m][k] * w[n][k] for m < MR <= 4, n < 4; K % 32 == 0.
template <int MR>
inline void micro_bf16(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t ldw,
                       int64_t K, float* out, int64_t ldo) {
  __m512 acc[MR][kRowsN];
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < kRowsN; ++n) acc[m][n] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 32) {
    __m512bh wv[kRowsN];
    for (int n = 0; n < kRowsN; ++n) wv[n] = (__m512bh)_mm512_loadu_si512(w + n * ldw + k);
    for (int m = 0; m < MR; ++m) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + m * ldx + k);
      for (int n = 0; n < kRowsN; ++n) acc[m][n] = _mm512_dpbf16_ps(acc[m][n], xv, wv[n]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int n = 0; n < kRowsN; ++n) out[m * ldo + n] = _mm512_reduce_add_ps(acc[m][n]);
}

inline void micro_rows(const uint16_t* x, int64_t ldx, int64_t mr, const uint16_t* w,
                       int64_t ldw, int64_t K, float* out, int64_t ldo) {
  switch (mr) {
    case 1: micro_bf16<1>(x, ldx, w, ldw, K, out, ldo); break;
    case 2: micro_bf16<2>(x, ldx, w, ldw, K, out, ldo); break;
    case 3: micro_bf16<3>(x, ldx, w, ldw, K, out, ldo); break;
    default: micro_bf16<4>(x, ldx, w, ldw, K, out, ldo); break;
  }
}

// Widen 4 int8 rows of length K to bf16 (exact for |q| <= 127).
inline void widen_int8(const int8_t* q, int64_t ldq, int64_t K, uint16_t* dst) {
  for (int n = 0; n < kRowsN; ++n)
    for (int64_t k = 0; k < K; k += 32) {
      const __m128i lo8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + n * ldq + k));
      const __m128i hi8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + n * ldq + k + 16));
      const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo8));
      const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi8));
      _mm512_storeu_si512(dst + n * K + k, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
}
#endif

// Float32 [M, N] results, columns [n0, n1) -> bf16 output (round to nearest even).
void store_bf16(const float* src, int64_t M, int64_t N, int64_t n0, int64_t n1, at::BFloat16* y) {
  for (int64_t m = 0; m < M; ++m) {
    int64_t n = n0;
#if SG_HAS_BF16_KERNELS
    for (; n + 16 <= n1; n += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + m * N + n),
                          (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + m * N + n)));
#endif
    for (; n < n1; ++n) y[m * N + n] = static_cast<at::BFloat16>(src[m * N + n]);
  }
}

void check(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(SG_HAS_BF16_KERNELS, "cpu_linear: built without AVX512_BF16");
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "cpu_linear: CPU tensors only");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1),
              "cpu_linear: x [M, K] and w [N, K]");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16, "cpu_linear: x must be bfloat16");
  TORCH_CHECK(x.size(1) % 32 == 0, "cpu_linear: K must be a multiple of 32");
  TORCH_CHECK(w.size(0) % kRowsN == 0, "cpu_linear: N must be a multiple of 4");
}

}  // namespace

// kind 0: bf16 weights; kind 1: int8 weights with per-row float scales.
at::Tensor run_linear(at::Tensor x, at::Tensor w, c10::optional<at::Tensor> scale) {
  check(x, w);
  x = x.contiguous();
  w = w.contiguous();
  const bool int8 = scale.has_value();
  TORCH_CHECK(int8 ? w.scalar_type() == at::kChar : w.scalar_type() == at::kBFloat16,
              "cpu_linear: weight dtype must be int8 (with scale) or bfloat16");
  at::Tensor s;
  if (int8) {
    s = scale->contiguous().to(at::kFloat);
    TORCH_CHECK(s.numel() == w.size(0), "cpu_linear: one scale per output feature");
  }
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  auto y = at::empty({M, N}, x.options());
  auto acc = at::empty({M, N}, x.options().dtype(at::kFloat));
#if SG_HAS_BF16_KERNELS
  const uint16_t* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  float* ap = acc.data_ptr<float>();
  const int64_t blocks = N / kRowsN;
  // Grain: enough blocks per task that a task streams >= ~64 KB of weights.
  const int64_t grain = std::max<int64_t>(1, (64 << 10) / (kRowsN * K * (int8 ? 1 : 2)));
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    std::vector<uint16_t> wide(int8 ? kRowsN * K : 0);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n = b * kRowsN;
      const uint16_t* wp;
      int64_t ldw = K;
      if (int8) {
        widen_int8(w.data_ptr<int8_t>() + n * K, K, K, wide.data());
        wp = wide.data();
      } else {
        wp = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>()) + n * K;
      }
      for (int64_t m = 0; m < M; m += kRowsM)
        micro_rows(xp + m * K, K, std::min(kRowsM, M - m), wp, ldw, K, ap + m * N + n, N);
      if (int8) {
        const float* sp = s.data_ptr<float>() + n;
        for (int64_t m = 0; m < M; ++m)
          for (int j = 0; j < kRowsN; ++j) ap[m * N + n + j] *= sp[j];
      }
    }
    store_bf16(ap, M, N, b0 * kRowsN, b1 * kRowsN, y.data_ptr<at::BFloat16>());
  });
#endif
  return y;
}

at::Tensor linear_bf16(at::Tensor x, at::Tensor w) { return run_linear(x, w, c10::nullopt); }
at::Tensor linear_int8(at::Tensor x, at::Tensor q, at::Tensor scale) {
  return run_linear(x, q, scale);
}
bool available() { return SG_HAS_BF16_KERNELS; }

TORCH_LIBRARY(specgrove_cpu_linear, m) {
  m.def("linear_bf16(Tensor x, Tensor w) -> Tensor");
  m.def("linear_int8(Tensor x, Tensor q, Tensor scale) -> Tensor");
  m.def("available() -> bool");
}

TORCH_LIBRARY_IMPL(specgrove_cpu_linear, CPU, m) {
  m.impl("linear_bf16", &linear_bf16);
  m.impl("linear_int8", &linear_int8);
}
TORCH_LIBRARY_IMPL(specgrove_cpu_linear, CompositeExplicitAutograd, m) { m.impl("available", &available); }
