// Dense matrix products for the engine's two shapes: h = x W (forward, W read row by row) and
// g^T = W d^T (backward, W read row by row again), so one copy of each weight matrix serves both
// directions and is never transposed or packed.
//
// Determinism contract: every element of C is computed by the same sequence of floating-point
// operations whatever m and n are, and however the caller splits C into pieces. The reduction
// over k runs in blocks of a fixed length, each block summed in order into a register and then
// added to C. A result therefore does not depend on the number of threads that share the work.
#pragma once

#include <cstddef>
#include <string_view>

namespace selfnorm {

enum class GemmUpdate { overwrite, accumulate };

// C = A B (overwrite) or C += A B (accumulate). A is m x k, B is k x n, C is m x n, all
// row-major with leading dimensions lda, ldb, ldc (in elements). Single-threaded; A, B and C
// must not overlap. Leading dimensions that are multiples of 1024 bytes are slow (cache-set
// aliasing): pad them, see padded_ld().
template <class T>
void gemm(std::ptrdiff_t m, std::ptrdiff_t n, std::ptrdiff_t k, const T* a, std::ptrdiff_t lda, const T* b,
          std::ptrdiff_t ldb, T* c, std::ptrdiff_t ldc, GemmUpdate update);

// A leading dimension for rows of `cols` elements of T: a whole number of 64-byte lines, and
// never a multiple of 1024 bytes.
std::ptrdiff_t padded_ld(std::ptrdiff_t cols, std::size_t element_size);

// Which kernel gemm() uses in this build: "avx512" or "eigen".
std::string_view gemm_backend();

}  // namespace selfnorm
