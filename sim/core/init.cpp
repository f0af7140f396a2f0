#include "core/init.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include <Eigen/Dense>

#include "core/random.hpp"

namespace selfnorm {
namespace {

// One draw from N(0, 1) truncated to [-2, 2], by rejection with its own sub-stream per element
// (element e, attempt k uses words 64 e + 2k and 64 e + 2k + 1), so elements stay independent
// of each other and of the order they are generated in. Acceptance is 95.4% per attempt.
double truncated_standard_normal(std::uint64_t key, std::uint64_t element) {
  constexpr double kTwoPi = 6.28318530717958647693;
  for (std::uint64_t k = 0; k < 32; ++k) {
    const double u1 = uniform_open(stream_word(key, 64 * element + 2 * k));
    const double u2 = uniform_open(stream_word(key, 64 * element + 2 * k + 1));
    const double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(kTwoPi * u2);
    if (std::abs(z) <= 2.0) return z;
  }
  return 0.0;  // probability 0.046^32 < 1e-42
}

}  // namespace

WeightScale weight_scale(const InitSpec& init, std::int64_t fan_in, std::int64_t fan_out) {
  const double in = static_cast<double>(fan_in);
  const double out = static_cast<double>(fan_out);
  double base = 1.0 / in;
  if (init.kind == InitKind::he_normal) base = 2.0 / in;
  if (init.kind == InitKind::glorot_normal) base = 2.0 / (in + out);
  return {std::sqrt(init.weight_variance * base), init.weight_mean / in};
}

bool init_is_elementwise(InitKind kind) { return kind != InitKind::orthogonal; }

template <class T>
void generate_weight_strips(const InitSpec& init, std::uint64_t key, std::int64_t fan_in, std::int64_t fan_out,
                            std::int64_t strip_begin, std::int64_t strip_end, std::int64_t rows, T* w,
                            std::ptrdiff_t stride) {
  if (!init_is_elementwise(init.kind)) {
    throw std::invalid_argument("generate_weight_strips: orthogonal weights need the whole matrix");
  }
  if (rows < fan_in || stride < rows * kWeightStrip) {
    throw std::invalid_argument("generate_weight_strips: a strip needs rows >= fan_in and stride >= rows * 12");
  }
  const WeightScale sc = weight_scale(init, fan_in, fan_out);
  const std::int64_t drawn = fan_in * kWeightStrip;  // elements of a strip in the stream
  for (std::int64_t s = strip_begin; s < strip_end; ++s) {
    T* strip = w + (s - strip_begin) * stride;
    const auto first = weight_element(0, s * kWeightStrip, fan_in);
    const auto n = static_cast<std::size_t>(drawn);
    switch (init.kind) {
      case InitKind::lecun_uniform: {
        const double a = std::sqrt(3.0) * sc.stddev;
        fill_uniform<T>(key, first, n, strip, static_cast<T>(sc.mean - a), static_cast<T>(sc.mean + a));
        break;
      }
      case InitKind::truncated_normal: {
        const double scale = sc.stddev / std::sqrt(kTruncatedNormalVariance);
        for (std::int64_t e = 0; e < drawn; ++e) {
          const double z = truncated_standard_normal(key, first + static_cast<std::uint64_t>(e));
          strip[e] = static_cast<T>(sc.mean + scale * z);
        }
        break;
      }
      default:
        fill_normal<T>(key, first, n, strip, static_cast<T>(sc.mean), static_cast<T>(sc.stddev));
        break;
    }
    const std::int64_t cols = std::min(kWeightStrip, fan_out - s * kWeightStrip);
    if (cols < kWeightStrip) {
      for (std::int64_t i = 0; i < fan_in; ++i) {
        std::fill(strip + i * kWeightStrip + cols, strip + (i + 1) * kWeightStrip, T(0));
      }
    }
    std::fill(strip + drawn, strip + rows * kWeightStrip, T(0));
  }
}

double generate_weights_scratch_bytes(InitKind kind, std::int64_t fan_in, std::int64_t fan_out) {
  const double weights = static_cast<double>(fan_in) * static_cast<double>(fan_out);
  if (init_is_elementwise(kind)) return static_cast<double>(kWeightStrip) * static_cast<double>(fan_in) * 8.0;
  // g, the drawn buffer, the factorisation's copy of g and q; R's coefficients are a column more.
  return 4.0 * 8.0 * weights + 8.0 * static_cast<double>(std::max(fan_in, fan_out));
}

template <class T>
void generate_weights(const InitSpec& init, std::uint64_t key, std::int64_t fan_in, std::int64_t fan_out, T* w,
                      std::ptrdiff_t ld) {
  if (init_is_elementwise(init.kind)) {
    std::vector<T> strip(static_cast<std::size_t>(fan_in * kWeightStrip));
    for (std::int64_t s = 0; s * kWeightStrip < fan_out; ++s) {
      generate_weight_strips(init, key, fan_in, fan_out, s, s + 1, fan_in, strip.data(), fan_in * kWeightStrip);
      const std::int64_t j0 = s * kWeightStrip;
      const std::int64_t cols = std::min(kWeightStrip, fan_out - j0);
      for (std::int64_t i = 0; i < fan_in; ++i) {
        std::copy_n(strip.data() + i * kWeightStrip, cols, w + i * ld + j0);
      }
    }
    return;
  }
  // Orthogonal: the Q factor of a Gaussian matrix, with the signs of R's diagonal folded in so
  // that Q is Haar-distributed (Mezzadri 2007). Tall: orthonormal columns; wide: orthonormal rows.
  const std::int64_t rows = std::max(fan_in, fan_out);
  const std::int64_t cols = std::min(fan_in, fan_out);
  Eigen::MatrixXd g(rows, cols);
  std::vector<double> buffer(static_cast<std::size_t>(rows * cols));
  fill_normal<double>(key, 0, buffer.size(), buffer.data(), 0.0, 1.0);
  for (std::int64_t i = 0; i < rows; ++i) {
    for (std::int64_t j = 0; j < cols; ++j) g(i, j) = buffer[static_cast<std::size_t>(i * cols + j)];
  }
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(g);
  Eigen::MatrixXd q = qr.householderQ() * Eigen::MatrixXd::Identity(rows, cols);
  const Eigen::MatrixXd& r = qr.matrixQR();
  for (std::int64_t j = 0; j < cols; ++j) {
    if (r(j, j) < 0) q.col(j) = -q.col(j);
  }
  // Entries of q have mean square 1/rows; scale to weight_variance / fan_in like lecun_normal.
  const WeightScale s = weight_scale(init, fan_in, fan_out);
  const double scale = s.stddev * std::sqrt(static_cast<double>(rows));
  for (std::int64_t i = 0; i < fan_in; ++i) {
    for (std::int64_t j = 0; j < fan_out; ++j) {
      const double v = fan_in >= fan_out ? q(i, j) : q(j, i);
      w[i * ld + j] = static_cast<T>(s.mean + scale * v);
    }
  }
}

template <class T>
void generate_inputs(const InputSpec& input, std::uint64_t key, std::int64_t width, std::int64_t sample_begin,
                     std::int64_t rows, T* x, std::ptrdiff_t ld) {
  const double sd = std::sqrt(input.variance);
  for (std::int64_t r = 0; r < rows; ++r) {
    const auto first = static_cast<std::uint64_t>((sample_begin + r) * width);
    T* row = x + r * ld;
    if (input.distribution == InputDistribution::uniform) {
      const double a = std::sqrt(3.0) * sd;
      fill_uniform<T>(key, first, static_cast<std::size_t>(width), row, static_cast<T>(input.mean - a),
                      static_cast<T>(input.mean + a));
    } else {
      fill_normal<T>(key, first, static_cast<std::size_t>(width), row, static_cast<T>(input.mean),
                     static_cast<T>(sd));
    }
  }
}

#define SELFNORM_INSTANTIATE(T)                                                                            \
  template void generate_weight_strips<T>(const InitSpec&, std::uint64_t, std::int64_t, std::int64_t,     \
                                          std::int64_t, std::int64_t, std::int64_t, T*, std::ptrdiff_t);  \
  template void generate_weights<T>(const InitSpec&, std::uint64_t, std::int64_t, std::int64_t, T*,       \
                                    std::ptrdiff_t);                                                      \
  template void generate_inputs<T>(const InputSpec&, std::uint64_t, std::int64_t, std::int64_t,           \
                                   std::int64_t, T*, std::ptrdiff_t);
SELFNORM_INSTANTIATE(float)
SELFNORM_INSTANTIATE(double)
#undef SELFNORM_INSTANTIATE

}  // namespace selfnorm
