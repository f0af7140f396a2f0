#include "core/gemm.hpp"

#include <algorithm>
#include <cstdint>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace selfnorm {
namespace {

// Length of the k blocks. Part of the numerics (see the determinism contract in gemm.hpp): it
// must not depend on the problem's shape or on the number of threads.
template <class T>
constexpr std::ptrdiff_t kKc = 512;

#if defined(__AVX512F__)

template <class T>
struct Simd;

template <>
struct Simd<float> {
  using V = __m512;
  using Mask = __mmask16;
  static constexpr int lanes = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load(Mask m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(Mask m, float* p, V v) { _mm512_mask_storeu_ps(p, m, v); }
  static V broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
};

template <>
struct Simd<double> {
  using V = __m512d;
  using Mask = __mmask8;
  static constexpr int lanes = 8;
  static V zero() { return _mm512_setzero_pd(); }
  static V load(const double* p) { return _mm512_loadu_pd(p); }
  static V load(Mask m, const double* p) { return _mm512_maskz_loadu_pd(m, p); }
  static void store(Mask m, double* p, V v) { _mm512_mask_storeu_pd(p, m, v); }
  static V broadcast(const double* p) { return _mm512_set1_pd(*p); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static V add(V a, V b) { return _mm512_add_pd(a, b); }
};

// Register tile: kMr rows of C by kNv vectors. 6 x 4 uses 24 accumulators, 4 B vectors and one
// broadcast: 29 of the 32 zmm registers.
constexpr int kMr = 6;
constexpr int kNv = 4;

// C[0:mr, 0:nv vectors] (+)= A[0:mr, 0:kc] B[0:kc, 0:nv vectors]; the last vector is masked.
// The accumulators are named through fully unrolled loops so that they stay in registers.
template <class T, int Mr, int Nv>
void micro_kernel(std::ptrdiff_t kc, const T* a, std::ptrdiff_t lda, const T* b, std::ptrdiff_t ldb, T* c,
                  std::ptrdiff_t ldc, bool overwrite, typename Simd<T>::Mask last) {
  using S = Simd<T>;
  using V = typename S::V;
  constexpr int L = S::lanes;
  V acc[Mr][Nv];
#pragma GCC unroll 8
  for (int i = 0; i < Mr; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < Nv; ++v) acc[i][v] = S::zero();
  }
  for (std::ptrdiff_t p = 0; p < kc; ++p) {
    V bv[Nv];
#pragma GCC unroll 4
    for (int v = 0; v < Nv; ++v) {
      bv[v] = (v == Nv - 1) ? S::load(last, b + p * ldb + v * L) : S::load(b + p * ldb + v * L);
    }
#pragma GCC unroll 8
    for (int i = 0; i < Mr; ++i) {
      const V av = S::broadcast(a + i * lda + p);
#pragma GCC unroll 4
      for (int v = 0; v < Nv; ++v) acc[i][v] = S::fma(av, bv[v], acc[i][v]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < Mr; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < Nv; ++v) {
      const typename S::Mask m = (v == Nv - 1) ? last : static_cast<typename S::Mask>(~0u);
      T* cp = c + i * ldc + v * L;
      S::store(m, cp, overwrite ? acc[i][v] : S::add(S::load(m, cp), acc[i][v]));
    }
  }
}

template <class T, int Mr>
void dispatch_nv(int nv, std::ptrdiff_t kc, const T* a, std::ptrdiff_t lda, const T* b, std::ptrdiff_t ldb,
                 T* c, std::ptrdiff_t ldc, bool overwrite, typename Simd<T>::Mask last) {
  switch (nv) {
    case 1: micro_kernel<T, Mr, 1>(kc, a, lda, b, ldb, c, ldc, overwrite, last); break;
    case 2: micro_kernel<T, Mr, 2>(kc, a, lda, b, ldb, c, ldc, overwrite, last); break;
    case 3: micro_kernel<T, Mr, 3>(kc, a, lda, b, ldb, c, ldc, overwrite, last); break;
    default: micro_kernel<T, Mr, 4>(kc, a, lda, b, ldb, c, ldc, overwrite, last); break;
  }
}

template <class T>
void gemm_impl(std::ptrdiff_t m, std::ptrdiff_t n, std::ptrdiff_t k, const T* a, std::ptrdiff_t lda,
               const T* b, std::ptrdiff_t ldb, T* c, std::ptrdiff_t ldc, GemmUpdate update) {
  using S = Simd<T>;
  constexpr std::ptrdiff_t L = S::lanes;
  constexpr std::ptrdiff_t nr_max = kNv * L;
  const std::ptrdiff_t kc_max = kKc<T>;
  for (std::ptrdiff_t pc = 0; pc < k; pc += kc_max) {
    const std::ptrdiff_t kc = std::min(kc_max, k - pc);
    const bool overwrite = pc == 0 && update == GemmUpdate::overwrite;
    for (std::ptrdiff_t jc = 0; jc < n; jc += nr_max) {
      const std::ptrdiff_t nr = std::min(nr_max, n - jc);
      const int nv = static_cast<int>((nr + L - 1) / L);
      const int tail = static_cast<int>(nr - (nv - 1) * L);
      const auto last = static_cast<typename S::Mask>(tail == L ? ~0u : ((1u << tail) - 1u));
      const T* bp = b + pc * ldb + jc;
      for (std::ptrdiff_t ic = 0; ic < m; ic += kMr) {
        const int mr = static_cast<int>(std::min<std::ptrdiff_t>(kMr, m - ic));
        const T* ap = a + ic * lda + pc;
        T* cp = c + ic * ldc + jc;
        switch (mr) {
          case 1: dispatch_nv<T, 1>(nv, kc, ap, lda, bp, ldb, cp, ldc, overwrite, last); break;
          case 2: dispatch_nv<T, 2>(nv, kc, ap, lda, bp, ldb, cp, ldc, overwrite, last); break;
          case 3: dispatch_nv<T, 3>(nv, kc, ap, lda, bp, ldb, cp, ldc, overwrite, last); break;
          case 4: dispatch_nv<T, 4>(nv, kc, ap, lda, bp, ldb, cp, ldc, overwrite, last); break;
          case 5: dispatch_nv<T, 5>(nv, kc, ap, lda, bp, ldb, cp, ldc, overwrite, last); break;
          default: dispatch_nv<T, 6>(nv, kc, ap, lda, bp, ldb, cp, ldc, overwrite, last); break;
        }
      }
    }
  }
}

constexpr std::string_view kBackend = "avx512";

#else  // portable kernel: same blocking and the same determinism contract, compiler-vectorised

constexpr std::ptrdiff_t kMr = 4;
constexpr std::ptrdiff_t kNr = 32;

template <class T>
void gemm_impl(std::ptrdiff_t m, std::ptrdiff_t n, std::ptrdiff_t k, const T* a, std::ptrdiff_t lda,
               const T* b, std::ptrdiff_t ldb, T* c, std::ptrdiff_t ldc, GemmUpdate update) {
  const std::ptrdiff_t kc_max = kKc<T>;
  for (std::ptrdiff_t pc = 0; pc < k; pc += kc_max) {
    const std::ptrdiff_t kc = std::min(kc_max, k - pc);
    const bool overwrite = pc == 0 && update == GemmUpdate::overwrite;
    for (std::ptrdiff_t jc = 0; jc < n; jc += kNr) {
      const std::ptrdiff_t nr = std::min(kNr, n - jc);
      for (std::ptrdiff_t ic = 0; ic < m; ic += kMr) {
        const std::ptrdiff_t mr = std::min(kMr, m - ic);
        T acc[kMr][kNr] = {};
        for (std::ptrdiff_t p = 0; p < kc; ++p) {
          const T* bp = b + (pc + p) * ldb + jc;
          for (std::ptrdiff_t i = 0; i < mr; ++i) {
            const T av = a[(ic + i) * lda + pc + p];
            for (std::ptrdiff_t j = 0; j < kNr; ++j) acc[i][j] += av * (j < nr ? bp[j] : T(0));
          }
        }
        for (std::ptrdiff_t i = 0; i < mr; ++i) {
          T* cp = c + (ic + i) * ldc + jc;
          for (std::ptrdiff_t j = 0; j < nr; ++j) cp[j] = overwrite ? acc[i][j] : cp[j] + acc[i][j];
        }
      }
    }
  }
}

constexpr std::string_view kBackend = "portable";

#endif

}  // namespace

template <class T>
void gemm(std::ptrdiff_t m, std::ptrdiff_t n, std::ptrdiff_t k, const T* a, std::ptrdiff_t lda, const T* b,
          std::ptrdiff_t ldb, T* c, std::ptrdiff_t ldc, GemmUpdate update) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    if (update == GemmUpdate::overwrite) {
      for (std::ptrdiff_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, T(0));
    }
    return;
  }
  gemm_impl(m, n, k, a, lda, b, ldb, c, ldc, update);
}

std::ptrdiff_t padded_ld(std::ptrdiff_t cols, std::size_t element_size) {
  const std::ptrdiff_t per_line = 64 / static_cast<std::ptrdiff_t>(element_size);
  std::ptrdiff_t ld = (cols + per_line - 1) / per_line * per_line;
  if (ld == 0) ld = per_line;
  if ((ld * static_cast<std::ptrdiff_t>(element_size)) % 1024 == 0) ld += per_line;
  return ld;
}

std::string_view gemm_backend() { return kBackend; }

template void gemm<float>(std::ptrdiff_t, std::ptrdiff_t, std::ptrdiff_t, const float*, std::ptrdiff_t,
                          const float*, std::ptrdiff_t, float*, std::ptrdiff_t, GemmUpdate);
template void gemm<double>(std::ptrdiff_t, std::ptrdiff_t, std::ptrdiff_t, const double*, std::ptrdiff_t,
                           const double*, std::ptrdiff_t, double*, std::ptrdiff_t, GemmUpdate);

}  // namespace selfnorm
