// Matrix transposition, where the engine's random streams (a row per sample: inputs, upstream
// gradients) meet its unit-major matrices, and for the weight gradients' operand.
#pragma once

#include <cstddef>
#include <cstdint>

namespace selfnorm {

// dst (cols x rows, leading dimension ldd) = src^T (src: rows x cols, leading dimension lds).
// Full 16 x 16 (float) or 8 x 8 (double) tiles go through AVX-512 registers where available.
template <class T>
void transpose(const T* src, std::ptrdiff_t lds, std::int64_t rows, std::int64_t cols, T* dst, std::ptrdiff_t ldd);

}  // namespace selfnorm
