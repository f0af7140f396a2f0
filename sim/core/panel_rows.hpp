// The engine's per-element work after each product, by panel row (kPanel<T> consecutive samples
// of one unit) or by a unit's whole row of a block (forward_row, backward_row: the same sums in the
// same order): the statistics' sums in double, the count of non-finite entries, and stores that
// bypass the cache for data read back only much later.
//
// Sums go to 16 double lanes (two AVX-512 vectors): element k of a panel row always goes to lane
// k % 16, and the lanes are combined in a fixed order, so results depend only on the data and the
// order of the rows, never on the thread that ran them. The AVX2 and portable builds use the same
// lanes (four ymm vectors, or an array).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#define SELFNORM_PANEL_SIMD 1
#endif

#include "core/gemm.hpp"

namespace selfnorm {

// N running sums in double (N a power of two) folded in a fixed order: lane k + N/2 into lane k,
// then halves, down to one.
template <int N>
inline double fold_lanes(const double* t) {
  static_assert(N >= 2 && (N & (N - 1)) == 0);
  double r[N / 2];
  for (int k = 0; k < N / 2; ++k) r[k] = t[k] + t[k + N / 2];
  for (int w = N / 4; w >= 1; w /= 2) {
    for (int k = 0; k < w; ++k) r[k] += r[k + w];
  }
  return r[0];
}

// 16 running sums in double, folded 16 -> 8 -> 4 -> 2 -> 1 in a fixed order.
struct Lanes16 {
#if defined(__AVX512F__)
  __m512d v[2] = {_mm512_setzero_pd(), _mm512_setzero_pd()};
  double total() const {
    alignas(64) double t[16];
    _mm512_store_pd(t, v[0]);
    _mm512_store_pd(t + 8, v[1]);
    return fold_lanes<16>(t);
  }
#elif defined(__AVX2__)
  __m256d v[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd()};
  double total() const {
    alignas(32) double t[16];
    for (int i = 0; i < 4; ++i) _mm256_store_pd(t + 4 * i, v[i]);
    return fold_lanes<16>(t);
  }
#else
  double v[16] = {};
  double total() const { return fold_lanes<16>(v); }
#endif
};

// Sums of the forward statistics of a run of panel rows: deviations of h from pre_shift and their
// squares, squared deviations of x from act_shift, and (per row) the sum of x.
struct ForwardLanes {
  Lanes16 pre_s1, pre_s2, act_s2;
};

#if !defined(SELFNORM_PANEL_SIMD)
template <class T>
std::int64_t forward_panel_row_portable(const T* h, const T* x, int m, double pre_shift, double act_shift,
                                        ForwardLanes& s, Lanes16& row_sum) {
  std::int64_t bad = 0;
  for (int k = 0; k < m; ++k) {
    bad += !(std::isfinite(h[k]) && std::isfinite(x[k]));
    const double dh = static_cast<double>(h[k]) - pre_shift;
    const double xd = static_cast<double>(x[k]);
    const double dx = xd - act_shift;
    s.pre_s1.v[k % 16] += dh;
    s.pre_s2.v[k % 16] += dh * dh;
    s.act_s2.v[k % 16] += dx * dx;
    row_sum.v[k % 16] += xd;
  }
  return bad;
}

template <class T>
std::int64_t backward_panel_row_portable(const T* g, const T* d, T* gh, int m, Lanes16& sx, Lanes16& sh) {
  std::int64_t bad = 0;
  for (int k = 0; k < kPanel<T>; ++k) {
    const T v = k < m ? g[k] * d[k] : T(0);
    gh[k] = v;
    if (k >= m) continue;
    bad += !std::isfinite(v);
    const double a = static_cast<double>(g[k]), b = static_cast<double>(v);
    sx.v[k % 16] += a * a;
    sh.v[k % 16] += b * b;
  }
  return bad;
}
#endif

#if defined(__AVX512F__)
namespace panel_detail {

// The entries of v under mask k that are inf or NaN: v - v is NaN exactly there.
inline __mmask16 nonfinite(__m512 v, __mmask16 k) {
  return _mm512_mask_cmp_ps_mask(k, _mm512_sub_ps(v, v), _mm512_setzero_ps(), _CMP_NEQ_UQ);
}
inline __mmask8 nonfinite(__m512d v, __mmask8 k) {
  return _mm512_mask_cmp_pd_mask(k, _mm512_sub_pd(v, v), _mm512_setzero_pd(), _CMP_NEQ_UQ);
}

// Eight values (h, x) in double into lanes 8 * half .. 8 * half + 7; k masks the valid ones.
inline void add_forward(__m512d h, __m512d x, __mmask8 k, int half, double pre_shift, double act_shift,
                        ForwardLanes& s, Lanes16& row_sum) {
  const __m512d dh = _mm512_maskz_sub_pd(k, h, _mm512_set1_pd(pre_shift));
  const __m512d dx = _mm512_maskz_sub_pd(k, x, _mm512_set1_pd(act_shift));
  s.pre_s1.v[half] = _mm512_add_pd(s.pre_s1.v[half], dh);
  s.pre_s2.v[half] = _mm512_fmadd_pd(dh, dh, s.pre_s2.v[half]);
  s.act_s2.v[half] = _mm512_fmadd_pd(dx, dx, s.act_s2.v[half]);
  row_sum.v[half] = _mm512_mask_add_pd(row_sum.v[half], k, row_sum.v[half], x);
}

inline void add_squares(__m512d g, __m512d gh, __mmask8 k, int half, Lanes16& sx, Lanes16& sh) {
  const __m512d a = _mm512_maskz_mov_pd(k, g);
  const __m512d b = _mm512_maskz_mov_pd(k, gh);
  sx.v[half] = _mm512_fmadd_pd(a, a, sx.v[half]);
  sh.v[half] = _mm512_fmadd_pd(b, b, sh.v[half]);
}

// The lower and upper eight floats of v in double. The zero-masked forms of the intrinsics: the
// plain ones pass GCC 12 an undefined value that it then warns about (PR 105593).
inline __m512d lo(__m512 v) {
  return _mm512_maskz_cvtps_pd(0xFF, _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, _mm512_castps_pd(v), 0)));
}
inline __m512d hi(__m512 v) {
  return _mm512_maskz_cvtps_pd(0xFF, _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, _mm512_castps_pd(v), 1)));
}
inline __mmask16 first(int m) { return m >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << m) - 1u); }

}  // namespace panel_detail
#elif defined(__AVX2__)
namespace panel_detail {

// All ones in the lanes of elements k0 .. k0 + 3 that are below m.
inline __m256d first4(int k0, int m) {
  const __m256i k = _mm256_add_epi64(_mm256_set1_epi64x(k0), _mm256_setr_epi64x(0, 1, 2, 3));
  return _mm256_castsi256_pd(_mm256_cmpgt_epi64(_mm256_set1_epi64x(m), k));
}
inline __m256 first8(int k0, int m) {
  const __m256i k = _mm256_add_epi32(_mm256_set1_epi32(k0), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(m), k));
}

// All ones where v is inf or NaN: v - v is NaN exactly there.
inline __m256d nonfinite(__m256d v) {
  const __m256d d = _mm256_sub_pd(v, v);
  return _mm256_cmp_pd(d, d, _CMP_UNORD_Q);
}
inline __m256 nonfinite(__m256 v) {
  const __m256 d = _mm256_sub_ps(v, v);
  return _mm256_cmp_ps(d, d, _CMP_UNORD_Q);
}

// Four values (h, x) in double into lanes 4 group .. 4 group + 3 (group = element / 4 % 4); ok
// selects the valid ones. Returns how many valid ones are not finite in h or in x.
inline int add_forward(__m256d h, __m256d x, __m256d ok, int group, double pre_shift, double act_shift,
                       ForwardLanes& s, Lanes16& row_sum) {
  const int bad = __builtin_popcount(_mm256_movemask_pd(_mm256_and_pd(ok, _mm256_or_pd(nonfinite(h), nonfinite(x)))));
  const __m256d dh = _mm256_and_pd(ok, _mm256_sub_pd(h, _mm256_set1_pd(pre_shift)));
  const __m256d dx = _mm256_and_pd(ok, _mm256_sub_pd(x, _mm256_set1_pd(act_shift)));
  s.pre_s1.v[group] = _mm256_add_pd(s.pre_s1.v[group], dh);
  s.pre_s2.v[group] = _mm256_fmadd_pd(dh, dh, s.pre_s2.v[group]);
  s.act_s2.v[group] = _mm256_fmadd_pd(dx, dx, s.act_s2.v[group]);
  row_sum.v[group] = _mm256_add_pd(row_sum.v[group], _mm256_and_pd(ok, x));
  return bad;
}

inline void add_squares(__m256d g, __m256d gh, __m256d ok, int group, Lanes16& sx, Lanes16& sh) {
  const __m256d a = _mm256_and_pd(ok, g);
  const __m256d b = _mm256_and_pd(ok, gh);
  sx.v[group] = _mm256_fmadd_pd(a, a, sx.v[group]);
  sh.v[group] = _mm256_fmadd_pd(b, b, sh.v[group]);
}

inline __m256d lo(__m256 v) { return _mm256_cvtps_pd(_mm256_castps256_ps128(v)); }
inline __m256d hi(__m256 v) { return _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)); }

}  // namespace panel_detail
#endif

// The first m (<= kPanel<T>) entries of one panel row of h and x = f(h) into the sums; returns how
// many of them are not finite in h or in x.
inline std::int64_t forward_panel_row(const float* h, const float* x, int m, double pre_shift, double act_shift,
                                      ForwardLanes& s, Lanes16& row_sum) {
#if defined(__AVX512F__)
  using namespace panel_detail;
  const __mmask16 k0 = first(m), k1 = first(m - 16 > 0 ? m - 16 : 0);
  const __m512 h0 = _mm512_loadu_ps(h), h1 = _mm512_loadu_ps(h + 16);
  const __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
  const int bad = __builtin_popcount(nonfinite(h0, k0) | nonfinite(x0, k0)) +
                  __builtin_popcount(nonfinite(h1, k1) | nonfinite(x1, k1));
  add_forward(lo(h0), lo(x0), static_cast<__mmask8>(k0), 0, pre_shift, act_shift, s, row_sum);
  add_forward(hi(h0), hi(x0), static_cast<__mmask8>(k0 >> 8), 1, pre_shift, act_shift, s, row_sum);
  add_forward(lo(h1), lo(x1), static_cast<__mmask8>(k1), 0, pre_shift, act_shift, s, row_sum);
  add_forward(hi(h1), hi(x1), static_cast<__mmask8>(k1 >> 8), 1, pre_shift, act_shift, s, row_sum);
  return bad;
#elif defined(__AVX2__)
  using namespace panel_detail;
  int bad = 0;
  for (int c = 0; c < 4; ++c) {
    const __m256 h8 = _mm256_loadu_ps(h + 8 * c), x8 = _mm256_loadu_ps(x + 8 * c);
    bad += add_forward(lo(h8), lo(x8), first4(8 * c, m), (2 * c) % 4, pre_shift, act_shift, s, row_sum);
    bad += add_forward(hi(h8), hi(x8), first4(8 * c + 4, m), (2 * c + 1) % 4, pre_shift, act_shift, s, row_sum);
  }
  return bad;
#else
  return forward_panel_row_portable(h, x, m, pre_shift, act_shift, s, row_sum);
#endif
}

inline std::int64_t forward_panel_row(const double* h, const double* x, int m, double pre_shift, double act_shift,
                                      ForwardLanes& s, Lanes16& row_sum) {
#if defined(__AVX512F__)
  using namespace panel_detail;
  const __mmask16 k = first(m);
  const auto k0 = static_cast<__mmask8>(k), k1 = static_cast<__mmask8>(k >> 8);
  const __m512d h0 = _mm512_loadu_pd(h), h1 = _mm512_loadu_pd(h + 8);
  const __m512d x0 = _mm512_loadu_pd(x), x1 = _mm512_loadu_pd(x + 8);
  const int bad = __builtin_popcount(nonfinite(h0, k0) | nonfinite(x0, k0)) +
                  __builtin_popcount(nonfinite(h1, k1) | nonfinite(x1, k1));
  add_forward(h0, x0, k0, 0, pre_shift, act_shift, s, row_sum);
  add_forward(h1, x1, k1, 1, pre_shift, act_shift, s, row_sum);
  return bad;
#elif defined(__AVX2__)
  using namespace panel_detail;
  int bad = 0;
  for (int c = 0; c < 4; ++c) {
    bad += add_forward(_mm256_loadu_pd(h + 4 * c), _mm256_loadu_pd(x + 4 * c), first4(4 * c, m), c, pre_shift,
                       act_shift, s, row_sum);
  }
  return bad;
#else
  return forward_panel_row_portable(h, x, m, pre_shift, act_shift, s, row_sum);
#endif
}

#if defined(__AVX2__) && !defined(__AVX512F__)
namespace panel_detail {

// Eight consecutive values from p, in double.
inline void load8(const float* p, __m256d& lo8, __m256d& hi8) {
  const __m256 v = _mm256_loadu_ps(p);
  lo8 = lo(v);
  hi8 = hi(v);
}
inline void load8(const double* p, __m256d& lo8, __m256d& hi8) {
  lo8 = _mm256_loadu_pd(p);
  hi8 = _mm256_loadu_pd(p + 4);
}

// One lane group's share of four (h, x) values: the arithmetic of add_forward, without the mask.
struct GroupSums {
  __m256d s1, s2, a2, rs;
  void add(__m256d h, __m256d x, __m256d pre_shift, __m256d act_shift) {
    const __m256d dh = _mm256_sub_pd(h, pre_shift);
    const __m256d dx = _mm256_sub_pd(x, act_shift);
    s1 = _mm256_add_pd(s1, dh);
    s2 = _mm256_fmadd_pd(dh, dh, s2);
    a2 = _mm256_fmadd_pd(dx, dx, a2);
    rs = _mm256_add_pd(rs, x);
  }
};

// Whether all 16 lanes of s are finite. For a sum of squares: true until an entry that is inf or
// NaN has been added (or, in float64 only, a square past the largest double).
inline bool lanes_finite(const Lanes16& s) {
  const __m256d t = _mm256_add_pd(_mm256_add_pd(s.v[0], s.v[1]), _mm256_add_pd(s.v[2], s.v[3]));
  return _mm256_movemask_pd(nonfinite(t)) == 0;
}

}  // namespace panel_detail
#endif

// Entries among the first count where h or x is not finite.
template <class T>
inline std::int64_t count_nonfinite(const T* h, const T* x, std::int64_t count) {
  std::int64_t bad = 0;
  for (std::int64_t k = 0; k < count; ++k) bad += !(std::isfinite(h[k]) && std::isfinite(x[k]));
  return bad;
}

// The statistics' sums of one unit's row of `count` samples, h and x = f(h) at consecutive
// addresses (readable up to the next multiple of kPanel<T>): the same sums, in the same order, as
// forward_panel_row over the row's panels. With count_bad, returns how many of the entries are not
// finite in h or in x, else 0.
//
// With AVX2 the 16 lanes of four sums do not fit in the 16 ymm registers alongside the data, so
// the row is swept twice, for lanes 0-7 and then 8-15, each sweep's sums in registers. Entries
// are not checked one by one: they are counted only where the sums of squares have stopped being
// finite, since an inf or NaN in h or x makes them so and nothing else can in float32.
template <class T>
inline std::int64_t forward_row(const T* h, const T* x, std::int64_t count, double pre_shift, double act_shift,
                                ForwardLanes& s, Lanes16& row_sum, bool count_bad) {
#if defined(__AVX2__) && !defined(__AVX512F__)
  using namespace panel_detail;
  const __m256d ps = _mm256_set1_pd(pre_shift), as = _mm256_set1_pd(act_shift);
  const std::int64_t full = count / 16 * 16;
  for (int g = 0; g < 4; g += 2) {
    GroupSums a{s.pre_s1.v[g], s.pre_s2.v[g], s.act_s2.v[g], row_sum.v[g]};
    GroupSums b{s.pre_s1.v[g + 1], s.pre_s2.v[g + 1], s.act_s2.v[g + 1], row_sum.v[g + 1]};
    for (std::int64_t s0 = 0; s0 < full; s0 += 16) {
      __m256d h0, h1, x0, x1;
      load8(h + s0 + 4 * g, h0, h1);
      load8(x + s0 + 4 * g, x0, x1);
      a.add(h0, x0, ps, as);
      b.add(h1, x1, ps, as);
    }
    s.pre_s1.v[g] = a.s1, s.pre_s2.v[g] = a.s2, s.act_s2.v[g] = a.a2, row_sum.v[g] = a.rs;
    s.pre_s1.v[g + 1] = b.s1, s.pre_s2.v[g + 1] = b.s2, s.act_s2.v[g + 1] = b.a2, row_sum.v[g + 1] = b.rs;
    if (full < count) {  // the last, partial 16 samples, masked as in forward_panel_row
      __m256d h0, h1, x0, x1;
      load8(h + full + 4 * g, h0, h1);
      load8(x + full + 4 * g, x0, x1);
      const int m = static_cast<int>(count - full);
      add_forward(h0, x0, first4(4 * g, m), g, pre_shift, act_shift, s, row_sum);
      add_forward(h1, x1, first4(4 * g + 4, m), g + 1, pre_shift, act_shift, s, row_sum);
    }
  }
  // Once not finite, the sums stay so: every later row of the block is counted entry by entry.
  if (!count_bad || (lanes_finite(s.pre_s2) && lanes_finite(s.act_s2))) return 0;
  return count_nonfinite(h, x, count);
#else
  std::int64_t bad = 0;
  for (std::int64_t q = 0; q * kPanel<T> < count; ++q) {
    const int m = static_cast<int>(std::min<std::int64_t>(kPanel<T>, count - q * kPanel<T>));
    bad += forward_panel_row(h + q * kPanel<T>, x + q * kPanel<T>, m, pre_shift, act_shift, s, row_sum);
  }
  return count_bad ? bad : 0;
#endif
}

// gh = g * d for the first m entries of one panel row (zeros in the rest of gh's kPanel<T>), the
// squares of g and gh into the sums; returns how many entries of gh are not finite.
inline std::int64_t backward_panel_row(const float* g, const float* d, float* gh, int m, Lanes16& sx, Lanes16& sh) {
#if defined(__AVX512F__)
  using namespace panel_detail;
  const __mmask16 k0 = first(m), k1 = first(m - 16 > 0 ? m - 16 : 0);
  const __m512 g0 = _mm512_loadu_ps(g), g1 = _mm512_loadu_ps(g + 16);
  const __m512 p0 = _mm512_maskz_mul_ps(k0, g0, _mm512_maskz_loadu_ps(k0, d));
  const __m512 p1 = _mm512_maskz_mul_ps(k1, g1, _mm512_maskz_loadu_ps(k1, d + 16));
  _mm512_storeu_ps(gh, p0);
  _mm512_storeu_ps(gh + 16, p1);
  add_squares(lo(g0), lo(p0), static_cast<__mmask8>(k0), 0, sx, sh);
  add_squares(hi(g0), hi(p0), static_cast<__mmask8>(k0 >> 8), 1, sx, sh);
  add_squares(lo(g1), lo(p1), static_cast<__mmask8>(k1), 0, sx, sh);
  add_squares(hi(g1), hi(p1), static_cast<__mmask8>(k1 >> 8), 1, sx, sh);
  return __builtin_popcount(nonfinite(p0, k0)) + __builtin_popcount(nonfinite(p1, k1));
#elif defined(__AVX2__)
  using namespace panel_detail;
  int bad = 0;
  for (int c = 0; c < 4; ++c) {
    const __m256 ok = first8(8 * c, m);
    const __m256 g8 = _mm256_loadu_ps(g + 8 * c);
    const __m256 p8 = _mm256_and_ps(ok, _mm256_mul_ps(g8, _mm256_maskload_ps(d + 8 * c, _mm256_castps_si256(ok))));
    _mm256_storeu_ps(gh + 8 * c, p8);
    bad += __builtin_popcount(_mm256_movemask_ps(_mm256_and_ps(ok, nonfinite(p8))));
    add_squares(lo(g8), lo(p8), first4(8 * c, m), (2 * c) % 4, sx, sh);
    add_squares(hi(g8), hi(p8), first4(8 * c + 4, m), (2 * c + 1) % 4, sx, sh);
  }
  return bad;
#else
  return backward_panel_row_portable(g, d, gh, m, sx, sh);
#endif
}

inline std::int64_t backward_panel_row(const double* g, const double* d, double* gh, int m, Lanes16& sx, Lanes16& sh) {
#if defined(__AVX512F__)
  using namespace panel_detail;
  const __mmask16 k = first(m);
  const auto k0 = static_cast<__mmask8>(k), k1 = static_cast<__mmask8>(k >> 8);
  const __m512d g0 = _mm512_loadu_pd(g), g1 = _mm512_loadu_pd(g + 8);
  const __m512d p0 = _mm512_maskz_mul_pd(k0, g0, _mm512_maskz_loadu_pd(k0, d));
  const __m512d p1 = _mm512_maskz_mul_pd(k1, g1, _mm512_maskz_loadu_pd(k1, d + 8));
  _mm512_storeu_pd(gh, p0);
  _mm512_storeu_pd(gh + 8, p1);
  add_squares(g0, p0, k0, 0, sx, sh);
  add_squares(g1, p1, k1, 1, sx, sh);
  return __builtin_popcount(nonfinite(p0, k0)) + __builtin_popcount(nonfinite(p1, k1));
#elif defined(__AVX2__)
  using namespace panel_detail;
  int bad = 0;
  for (int c = 0; c < 4; ++c) {
    const __m256d ok = first4(4 * c, m);
    const __m256d g4 = _mm256_loadu_pd(g + 4 * c);
    const __m256d p4 = _mm256_and_pd(ok, _mm256_mul_pd(g4, _mm256_maskload_pd(d + 4 * c, _mm256_castpd_si256(ok))));
    _mm256_storeu_pd(gh + 4 * c, p4);
    bad += __builtin_popcount(_mm256_movemask_pd(_mm256_and_pd(ok, nonfinite(p4))));
    add_squares(g4, p4, ok, c, sx, sh);
  }
  return bad;
#else
  return backward_panel_row_portable(g, d, gh, m, sx, sh);
#endif
}

#if defined(__AVX2__) && !defined(__AVX512F__)
namespace panel_detail {

// A whole panel row of backward_panel_row (m = kPanel<T>), without masks or counts.
inline void backward_full_panel_row(const float* g, const float* d, float* gh, Lanes16& sx, Lanes16& sh) {
  for (int c = 0; c < 4; ++c) {
    const __m256 g8 = _mm256_loadu_ps(g + 8 * c);
    const __m256 p8 = _mm256_mul_ps(g8, _mm256_loadu_ps(d + 8 * c));
    _mm256_storeu_ps(gh + 8 * c, p8);
    const int lo_group = (2 * c) % 4, hi_group = (2 * c + 1) % 4;
    const __m256d glo = lo(g8), ghi = hi(g8), plo = lo(p8), phi = hi(p8);
    sx.v[lo_group] = _mm256_fmadd_pd(glo, glo, sx.v[lo_group]);
    sh.v[lo_group] = _mm256_fmadd_pd(plo, plo, sh.v[lo_group]);
    sx.v[hi_group] = _mm256_fmadd_pd(ghi, ghi, sx.v[hi_group]);
    sh.v[hi_group] = _mm256_fmadd_pd(phi, phi, sh.v[hi_group]);
  }
}
inline void backward_full_panel_row(const double* g, const double* d, double* gh, Lanes16& sx, Lanes16& sh) {
  for (int c = 0; c < 4; ++c) {
    const __m256d g4 = _mm256_loadu_pd(g + 4 * c);
    const __m256d p4 = _mm256_mul_pd(g4, _mm256_loadu_pd(d + 4 * c));
    _mm256_storeu_pd(gh + 4 * c, p4);
    sx.v[c] = _mm256_fmadd_pd(g4, g4, sx.v[c]);
    sh.v[c] = _mm256_fmadd_pd(p4, p4, sh.v[c]);
  }
}

}  // namespace panel_detail
#endif

// backward_panel_row over one unit's row of `count` samples: g and d at consecutive addresses,
// gh written as panel rows, panel q's at gh + q * gh_stride (zeros past count in the last). The
// same values and sums in the same order; returns how many entries of gh are not finite.
//
// With AVX2 the whole panels run without masks, and their entries are counted one by one only
// where the sum of the squares of gh has stopped being finite (an inf or NaN in gh makes it so;
// nothing else can in float32, and in float64 a false alarm only costs the exact count).
template <class T>
inline std::int64_t backward_row(const T* g, const T* d, std::int64_t count, T* gh, std::ptrdiff_t gh_stride,
                                 Lanes16& sx, Lanes16& sh) {
  constexpr std::int64_t P = kPanel<T>;
  std::int64_t bad = 0;
#if defined(__AVX2__) && !defined(__AVX512F__)
  const std::int64_t full = count / P;
  for (std::int64_t q = 0; q < full; ++q) panel_detail::backward_full_panel_row(g + q * P, d + q * P, gh + q * gh_stride, sx, sh);
  if (full * P < count) {
    bad += backward_panel_row(g + full * P, d + full * P, gh + full * gh_stride, static_cast<int>(count - full * P), sx, sh);
  }
  // Once not finite, the sum stays so: every later row of the block is counted entry by entry.
  if (panel_detail::lanes_finite(sh)) return bad;
  for (std::int64_t q = 0; q < full; ++q) {
    for (std::int64_t k = 0; k < P; ++k) bad += !std::isfinite(gh[q * gh_stride + k]);
  }
#else
  for (std::int64_t q = 0; q * P < count; ++q) {
    const int m = static_cast<int>(std::min<std::int64_t>(P, count - q * P));
    bad += backward_panel_row(g + q * P, d + q * P, gh + q * gh_stride, m, sx, sh);
  }
#endif
  return bad;
}

// dst[0 .. kPanel<T>) = src, 64-byte aligned, past the caches (for f'(h), read back only in the
// backward pass). Needs store_fence() before another thread reads the data.
template <class T>
inline void stream_panel_row(T* dst, const T* src) {
#if defined(__AVX512F__)
  _mm512_stream_si512(reinterpret_cast<__m512i*>(dst), _mm512_loadu_si512(src));
  _mm512_stream_si512(reinterpret_cast<__m512i*>(dst) + 1, _mm512_loadu_si512(src + 64 / sizeof(T)));
#elif defined(__AVX2__)
  for (int i = 0; i < 4; ++i) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst) + i,
                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src) + i));
  }
#else
  std::memcpy(dst, src, kPanel<T> * sizeof(T));
#endif
}

// Brings the kPanel<T> elements at p (two cache lines) towards L1.
template <class T>
inline void prefetch_panel_row(const T* p) {
#if defined(SELFNORM_PANEL_SIMD)
  _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(p) + 64, _MM_HINT_T0);
#else
  (void)p;
#endif
}

inline void store_fence() {
#if defined(SELFNORM_PANEL_SIMD)
  _mm_sfence();
#endif
}

}  // namespace selfnorm

#undef SELFNORM_PANEL_SIMD
