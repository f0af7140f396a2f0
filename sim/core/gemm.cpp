#include "core/gemm.hpp"

#include <algorithm>
#include <cassert>
#include <stdexcept>
#include <type_traits>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

namespace selfnorm {
namespace {

constexpr int kRows = static_cast<int>(kStrip);

// The register tile is a sub-tile of the kStrip x kPanel<T> tile: kSubRows rows by kSubCols<T>
// columns, as many accumulators as the ISA has registers for. Where it is smaller than the tile,
// the micro-kernels run the whole k block once per sub-tile, so every element of C still gets the
// same sequence of operations (see the determinism contract in gemm.hpp).
#if defined(__AVX512F__)

// The tile in one: 12 rows by two zmm vectors, 24 accumulators (with the two B vectors and one
// broadcast, 27 of the 32 zmm registers).
constexpr int kSubRows = kRows;
template <class T>
inline constexpr int kSubCols = static_cast<int>(kPanel<T>);

template <class T>
struct Simd;

template <>
struct Simd<float> {
  using V = __m512;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V broadcast(const float* p) { return _mm512_set1_ps(*p); }
  // c + a b, always in c's register (vfmadd231): left to itself, GCC rotates the accumulators
  // through the broadcast register and pays for it with register moves in the loop.
  static V fma(V a, V b, V c) {
    asm("vfmadd231ps %[a], %[b], %[c]" : [c] "+v"(c) : [a] "v"(a), [b] "v"(b));
    return c;
  }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
};

template <>
struct Simd<double> {
  using V = __m512d;
  static V zero() { return _mm512_setzero_pd(); }
  static V load(const double* p) { return _mm512_loadu_pd(p); }
  static V broadcast(const double* p) { return _mm512_set1_pd(*p); }
  static V fma(V a, V b, V c) {
    asm("vfmadd231pd %[a], %[b], %[c]" : [c] "+v"(c) : [a] "v"(a), [b] "v"(b));
    return c;
  }
  static V add(V a, V b) { return _mm512_add_pd(a, b); }
  static void store(double* p, V v) { _mm512_storeu_pd(p, v); }
};

constexpr std::string_view kBackend = "avx512";

#elif defined(__AVX2__) && defined(__FMA__)

// Six rows by two ymm vectors (half a panel), 12 accumulators (with the two B vectors and one
// broadcast, 15 of the 16 ymm registers); four sub-tiles make the tile.
constexpr int kSubRows = kRows / 2;
template <class T>
inline constexpr int kSubCols = static_cast<int>(kPanel<T>) / 2;

template <class T>
struct Simd;

template <>
struct Simd<float> {
  using V = __m256;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static V fma(V a, V b, V c) {
    asm("vfmadd231ps %[a], %[b], %[c]" : [c] "+x"(c) : [a] "x"(a), [b] "x"(b));
    return c;
  }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
};

template <>
struct Simd<double> {
  using V = __m256d;
  static V zero() { return _mm256_setzero_pd(); }
  static V load(const double* p) { return _mm256_loadu_pd(p); }
  static V broadcast(const double* p) { return _mm256_broadcast_sd(p); }
  static V fma(V a, V b, V c) {
    asm("vfmadd231pd %[a], %[b], %[c]" : [c] "+x"(c) : [a] "x"(a), [b] "x"(b));
    return c;
  }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
  static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
};

constexpr std::string_view kBackend = "avx2";

#endif

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))

// The accumulators, two vectors per row, are a local array of each kernel, touched only through
// these always-inlined helpers, so that they stay in registers.
template <class T>
using Acc = typename Simd<T>::V[kSubRows][2];
template <class T>
inline constexpr int kLanes = static_cast<int>(sizeof(typename Simd<T>::V) / sizeof(T));
static_assert(2 * kLanes<float> == kSubCols<float> && 2 * kLanes<double> == kSubCols<double>);

template <class T, int Rows>
[[gnu::always_inline]] inline void tile_zero(Acc<T>& acc) {
#pragma GCC unroll 12
  for (int r = 0; r < Rows; ++r) acc[r][0] = acc[r][1] = Simd<T>::zero();
}

// One step of k: row r < Rows gains a[r * RowStride] * b[0 .. kSubCols).
template <class T, std::ptrdiff_t RowStride, int Rows>
[[gnu::always_inline]] inline void tile_step(Acc<T>& acc, const T* a, const T* b) {
  using S = Simd<T>;
  const auto b0 = S::load(b);
  const auto b1 = S::load(b + kLanes<T>);
#pragma GCC unroll 12
  for (int r = 0; r < Rows; ++r) {
    const auto av = S::broadcast(a + r * RowStride);
    acc[r][0] = S::fma(av, b0, acc[r][0]);
    acc[r][1] = S::fma(av, b1, acc[r][1]);
  }
}

// C = tile, or C += tile, for the first Rows rows.
template <class T, int Rows>
[[gnu::always_inline]] inline void tile_store(const Acc<T>& acc, T* c, std::ptrdiff_t ldc, bool accumulate) {
  using S = Simd<T>;
#pragma GCC unroll 12
  for (int r = 0; r < Rows; ++r) {
    T* row = c + r * ldc;
    if (accumulate) {
      S::store(row, S::add(S::load(row), acc[r][0]));
      S::store(row + kLanes<T>, S::add(S::load(row + kLanes<T>), acc[r][1]));
    } else {
      S::store(row, acc[r][0]);
      S::store(row + kLanes<T>, acc[r][1]);
    }
  }
}

// Towards L1, and to L2 only.
[[gnu::always_inline]] inline void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }
[[gnu::always_inline]] inline void prefetch_l2(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1); }

#else  // portable: the same tile and order of operations, in plain loops the compiler vectorises

constexpr int kSubRows = kRows;
template <class T>
inline constexpr int kSubCols = static_cast<int>(kPanel<T>);

template <class T>
using Acc = T[kRows][kPanel<T>];

template <class T, int Rows>
void tile_zero(Acc<T>& acc) {
  for (int r = 0; r < Rows; ++r) std::fill(acc[r], acc[r] + kPanel<T>, T(0));
}

template <class T, std::ptrdiff_t RowStride, int Rows>
void tile_step(Acc<T>& acc, const T* a, const T* b) {
  for (int r = 0; r < Rows; ++r) {
    const T av = a[r * RowStride];
    for (int j = 0; j < kPanel<T>; ++j) acc[r][j] += av * b[j];
  }
}

template <class T, int Rows>
void tile_store(const Acc<T>& acc, T* c, std::ptrdiff_t ldc, bool accumulate) {
  for (int r = 0; r < Rows; ++r) {
    for (int j = 0; j < kPanel<T>; ++j) c[r * ldc + j] = accumulate ? c[r * ldc + j] + acc[r][j] : acc[r][j];
  }
}

inline void prefetch(const void*) {}
inline void prefetch_l2(const void*) {}

constexpr std::string_view kBackend = "portable";

#endif

// Calls f(first row, rows, first column, first) for each register sub-tile of a tile of Rows rows
// (Rows <= 2 kSubRows), columns outer (the two row halves of a column half share its B); `first`
// only for the first sub-tile.
template <class T, int Rows, class F>
[[gnu::always_inline]] inline void for_each_subtile(const F& f) {
  static_assert(Rows <= 2 * kSubRows);
  constexpr int kTop = Rows < kSubRows ? Rows : kSubRows;
#pragma GCC unroll 2
  for (int col = 0; col < kPanel<T>; col += kSubCols<T>) {
    f(std::integral_constant<int, 0>{}, std::integral_constant<int, kTop>{}, col, col == 0);
    if constexpr (Rows > kSubRows) {
      f(std::integral_constant<int, kSubRows>{}, std::integral_constant<int, Rows - kSubRows>{}, col, false);
    }
  }
}

// The A operand of the tile that comes after the current one's run of panels, in the loop order
// of drive(): its first row and k block. While the current strip is multiplied with each of the
// `phases` panels of B, call `phase` brings its share of that next strip into L2, so that the
// next strip does not wait for memory: the weights come from DRAM, once per layer, and the
// hardware prefetchers do not follow strips or the jumps between panels.
struct NextStrip {
  bool valid = false;
  std::int64_t row = 0;
  std::int64_t p0 = 0;
  std::int64_t kc = 0;
  std::int64_t phase = 0;
  std::int64_t phases = 1;
};

// B ahead of the tile, into L1 (float64, AVX-512): every two steps, the kernels bring the two rows
// of B that the step kBAhead steps later reads (four lines), and in a tile's last kBAhead steps
// the first rows of the next tile's B (at b_next). A tile's k block of B (16.9 KB) comes from L2,
// and the hardware prefetchers had left the kernels waiting for it. Measured with width 1024, 256
// samples, one thread, interleaved: float64 5-6% faster forward (4 and 16 steps ahead no better
// than 8), and with kernel_panels' whole-panel loop 4-6% faster backward; float32 forward no
// faster, backward 3% slower (its k block of B, 66 KB, does not stay in L1 anyway). The AVX2
// kernels run a tile in four passes and keep to the hardware prefetchers (not measured on such a
// CPU).
#if defined(__AVX512F__)
inline constexpr bool kAvx512 = true;
#else
inline constexpr bool kAvx512 = false;
#endif
template <class T>
inline constexpr bool kPrefetchB = kAvx512 && sizeof(T) == 8;
inline constexpr std::int64_t kBAhead = 8;

// Step i (from 0) of a tile whose k block of B, kc rows of kPanel<T>, is at b: brings the rows of
// steps i + kBAhead and i + kBAhead + 1 to L1, from the next tile's B (b_next) past the block.
template <class T>
[[gnu::always_inline]] inline void prefetch_b(std::int64_t i, std::int64_t kc, const T* b, const T* b_next) {
  if constexpr (kPrefetchB<T>) {
    constexpr std::int64_t P = kPanel<T>;
    static_assert(2 * P * sizeof(T) == 4 * 64, "two rows of B are four lines");
    const std::int64_t ahead = i + kBAhead;
    const char* rows = reinterpret_cast<const char*>(ahead < kc ? b + ahead * P : b_next + (ahead - kc) * P);
    prefetch(rows);
    prefetch(rows + 64);
    prefetch(rows + 128);
    prefetch(rows + 192);
  } else {
    (void)i, (void)kc, (void)b, (void)b_next;
  }
}

// Micro-kernel for A as strips: a points at element (row0, p0), steps p0 .. p0 + kc. The next
// strip's data (contiguous, at next_a) is prefetched to L2 one line every four iterations, and B
// to L1 as prefetch_b says.
template <class T, int Rows>
void kernel_strips(std::int64_t kc, const T* a, const T* b, T* c, std::ptrdiff_t ldc, bool accumulate,
                   const T* next_a, const NextStrip& next, const T* b_next) {
  constexpr std::int64_t P = kPanel<T>;
  const char* pf = nullptr;
  const char* pf_end = nullptr;
  if (next.valid) {
    const std::int64_t lines = (next.kc * kStrip * static_cast<std::int64_t>(sizeof(T)) + 63) / 64;
    pf = reinterpret_cast<const char*>(next_a) + 64 * (next.phase * lines / next.phases);
    pf_end = reinterpret_cast<const char*>(next_a) + 64 * ((next.phase + 1) * lines / next.phases);
  }
  for_each_subtile<T, Rows>([&](auto r0, auto rows, int col, bool) __attribute__((always_inline)) {
    const T* as = a + r0();
    const T* bs = b + col;
    Acc<T> acc;
    tile_zero<T, rows()>(acc);
    std::int64_t p = 0;
    for (std::int64_t iter = 0; p + 2 <= kc; p += 2, ++iter) {
      prefetch_b(p, kc, b, b_next);
      tile_step<T, 1, rows()>(acc, as, bs);
      tile_step<T, 1, rows()>(acc, as + kStrip, bs + P);
      if ((iter & 3) == 0 && pf < pf_end) {
        prefetch_l2(pf);
        pf += 64;
      }
      as += 2 * kStrip;
      bs += 2 * P;
    }
    if (p < kc) tile_step<T, 1, rows()>(acc, as, bs);
    tile_store<T, rows()>(acc, c + r0() * ldc + col, ldc, accumulate);
  });
}

// How kernel_panels prefetches A, by precision (measured, gemm_bench and the reference job):
//  - float: each call streams 66 KB of B through L1, which evicts the strip's blocks between two
//    calls, so every call brings the following panel to L1, and the next strip's share to L2;
//  - double: the L1 prefetches are twice as dense per FMA (blocks of 18 lines per 12 steps, half
//    the flops per step) and cost more than they save: the following panel is brought to L1 in the
//    first call of a strip only (phase 0). With weights from memory (gemm_bench --cold) the
//    backward product in float64 ran 2-5% faster that way, float32 4-10% slower. The next strip's
//    share goes to L2 in every call with AVX-512, where, with the whole-panel loop and B's
//    prefetch, it made the float64 backward product up to 3% faster again (width 1024, one
//    thread, weights from memory, interleaved); with AVX2, not at all in float64 (as measured
//    before both).
template <class T>
inline constexpr bool kFollowingEveryCall = sizeof(T) == 4;
template <class T>
inline constexpr bool kNextStripToL2 = sizeof(T) == 4 || kAvx512;

// Micro-kernel for A as panels of width G: a points at row row0 of panel 0, so that element
// (row0 + r, p) is a[(p / G) * stride + r * G + p % G]; steps p0 .. p0 + kc. A panel's 12 rows
// are 12 G contiguous elements. The next panel's are brought to L1 while this one is in use, the
// next strip's share of each panel (at next_a, in the same layout) to L2, and B to L1 as
// prefetch_b says.
template <class T, std::int64_t G, int Rows>
void kernel_panels(std::int64_t p0, std::int64_t kc, const T* a, std::ptrdiff_t stride, const T* b, T* c,
                   std::ptrdiff_t ldc, bool accumulate, const T* next_a, const NextStrip& next, const T* b_next) {
  constexpr std::int64_t P = kPanel<T>;
  // Two steps per iteration (measured: 2 beats 1, 3 and 4, and prefetching in one burst beats
  // spreading it).
  static_assert(G % 2 == 0);
  constexpr int kLines = static_cast<int>((kRows * G * static_cast<std::int64_t>(sizeof(T)) + 63) / 64 + 1);
  const int pf_first = next.valid ? static_cast<int>(next.phase * kLines / next.phases) : 0;
  const int pf_last = next.valid ? static_cast<int>((next.phase + 1) * kLines / next.phases) : 0;
  const std::int64_t next_panel0 = next.p0 / G - p0 / G;  // the next strip's panel for this one's first
  const std::int64_t next_panels = next.valid ? (next.p0 + next.kc + G - 1) / G - next.p0 / G : 0;
  const std::int64_t end = p0 + kc;
  // While panel g (0-based from p0's) is in use: the next strip's share of its panel to L2, and
  // (at `panel`, this tile's rows of panel g) the following panel to L1.
  auto next_strip_to_l2 = [&](std::int64_t g) __attribute__((always_inline)) {
    if (kNextStripToL2<T> && g < next_panels) {
      const char* nx = reinterpret_cast<const char*>(next_a + (p0 / G + g + next_panel0) * stride);
      for (int l = pf_first; l < pf_last; ++l) prefetch_l2(nx + 64 * l);
    }
  };
  auto following_to_l1 = [&](const T* panel) __attribute__((always_inline)) {
    const char* following = reinterpret_cast<const char*>(panel + stride);
    for (int l = 0; l < kLines; ++l) prefetch(following + 64 * l);
  };
  const bool following = kFollowingEveryCall<T> || next.phase == 0;
  // The prefetches are issued while the first sub-tile runs.
  for_each_subtile<T, Rows>([&](auto r0, auto rows, int col, bool first) __attribute__((always_inline)) {
    const T* bs = b + col;
    Acc<T> acc;
    tile_zero<T, rows()>(acc);
    // Steps `step` and step + 1 of the tile (A's at `at` and at + 1 in their panel), with B's
    // prefetch; and one step alone.
    auto two_steps = [&](const T* at, std::int64_t step) __attribute__((always_inline)) {
      prefetch_b(step, kc, b, b_next);
      tile_step<T, G, rows()>(acc, at, bs);
      tile_step<T, G, rows()>(acc, at + 1, bs + P);
      bs += 2 * P;
    };
    auto one_step = [&](const T* at) __attribute__((always_inline)) {
      tile_step<T, G, rows()>(acc, at, bs);
      bs += P;
    };
    if constexpr (G == kStrip) {
      // The backward product (A = W_l, its strips read as panels): k blocks start on a panel
      // (kKBlock is a multiple of kStrip), so a tile is whole panels and a rest, walked by pointer:
      // the same steps in the same order as the general loop below, whose index arithmetic per
      // panel had cost the backward product 3-6% (AVX-512, float32 and float64, width 1024, one
      // thread, interleaved) and kept B's prefetch from paying; the AVX2 kernels (built with
      // -march=haswell, run on the same Intel CPU, 2 threads, weights from memory) gained 12%
      // (float64) and 19% (float32). With AVX-512 the panel's six pairs of steps are unrolled in
      // float64 (4-6% faster than the loop), not in float32 (8% slower); with AVX2, whose tile is
      // four passes, not at all.
      static_assert(kKBlock<T> % G == 0);
      const std::int64_t whole = kc / G;
      const std::int64_t panels = (kc + G - 1) / G;
      const T* panel = a + (p0 / G) * stride + r0() * G;
      for (std::int64_t i = 0; i < whole; ++i, panel += stride) {
        if (first) next_strip_to_l2(i);
        if (first && following && i + 1 < panels) following_to_l1(panel - r0() * G);
        if constexpr (sizeof(T) == 8 && kAvx512) {
#pragma GCC unroll 6
          for (std::int64_t q = 0; q < G; q += 2) two_steps(panel + q, i * G + q);
        } else {
#pragma GCC unroll 1
          for (std::int64_t q = 0; q < G; q += 2) two_steps(panel + q, i * G + q);
        }
      }
      if (whole < panels) {
        if (first) next_strip_to_l2(whole);
        for (std::int64_t q = 0; q < kc - whole * G; ++q) one_step(panel + q);
      }
    } else {
      std::int64_t p = p0;
      while (p < end) {
        const std::int64_t g = p / G;
        const T* panel = a + g * stride + r0() * G;
        const std::int64_t q0 = p % G;
        const std::int64_t q1 = std::min<std::int64_t>(G, q0 + (end - p));
        if (first) next_strip_to_l2(g - p0 / G);
        if (q0 == 0 && q1 == G) {
          if (first && following && p + G < end) following_to_l1(a + g * stride);
          for (std::int64_t q = 0; q < G; q += 2) two_steps(panel + q, p - p0 + q);
        } else {
          for (std::int64_t q = q0; q < q1; ++q) one_step(panel + q);
        }
        p += q1 - q0;
      }
    }
    tile_store<T, rows()>(acc, c + r0() * ldc + col, ldc, accumulate);
  });
}

// The loops around the micro-kernel: blocks of kBlockRows rows of C, k blocks, strips of the
// block, panels of B. kern(row, p0, kc, b, c, accumulate, next, b_next) computes one tile; b_next is
// the B of the tile after it.
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
        // The strip after this one: the next in the block, else the block's first at the next k
        // block, else the next block's first.
        NextStrip next{true, row0 + (s + 1) * kStrip, pc, kc, 0, panels};
        if (s + 1 == strips) {
          next.row = row0;
          next.p0 = pc + kKBlock<T>;
          if (next.p0 >= k) {
            next.row = row0 + kBlockRows;
            next.p0 = 0;
          }
          next.kc = std::min(kKBlock<T>, k - next.p0);
          next.valid = next.row < m;
        }
        for (std::int64_t q = 0; q < panels; ++q) {
          next.phase = q;
          // The next tile's B: the next panel, else the first at the next strip's k block.
          const T* b_next = b.data + (q + 1 < panels ? (q + 1) * b.panel_stride + pc * P : next.p0 * P);
          kern(row0 + s * kStrip, pc, kc, b.data + q * b.panel_stride + pc * P, c_block + s * kStrip * ldc + q * P,
               ldc, pc > 0, next, b_next);
        }
      }
    }
    done(row0, rows, c_block, ldc);
  }
}

// Calls kernel(std::integral_constant<int, Rows>) with the rows of the tile for a strip with
// `left` rows of C to go: the last strip of a matrix whose height is no multiple of 12 runs a 4- or
// 8-row tile, instead of 12 rows of which up to 11 are discarded (3% of the products at width 256).
// Every row's arithmetic is the same in each tile.
template <class Kernel>
inline void with_tile_rows(std::int64_t left, const Kernel& kernel) {
  if (left <= 4) {
    kernel(std::integral_constant<int, 4>{});
  } else if (left <= 8) {
    kernel(std::integral_constant<int, 8>{});
  } else {
    kernel(std::integral_constant<int, kRows>{});
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
  assert(m >= 0 && k >= 0 && panels >= 0);
  check_b(b);
  drive<T>(m, k, panels, b, c_block, done,
           [&](std::int64_t row, std::int64_t p0, std::int64_t kc, const T* bp, T* c, std::ptrdiff_t ldc, bool acc,
               const NextStrip& next, const T* b_next) {
             auto at = [&](std::int64_t r, std::int64_t p) { return a.data + (r / kStrip) * a.strip_stride + p * kStrip; };
             const T* next_a = next.valid ? at(next.row, next.p0) : nullptr;
             with_tile_rows(m - row, [&](auto rows) {
               kernel_strips<T, rows()>(kc, at(row, p0), bp, c, ldc, acc, next_a, next, b_next);
             });
           });
}

template <class T>
void gemm(std::int64_t m, std::int64_t k, std::int64_t panels, PanelView<T> a, PanelView<T> b, T* c_block,
          RowsDone<T> done) {
  assert(m >= 0 && k >= 0 && panels >= 0);
  check_b(b);
  auto run = [&]<std::int64_t G>(std::integral_constant<std::int64_t, G>) {
    drive<T>(m, k, panels, b, c_block, done,
             [&](std::int64_t row, std::int64_t p0, std::int64_t kc, const T* bp, T* c, std::ptrdiff_t ldc, bool acc,
                 const NextStrip& next, const T* b_next) {
               const T* ap = a.data + row * G;
               const T* next_a = a.data + next.row * G;
               with_tile_rows(m - row, [&](auto rows) {
                 kernel_panels<T, G, rows()>(p0, kc, ap, a.panel_stride, bp, c, ldc, acc, next_a, next, b_next);
               });
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
