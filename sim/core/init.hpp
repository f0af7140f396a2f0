// Weight, bias and input generation from the counter-based streams.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/spec.hpp"

namespace selfnorm {

// Standard deviation and per-weight mean of layer weights under `init`, for fan_in, fan_out.
struct WeightScale {
  double stddev;  // of each weight
  double mean;    // of each weight: weight_mean / fan_in
};
WeightScale weight_scale(const InitSpec& init, std::int64_t fan_in, std::int64_t fan_out);

// True if the initialiser draws each weight independently (rows can be generated separately);
// false for orthogonal, which needs the whole matrix at once.
bool init_is_elementwise(InitKind kind);

// Writes rows [row_begin, row_end) of W (fan_in x fan_out) for stream `key`, row i at
// w + (i - row_begin) * ld. Weight (i, j) is element i * fan_out + j of the stream, whatever the slice.
template <class T>
void generate_weight_rows(const InitSpec& init, std::uint64_t key, std::int64_t fan_in, std::int64_t fan_out,
                          std::int64_t row_begin, std::int64_t row_end, T* w, std::ptrdiff_t ld);

// Writes all of W for initialisers that need the whole matrix (orthogonal); any initialiser works.
template <class T>
void generate_weights(const InitSpec& init, std::uint64_t key, std::int64_t fan_in, std::int64_t fan_out, T* w,
                      std::ptrdiff_t ld);

// Input rows: x[r][j] for samples [sample_begin, sample_begin + rows), element sample * width + j.
template <class T>
void generate_inputs(const InputSpec& input, std::uint64_t key, std::int64_t width, std::int64_t sample_begin,
                     std::int64_t rows, T* x, std::ptrdiff_t ld);

// The variance of N(0, 1) truncated to [-2, 2]: 1 - 4 phi(2) / (Phi(2) - Phi(-2)).
inline constexpr double kTruncatedNormalVariance = 0.7737413035499232;

}  // namespace selfnorm
