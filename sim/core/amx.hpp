// float32 products on Intel's matrix units (AMX), as sums of bfloat16 products.
//
// Each float32 operand is split exactly into three bfloat16 pieces, a = a0 + a1 + a2: a0 is a
// truncated to its top 8 significant bits, a1 the next 8 bits of the remainder, a2 the rest
// (Henry, Tang & Heinecke 2019, "Leveraging the bfloat16 artificial intelligence datatype for
// higher-precision computations"). Six of the nine products of the pieces are summed:
//   a b ~ a0 b0 + (a0 b1 + a1 b0 + a0 b2 + a1 b1 + a2 b0),
// each exact in float32 and accumulated in float32 by the tile unit. The three dropped products
// are below 2^-22 |a b| together. The five smaller products are summed first, over all of k,
// while the accumulator holds only their sum (2^-7 of the result or less), and a0 b0 comes on top:
// only the leading term's additions round at the scale of the result, as in a float32 FMA loop.
// tests/unit/test_amx.cpp checks the error against float64: at k = 1024 it is a fifth of an
// in-order FMA sum's (the tile unit's own additions round less often than one per product).
//
// Values below 2^-103 in magnitude lose the low bits of their last piece, and float32 subnormals
// (below 2^-126) count as zero: the tile unit reads subnormal bfloat16 as zero. Inf and NaN
// carry through as in float32, except that an inf operand gives NaN instead of a signed inf in
// any sum it enters. Near the top of the float32 range, a single piece product beyond 3.4e38
// overflows, where a fused multiply-add could still bring the sum back below it: blown-up layers
// can count somewhat different entries as non-finite than with FMA (tests/python/test_blowups.py).
//
// Layouts (bfloat16 stored as uint16_t; k, the inner dimension, rounded up to kChunk with zeros):
//   A, m x k:  tiles of 16 rows x 32 k, row-major, tile (plane p, row tile i, chunk c) at
//              data + ((p * row_tiles + i) * chunks + c) * kTileElements; rows up to a multiple
//              of 32 exist (zeros past m).
//   B, k x samples: per panel of kPanel<float> = 32 samples, plane p and half h = s / 16 (a
//              column tile), pairs of k interleaved per sample ("VNNI"): (k, s) at
//              data + (panel * 3 + p) * plane_stride + h * plane_stride / 2 + (k / 2) * 32
//              + 2 (s % 16) + k % 2. Each tile of B is then 1 KiB in one piece.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/gemm.hpp"

// Defined where the build targets AMX-BF16 and AVX-512 on Linux, the kernel's requirements (GCC
// spells the feature macros __AMX_TILE__ and __AMX_BF16__, clang __AMXTILE__ and __AMXBF16__).
#if (defined(__AMX_TILE__) || defined(__AMXTILE__)) && (defined(__AMX_BF16__) || defined(__AMXBF16__)) && \
    defined(__AVX512F__) && defined(__linux__)
#define SELFNORM_AMX 1
#endif

namespace selfnorm::amx {

inline constexpr int kPlanes = 3;
inline constexpr std::int64_t kTileRows = 16;
inline constexpr std::int64_t kChunk = 32;  // k per tile row
inline constexpr std::int64_t kTileElements = kTileRows * kChunk;
// uint16_t per pair of k in a column tile of B: 16 samples x 2.
inline constexpr std::int64_t kPairRow = 32;

// True if this build has the AMX kernel (compiled for a CPU with AMX-BF16).
bool built();
// True if this build has the AMX kernel, the CPU has AMX-BF16 and the operating system lets the
// process use the tile registers (asked once).
bool available();
// Loads the kernel's tile configuration (all eight tiles 16 rows of 64 bytes) into the calling
// thread, once per thread; gemm does it itself. Only where available().
void configure_tiles();

inline std::int64_t round_k(std::int64_t k) { return (k + kChunk - 1) / kChunk * kChunk; }
// Row tiles of an A operand with m rows (rows rounded up to a multiple of 32).
inline std::int64_t row_tiles(std::int64_t m) { return (m + 2 * kTileRows - 1) / (2 * kTileRows) * 2; }
// uint16_t of one plane of one panel of B with k rows (k rounded up to kChunk): its two column
// tiles, each padded so that they do not start a multiple of 4 KiB apart.
std::ptrdiff_t b_plane_stride(std::int64_t k);
// uint16_t of an A operand m x k, counted in double so that estimates for absurd shapes come out
// huge instead of overflowing.
double a_size(std::int64_t m, std::int64_t k);

struct SplitA {
  const std::uint16_t* data = nullptr;
  std::int64_t row_tiles = 0;
  std::int64_t chunks = 0;
};
struct SplitB {
  const std::uint16_t* data = nullptr;  // panel 0, plane 0
  std::ptrdiff_t plane_stride = 0;
};

// Splits a 16 x 32 float block (row-major, leading dimension ld) into the three tiles of A at
// `tile` (plane p's tile at tile + p * plane_step).
void split_a_tile(const float* block, std::ptrdiff_t ld, std::uint16_t* tile, std::ptrdiff_t plane_step);

// Tile (row tile i, chunk c) of the split A for an m x k matrix M held in strips of kStrip rows
// (gemm.hpp's StripView, strip stride ss), of which `strips` holds those from strip0 on: M = S,
// with M(r, t) = S(r, t) = strips[(r / kStrip - strip0) ss + t kStrip + r % kStrip], or M = S^T
// (transposed), with M(r, t) = S(t, r). Zeros past m and k; only strips that hold elements of
// the tile are read. Plane p's tile at tile + p * plane_step (64-byte aligned). `stream`: write
// around the caches, for a copy that is read much later.
void split_a_strips(const float* strips, std::int64_t strip0, std::ptrdiff_t ss, bool transposed, std::int64_t m,
                    std::int64_t k, std::int64_t i, std::int64_t c, std::uint16_t* tile, std::ptrdiff_t plane_step,
                    bool stream);

// Splits the 32 samples of rows k (at r0) and k + 1 (at r1; nullptr for a zero row) of a panel into
// pair k / 2 of that panel of B (at panel).
void split_b_pair(const float* r0, const float* r1, std::int64_t pair, std::uint16_t* panel,
                  std::ptrdiff_t plane_stride);
// Zeros pair rows [pair0, pair1) of one panel of B.
void zero_b_pairs(std::int64_t pair0, std::int64_t pair1, std::uint16_t* panel, std::ptrdiff_t plane_stride);

// C = A B as in selfnorm::gemm (gemm.hpp): A m x k, B k x (panels * 32), C built kBlockRows rows at
// a time in c_block (gemm_block_size<float>(panels) elements) and handed to `done` in row order.
// Single-threaded. Every element of C is computed by the same operations whatever m, the panels
// and the block it falls in.
void gemm(std::int64_t m, std::int64_t k, std::int64_t panels, SplitA a, SplitB b, float* c_block,
          RowsDone<float> done);

}  // namespace selfnorm::amx
