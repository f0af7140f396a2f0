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

// True if the initialiser draws each weight independently (strips can be generated separately);
// false for orthogonal, which needs the whole matrix at once.
bool init_is_elementwise(InitKind kind);

// The temporary memory generate_weights allocates for one fan_in x fan_out matrix (at most; the
// QR factorisation of orthogonal weights holds four double matrices of its size at once).
double generate_weights_scratch_bytes(InitKind kind, std::int64_t fan_in, std::int64_t fan_out);

// The order in which a layer's weights are drawn from its stream: in strips of kWeightStrip output
// units, each strip input by input. Weight (i, j) of W (fan_in x fan_out) is element
//   (j / kWeightStrip) kWeightStrip fan_in + kWeightStrip i + j % kWeightStrip
// of the stream, so a strip is one contiguous run of it: the CPU engine draws W^T straight into
// the strips its products read (core/gemm.hpp's StripView, kStrip = kWeightStrip). Elements for
// columns past fan_out, in the last strip when kWeightStrip does not divide fan_out, are unused.
inline constexpr std::int64_t kWeightStrip = 12;
constexpr std::uint64_t weight_element(std::int64_t i, std::int64_t j, std::int64_t fan_in) {
  return static_cast<std::uint64_t>((j / kWeightStrip) * kWeightStrip * fan_in + kWeightStrip * i + j % kWeightStrip);
}

// Strips [strip_begin, strip_end) of W for an elementwise initialiser (init_is_elementwise):
// strip s at w + (s - strip_begin) * stride holds W(i, s kWeightStrip + r) at [i kWeightStrip + r]
// for i < fan_in, and zeros for columns past fan_out and for the rows [fan_in, rows) that pad
// the inputs (rows >= fan_in; stride >= rows kWeightStrip). Values depend only on the key.
template <class T>
void generate_weight_strips(const InitSpec& init, std::uint64_t key, std::int64_t fan_in, std::int64_t fan_out,
                            std::int64_t strip_begin, std::int64_t strip_end, std::int64_t rows, T* w,
                            std::ptrdiff_t stride);

// All of W, row-major (row i at w + i * ld), for any initialiser; orthogonal needs the whole
// matrix at once, and temporary memory of generate_weights_scratch_bytes besides.
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
