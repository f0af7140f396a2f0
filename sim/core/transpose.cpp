#include "core/transpose.hpp"

#include <algorithm>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace selfnorm {
namespace {

template <class T>
void transpose_scalar(const T* src, std::ptrdiff_t lds, std::int64_t i0, std::int64_t i1, std::int64_t j0,
                      std::int64_t j1, T* dst, std::ptrdiff_t ldd) {
  for (std::int64_t j = j0; j < j1; ++j) {
    for (std::int64_t i = i0; i < i1; ++i) dst[j * ldd + i] = src[i * lds + j];
  }
}

#if defined(__AVX512F__)
// The zero-masked forms of the shuffles throughout: the plain ones hand GCC 12 an undefined value
// that it warns about (PR 105593); with an all-ones mask they are the same instructions.

// A 16 x 16 float tile in four rounds of shuffles: 32-bit, 64-bit, then two 128-bit rounds.
inline void tile(const float* src, std::ptrdiff_t lds, float* dst, std::ptrdiff_t ldd) {
  __m512 r[16], t[16], u[16], v[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * lds);
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_maskz_unpacklo_ps(0xFFFF, r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_maskz_unpackhi_ps(0xFFFF, r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    u[4 * i + 0] = _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(0xFF, a, c));
    u[4 * i + 1] = _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(0xFF, a, c));
    u[4 * i + 2] = _mm512_castpd_ps(_mm512_maskz_unpacklo_pd(0xFF, b, d));
    u[4 * i + 3] = _mm512_castpd_ps(_mm512_maskz_unpackhi_pd(0xFF, b, d));
  }
  for (int h = 0; h < 2; ++h) {
    for (int k = 0; k < 4; ++k) {
      v[8 * h + k] = _mm512_maskz_shuffle_f32x4(0xFFFF, u[8 * h + k], u[8 * h + 4 + k], 0x88);
      v[8 * h + 4 + k] = _mm512_maskz_shuffle_f32x4(0xFFFF, u[8 * h + k], u[8 * h + 4 + k], 0xdd);
    }
  }
  for (int k = 0; k < 8; ++k) {
    _mm512_storeu_ps(dst + k * ldd, _mm512_maskz_shuffle_f32x4(0xFFFF, v[k], v[8 + k], 0x88));
    _mm512_storeu_ps(dst + (8 + k) * ldd, _mm512_maskz_shuffle_f32x4(0xFFFF, v[k], v[8 + k], 0xdd));
  }
}

// An 8 x 8 double tile: 64-bit, then two 128-bit rounds.
inline void tile(const double* src, std::ptrdiff_t lds, double* dst, std::ptrdiff_t ldd) {
  __m512d r[8], t[8], u[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm512_loadu_pd(src + i * lds);
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm512_maskz_unpacklo_pd(0xFF, r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_maskz_unpackhi_pd(0xFF, r[2 * i], r[2 * i + 1]);
  }
  for (int h = 0; h < 2; ++h) {
    u[4 * h + 0] = _mm512_maskz_shuffle_f64x2(0xFF, t[4 * h + 0], t[4 * h + 2], 0x88);
    u[4 * h + 1] = _mm512_maskz_shuffle_f64x2(0xFF, t[4 * h + 1], t[4 * h + 3], 0x88);
    u[4 * h + 2] = _mm512_maskz_shuffle_f64x2(0xFF, t[4 * h + 0], t[4 * h + 2], 0xdd);
    u[4 * h + 3] = _mm512_maskz_shuffle_f64x2(0xFF, t[4 * h + 1], t[4 * h + 3], 0xdd);
  }
  for (int k = 0; k < 4; ++k) {
    _mm512_storeu_pd(dst + k * ldd, _mm512_maskz_shuffle_f64x2(0xFF, u[k], u[4 + k], 0x88));
    _mm512_storeu_pd(dst + (4 + k) * ldd, _mm512_maskz_shuffle_f64x2(0xFF, u[k], u[4 + k], 0xdd));
  }
}
#endif

}  // namespace

template <class T>
void transpose(const T* src, std::ptrdiff_t lds, std::int64_t rows, std::int64_t cols, T* dst, std::ptrdiff_t ldd) {
#if defined(__AVX512F__)
  constexpr std::int64_t n = 64 / sizeof(T);  // tile side: one register per row
  const std::int64_t full_rows = rows / n * n, full_cols = cols / n * n;
  for (std::int64_t i0 = 0; i0 < full_rows; i0 += n) {
    for (std::int64_t j0 = 0; j0 < full_cols; j0 += n) tile(src + i0 * lds + j0, lds, dst + j0 * ldd + i0, ldd);
    transpose_scalar(src, lds, i0, i0 + n, full_cols, cols, dst, ldd);
  }
  for (std::int64_t j0 = 0; j0 < cols; j0 += 16) {
    transpose_scalar(src, lds, full_rows, rows, j0, std::min(cols, j0 + 16), dst, ldd);
  }
#else
  constexpr std::int64_t n = 16;
  for (std::int64_t i0 = 0; i0 < rows; i0 += n) {
    for (std::int64_t j0 = 0; j0 < cols; j0 += n) {
      transpose_scalar(src, lds, i0, std::min(rows, i0 + n), j0, std::min(cols, j0 + n), dst, ldd);
    }
  }
#endif
}

template void transpose<float>(const float*, std::ptrdiff_t, std::int64_t, std::int64_t, float*, std::ptrdiff_t);
template void transpose<double>(const double*, std::ptrdiff_t, std::int64_t, std::int64_t, double*, std::ptrdiff_t);

}  // namespace selfnorm
