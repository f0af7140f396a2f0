#include "core/amx.hpp"

#include <algorithm>
#include <stdexcept>

#if defined(SELFNORM_AMX)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace selfnorm::amx {

std::ptrdiff_t b_plane_stride(std::int64_t k) {
  // Two column tiles of whole pair rows; one extra cache line when they would fall a multiple of
  // 4 KiB apart.
  std::ptrdiff_t half = round_k(k) / 2 * kPairRow;
  if ((half * 2) % 4096 == 0) half += 32;
  return 2 * half;
}

double a_size(std::int64_t m, std::int64_t k) {
  return static_cast<double>(kPlanes) * static_cast<double>(row_tiles(m)) *
         static_cast<double>(round_k(k) / kChunk) * static_cast<double>(kTileElements);
}

#if defined(SELFNORM_AMX)

namespace {

// The three pieces of 16 floats, as float32 bit patterns whose low 16 bits are zero (so a piece's
// bfloat16 is its high half).
[[gnu::always_inline]] inline void pieces(__m512 v, __m512i& p0, __m512i& p1, __m512i& p2) {
  const __m512i hi = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  const __mmask16 finite = _mm512_cmp_ps_mask(_mm512_abs_ps(v), _mm512_set1_ps(__builtin_inff()), _CMP_LT_OQ);
  // Truncation never rounds up to inf; a NaN whose payload lies in the low bits stays a NaN.
  p0 = _mm512_mask_mov_epi32(_mm512_and_si512(_mm512_castps_si512(v), hi), nan, _mm512_set1_epi32(0x7FC00000));
  // Both differences are exact; an inf or NaN is carried by p0 alone.
  const __m512 r1 = _mm512_maskz_sub_ps(finite, v, _mm512_castsi512_ps(p0));
  p1 = _mm512_and_si512(_mm512_castps_si512(r1), hi);
  const __m512 r2 = _mm512_sub_ps(r1, _mm512_castsi512_ps(p1));
  p2 = _mm512_and_si512(_mm512_castps_si512(r2), hi);
}

// The high halves of 16 pieces, as 16 bfloat16.
[[gnu::always_inline]] inline __m256i bf16(__m512i p) { return _mm512_cvtepi32_epi16(_mm512_srli_epi32(p, 16)); }

// Row r of the three tiles of A at tile (plane q's at tile + q * plane_step) from the pieces of its
// 32 values (p[h][q]: values 16 h to 16 h + 15, piece q); `stream` writes around the caches (the
// tiles must then be 64-byte aligned).
[[gnu::always_inline]] inline void store_tile_row(const __m512i (&p)[2][3], std::uint16_t* tile, std::ptrdiff_t plane_step,
                                                  int r, bool stream) {
  for (int q = 0; q < kPlanes; ++q) {
    auto* out = reinterpret_cast<__m512i*>(tile + q * plane_step + r * kChunk);
    const __m512i row = _mm512_inserti64x4(_mm512_castsi256_si512(bf16(p[0][q])), bf16(p[1][q]), 1);
    if (stream) {
      _mm512_stream_si512(out, row);
    } else {
      _mm512_storeu_si512(out, row);
    }
  }
}

struct TileConfig {
  std::uint8_t palette = 1;
  std::uint8_t start_row = 0;
  std::uint8_t reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};

constexpr long kArchReqXcompPerm = 0x1023;
constexpr long kXfeatureXtiledata = 18;

}  // namespace

void configure_tiles() {
  thread_local bool configured = false;
  if (configured) return;
  alignas(64) TileConfig config;
  for (int t = 0; t < 8; ++t) {
    config.colsb[t] = 64;
    config.rows[t] = 16;
  }
  // Not _tile_loadconfig: GCC 12 declares only the config's first 8 bytes as its input, so the
  // stores to the rest may be dropped or moved past it (a #GP at ldtilecfg where they were).
  asm volatile("ldtilecfg %0" : : "m"(config));
  configured = true;
}

bool built() { return true; }

bool available() {
  // The build targets AVX-512 and AMX; these checks keep a binary carried to another machine from
  // using them where the CPU or the operating system does not support both.
  static const bool ok = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1u)) return false;  // OSXSAVE
    unsigned xcr0_lo = 0, xcr0_hi = 0;
    asm volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    constexpr unsigned kZmmState = 0xE6;  // SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM
    if ((xcr0_lo & kZmmState) != kZmmState) return false;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool avx512 = ((b >> 16) & 1u) && ((b >> 17) & 1u) && ((b >> 30) & 1u) && ((b >> 31) & 1u);  // F DQ BW VL
    const bool amx_bf16 = (d >> 22) & 1u;
    const bool amx_tile = (d >> 24) & 1u;
    if (!avx512 || !amx_bf16 || !amx_tile) return false;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}

void split_a_tile(const float* block, std::ptrdiff_t ld, std::uint16_t* tile, std::ptrdiff_t plane_step) {
  for (int r = 0; r < kTileRows; ++r) {
    __m512i p[2][3];
    for (int h = 0; h < 2; ++h) pieces(_mm512_loadu_ps(block + r * ld + 16 * h), p[h][0], p[h][1], p[h][2]);
    store_tile_row(p, tile, plane_step, r, false);
  }
}

void split_a_strips(const float* strips, std::int64_t strip0, std::ptrdiff_t ss, bool transposed, std::int64_t m,
                    std::int64_t k, std::int64_t i, std::int64_t c, std::uint16_t* tile, std::ptrdiff_t plane_step,
                    bool stream) {
  constexpr std::int64_t S = kStrip;
  const std::int64_t t0 = c * kChunk;
  // Columns t0 + h * 16 + lane that lie inside k.
  const std::int64_t cols = std::clamp<std::int64_t>(k - t0, 0, kChunk);
  const __mmask16 in[2] = {static_cast<__mmask16>(cols >= 16 ? 0xFFFF : (1u << cols) - 1),
                           static_cast<__mmask16>(cols >= 32 ? 0xFFFF : cols > 16 ? (1u << (cols - 16)) - 1 : 0)};
  // Offsets of the 32 columns from a row's base.
  __m512i offset[2];
  for (int h = 0; h < 2; ++h) {
    alignas(64) std::int32_t o[16];
    for (int lane = 0; lane < 16; ++lane) {
      const std::int64_t t = 16 * h + lane;
      o[lane] = static_cast<std::int32_t>(transposed ? ((t0 % S + t) / S) * ss + (t0 % S + t) % S : t * S);
    }
    offset[h] = _mm512_load_si512(o);
  }
  for (int r = 0; r < kTileRows; ++r) {
    const std::int64_t row = i * kTileRows + r;
    __m512i p[2][3];
    for (int h = 0; h < 2; ++h) {
      __m512 v = _mm512_setzero_ps();
      if (row < m) {
        const float* base = transposed ? strips + (t0 / S - strip0) * ss + row * S
                                       : strips + (row / S - strip0) * ss + row % S + t0 * S;
        v = _mm512_mask_i32gather_ps(v, in[h], offset[h], base, 4);
      }
      pieces(v, p[h][0], p[h][1], p[h][2]);
    }
    store_tile_row(p, tile, plane_step, r, stream);
  }
}

void split_b_pair(const float* r0, const float* r1, std::int64_t pair, std::uint16_t* panel,
                  std::ptrdiff_t plane_stride) {
  std::uint16_t* dst = panel + pair * kPairRow;
  const __m512i hi = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int h = 0; h < 2; ++h) {
    __m512i e[3], o[3];
    pieces(_mm512_loadu_ps(r0 + 16 * h), e[0], e[1], e[2]);
    pieces(r1 ? _mm512_loadu_ps(r1 + 16 * h) : _mm512_setzero_ps(), o[0], o[1], o[2]);
    for (int q = 0; q < kPlanes; ++q) {
      // Sample s's pair: row k in the low half of its 32 bits, row k + 1 in the high half.
      const __m512i both = _mm512_or_si512(_mm512_and_si512(o[q], hi), _mm512_srli_epi32(e[q], 16));
      _mm512_storeu_si512(dst + q * plane_stride + h * (plane_stride / 2), both);
    }
  }
}

void zero_b_pairs(std::int64_t pair0, std::int64_t pair1, std::uint16_t* panel, std::ptrdiff_t plane_stride) {
  for (int q = 0; q < kPlanes; ++q) {
    for (int h = 0; h < 2; ++h) {
      std::uint16_t* tile = panel + q * plane_stride + h * (plane_stride / 2);
      std::fill(tile + pair0 * kPairRow, tile + pair1 * kPairRow, std::uint16_t(0));
    }
  }
}

void gemm(std::int64_t m, std::int64_t k, std::int64_t panels, SplitA a, SplitB b, float* c_block,
          RowsDone<float> done) {
  configure_tiles();
  const std::ptrdiff_t ldc = gemm_block_ld<float>(panels);
  const std::int64_t chunks = round_k(k) / kChunk;
  const std::ptrdiff_t plane_a = a.row_tiles * a.chunks * kTileElements;
  const std::ptrdiff_t below = a.chunks * kTileElements;  // the next row tile of A
  const std::ptrdiff_t half = b.plane_stride / 2;          // the second column tile of B
  constexpr int kStrideA = kChunk * 2;                     // bytes per row of an A tile
  constexpr int kStrideB = kPairRow * 2;                   // bytes per pair row of a B tile
  const auto ldc_bytes = static_cast<int>(ldc * 4);
  for (std::int64_t row0 = 0; row0 < m; row0 += kBlockRows) {
    const std::int64_t rows = std::min(kBlockRows, m - row0);
    // A panel of B (192 KiB at k = 1024) stays in L2 while the block's rows of A pass over it.
    for (std::int64_t q = 0; q < panels; ++q) {
      const std::uint16_t* b_panel = b.data + q * kPlanes * b.plane_stride;
      for (std::int64_t r = 0; r < rows; r += 2 * kTileRows) {
        const std::uint16_t* a_tile = a.data + (row0 + r) / kTileRows * a.chunks * kTileElements;
        // C, 32 rows by the panel's 32 samples, in tiles 0-3 (row tile, column tile); A's two row
        // tiles of plane p in tiles 4, 5, B's two column tiles of plane p in 6, 7.
        auto load_a = [&](int p, std::int64_t c) {
          const std::uint16_t* t = a_tile + p * plane_a + c * kTileElements;
          _tile_loadd(4, t, kStrideA);
          _tile_loadd(5, t + below, kStrideA);
        };
        auto load_b = [&](int p, std::int64_t c) {
          const std::uint16_t* t = b_panel + p * b.plane_stride + c * kTileElements;
          _tile_loadd(6, t, kStrideB);
          _tile_loadd(7, t + half, kStrideB);
        };
        auto multiply = [] {
          _tile_dpbf16ps(0, 4, 6);
          _tile_dpbf16ps(1, 4, 7);
          _tile_dpbf16ps(2, 5, 6);
          _tile_dpbf16ps(3, 5, 7);
        };
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        // The five smaller products over all of k first, in an order that reuses a loaded plane
        // (a0 b2, a0 b1, a1 b1, a1 b0, a2 b0); then a0 b0, on top of their sum.
        for (std::int64_t c = 0; c < chunks; ++c) {
          load_a(0, c);
          load_b(2, c);
          multiply();
          load_b(1, c);
          multiply();
          load_a(1, c);
          multiply();
          load_b(0, c);
          multiply();
          load_a(2, c);
          multiply();
        }
        for (std::int64_t c = 0; c < chunks; ++c) {
          load_a(0, c);
          load_b(0, c);
          multiply();
        }
        float* cq = c_block + r * ldc + q * kPanel<float>;
        _tile_stored(0, cq, ldc_bytes);
        _tile_stored(1, cq + 16, ldc_bytes);
        _tile_stored(2, cq + kTileRows * ldc, ldc_bytes);
        _tile_stored(3, cq + kTileRows * ldc + 16, ldc_bytes);
      }
    }
    done(row0, rows, c_block, ldc);
  }
}

#else  // no AMX in this build

bool built() { return false; }
bool available() { return false; }

namespace {
[[noreturn]] void unavailable() { throw std::logic_error("this build of selfnorm has no AMX kernel"); }
}  // namespace

void configure_tiles() { unavailable(); }
void split_a_tile(const float*, std::ptrdiff_t, std::uint16_t*, std::ptrdiff_t) { unavailable(); }
void split_a_strips(const float*, std::int64_t, std::ptrdiff_t, bool, std::int64_t, std::int64_t, std::int64_t,
                    std::int64_t, std::uint16_t*, std::ptrdiff_t, bool) {
  unavailable();
}
void split_b_pair(const float*, const float*, std::int64_t, std::uint16_t*, std::ptrdiff_t) { unavailable(); }
void zero_b_pairs(std::int64_t, std::int64_t, std::uint16_t*, std::ptrdiff_t) { unavailable(); }
void gemm(std::int64_t, std::int64_t, std::int64_t, SplitA, SplitB, float*, RowsDone<float>) { unavailable(); }

#endif

}  // namespace selfnorm::amx
