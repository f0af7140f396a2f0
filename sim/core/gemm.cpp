#include "core/gemm.hpp"

#include <algorithm>
#include <stdexcept>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace selfnorm {
namespace {

constexpr int kRows = static_cast<int>(kStrip);

#if defined(__AVX512F__)

template <class T>
struct Simd;

template <>
struct Simd<float> {
  using V = __m512;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
};

template <>
struct Simd<double> {
  using V = __m512d;
  static V zero() { return _mm512_setzero_pd(); }
  static V load(const double* p) { return _mm512_loadu_pd(p); }
  static V broadcast(const double* p) { return _mm512_set1_pd(*p); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static V add(V a, V b) { return _mm512_add_pd(a, b); }
  static void store(double* p, V v) { _mm512_storeu_pd(p, v); }
};

// The register tile: 12 rows by two vectors, 24 accumulators (with the two B vectors and one
// broadcast, 27 of the 32 zmm registers).
template <class T>
class Tile {
  using S = Simd<T>;
  using V = typename S::V;
  static constexpr int kLanes = 64 / sizeof(T);

 public:
  Tile() {
#pragma GCC unroll 12
    for (int r = 0; r < kRows; ++r) acc_[r][0] = acc_[r][1] = S::zero();
  }

  // One step of k: row r gains a[r * RowStride] * b[0 .. kPanel).
  template <std::ptrdiff_t RowStride>
  [[gnu::always_inline]] void step(const T* a, const T* b) {
    const V b0 = S::load(b);
    const V b1 = S::load(b + kLanes);
#pragma GCC unroll 12
    for (int r = 0; r < kRows; ++r) {
      const V av = S::broadcast(a + r * RowStride);
      acc_[r][0] = S::fma(av, b0, acc_[r][0]);
      acc_[r][1] = S::fma(av, b1, acc_[r][1]);
    }
  }

  // C = tile, or C += tile.
  void store(T* c, std::ptrdiff_t ldc, bool accumulate) const {
#pragma GCC unroll 12
    for (int r = 0; r < kRows; ++r) {
      T* row = c + r * ldc;
      if (accumulate) {
        S::store(row, S::add(S::load(row), acc_[r][0]));
        S::store(row + kLanes, S::add(S::load(row + kLanes), acc_[r][1]));
      } else {
        S::store(row, acc_[r][0]);
        S::store(row + kLanes, acc_[r][1]);
      }
    }
  }

 private:
  V acc_[kRows][2];
};

inline void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }

constexpr std::string_view kBackend = "avx512";

#else  // portable: the same tile and order of operations, in plain loops the compiler vectorises

template <class T>
class Tile {
  static constexpr int kCols = static_cast<int>(kPanel<T>);

 public:
  template <std::ptrdiff_t RowStride>
  void step(const T* a, const T* b) {
    for (int r = 0; r < kRows; ++r) {
      const T av = a[r * RowStride];
      for (int j = 0; j < kCols; ++j) acc_[r][j] += av * b[j];
    }
  }
  void store(T* c, std::ptrdiff_t ldc, bool accumulate) const {
    for (int r = 0; r < kRows; ++r) {
      for (int j = 0; j < kCols; ++j) c[r * ldc + j] = accumulate ? c[r * ldc + j] + acc_[r][j] : acc_[r][j];
    }
  }

 private:
  T acc_[kRows][kCols] = {};
};

inline void prefetch(const void*) {}

constexpr std::string_view kBackend = "portable";

#endif

// Micro-kernel for A as strips: a points at element (row0, p0), steps p0 .. p0 + kc.
template <class T>
void kernel_strips(std::int64_t kc, const T* a, const T* b, T* c, std::ptrdiff_t ldc, bool accumulate) {
  constexpr std::int64_t P = kPanel<T>;
  Tile<T> tile;
  std::int64_t p = 0;
  for (; p + 2 <= kc; p += 2) {
    tile.template step<1>(a, b);
    tile.template step<1>(a + kStrip, b + P);
    a += 2 * kStrip;
    b += 2 * P;
  }
  if (p < kc) tile.template step<1>(a, b);
  tile.store(c, ldc, accumulate);
}

// Micro-kernel for A as panels of width G: a points at row row0 of panel 0, so that element
// (row0 + r, p) is a[(p / G) * stride + r * G + p % G]; steps p0 .. p0 + kc. A panel's 12 rows
// are 12 G contiguous elements; the next panel's are prefetched while this one is in use,
// because the hardware prefetchers do not follow the jump between panels.
template <class T, std::int64_t G>
void kernel_panels(std::int64_t p0, std::int64_t kc, const T* a, std::ptrdiff_t stride, const T* b, T* c,
                   std::ptrdiff_t ldc, bool accumulate) {
  constexpr std::int64_t P = kPanel<T>;
  constexpr int kLines = static_cast<int>((kRows * G * static_cast<std::int64_t>(sizeof(T)) + 63) / 64 + 1);
  Tile<T> tile;
  const std::int64_t end = p0 + kc;
  std::int64_t p = p0;
  while (p < end) {
    const T* panel = a + (p / G) * stride;
    const std::int64_t q0 = p % G;
    const std::int64_t q1 = std::min<std::int64_t>(G, q0 + (end - p));
    if (q0 == 0 && q1 == G) {
      const char* next = reinterpret_cast<const char*>(panel + stride);
      if (p + G < end) {
        for (int l = 0; l < kLines; ++l) prefetch(next + 64 * l);
      }
#pragma GCC unroll 3
      for (std::int64_t q = 0; q < G; ++q) {
        tile.template step<G>(panel + q, b);
        b += P;
      }
    } else {
      for (std::int64_t q = q0; q < q1; ++q) {
        tile.template step<G>(panel + q, b);
        b += P;
      }
    }
    p += q1 - q0;
  }
  tile.store(c, ldc, accumulate);
}

// The loops around the micro-kernel: blocks of kBlockRows rows of C, k blocks, strips of the
// block, panels of B. kern(row, p0, kc, b, c, accumulate) computes one tile.
template <class T, class Kernel>
void drive(std::int64_t m, std::int64_t k, std::int64_t panels, PanelView<T> b, T* c_block, RowsDone<T> done,
           const Kernel& kern) {
  constexpr std::int64_t P = kPanel<T>;
  const std::ptrdiff_t ldc = gemm_block_ld<T>(panels);
  for (std::int64_t row0 = 0; row0 < m; row0 += kBlockRows) {
    const std::int64_t rows = std::min(kBlockRows, m - row0);
    const std::int64_t strips = (rows + kStrip - 1) / kStrip;
    if (k <= 0) std::fill(c_block, c_block + gemm_block_size<T>(panels), T(0));
    for (std::int64_t pc = 0; pc < k; pc += kKBlock<T>) {
      const std::int64_t kc = std::min(kKBlock<T>, k - pc);
      for (std::int64_t s = 0; s < strips; ++s) {
        for (std::int64_t q = 0; q < panels; ++q) {
          kern(row0 + s * kStrip, pc, kc, b.data + q * b.panel_stride + pc * P, c_block + s * kStrip * ldc + q * P,
               ldc, pc > 0);
        }
      }
    }
    done(row0, rows, c_block, ldc);
  }
}

template <class T>
void check_b(PanelView<T> b) {
  if (b.width != kPanel<T>) throw std::invalid_argument("gemm: B must be in panels of kPanel columns");
}

}  // namespace

template <class T>
std::ptrdiff_t gemm_block_ld(std::int64_t panels) {
  return padded_ld(panels * kPanel<T>, sizeof(T));
}

template <class T>
std::size_t gemm_block_size(std::int64_t panels) {
  return static_cast<std::size_t>(kBlockRows * gemm_block_ld<T>(panels));
}

template <class T>
void gemm(std::int64_t m, std::int64_t k, std::int64_t panels, StripView<T> a, PanelView<T> b, T* c_block,
          RowsDone<T> done) {
  check_b(b);
  drive<T>(m, k, panels, b, c_block, done,
           [&](std::int64_t row, std::int64_t p0, std::int64_t kc, const T* bp, T* c, std::ptrdiff_t ldc, bool acc) {
             const T* ap = a.data + (row / kStrip) * a.strip_stride + p0 * kStrip;
             kernel_strips<T>(kc, ap, bp, c, ldc, acc);
           });
}

template <class T>
void gemm(std::int64_t m, std::int64_t k, std::int64_t panels, PanelView<T> a, PanelView<T> b, T* c_block,
          RowsDone<T> done) {
  check_b(b);
  auto run = [&]<std::int64_t G>(std::integral_constant<std::int64_t, G>) {
    drive<T>(m, k, panels, b, c_block, done,
             [&](std::int64_t row, std::int64_t p0, std::int64_t kc, const T* bp, T* c, std::ptrdiff_t ldc, bool acc) {
               kernel_panels<T, G>(p0, kc, a.data + row * G, a.panel_stride, bp, c, ldc, acc);
             });
  };
  if (a.width == kStrip) {
    run(std::integral_constant<std::int64_t, kStrip>{});
  } else if (a.width == kPanel<T>) {
    run(std::integral_constant<std::int64_t, kPanel<T>>{});
  } else {
    throw std::invalid_argument("gemm: A panels must be kStrip or kPanel columns wide");
  }
}

std::ptrdiff_t padded_ld(std::ptrdiff_t cols, std::size_t element_size) {
  const std::ptrdiff_t per_line = 64 / static_cast<std::ptrdiff_t>(element_size);
  std::ptrdiff_t ld = (cols + per_line - 1) / per_line * per_line;
  if (ld == 0) ld = per_line;
  if ((ld * static_cast<std::ptrdiff_t>(element_size)) % 1024 == 0) ld += per_line;
  return ld;
}

std::string_view gemm_backend() { return kBackend; }

#define SELFNORM_INSTANTIATE(T)                                                                               \
  template std::ptrdiff_t gemm_block_ld<T>(std::int64_t);                                                     \
  template std::size_t gemm_block_size<T>(std::int64_t);                                                      \
  template void gemm<T>(std::int64_t, std::int64_t, std::int64_t, StripView<T>, PanelView<T>, T*, RowsDone<T>); \
  template void gemm<T>(std::int64_t, std::int64_t, std::int64_t, PanelView<T>, PanelView<T>, T*, RowsDone<T>);
SELFNORM_INSTANTIATE(float)
SELFNORM_INSTANTIATE(double)
#undef SELFNORM_INSTANTIATE

}  // namespace selfnorm
