// Helpers shared by the unit tests: floating-point distance in ulps, k-sigma checks, small
// engine specs, temporary folders.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <random>
#include <string>
#include <system_error>

#include <catch2/catch.hpp>

#include "core/engine.hpp"
#include "core/moments.hpp"

namespace selfnorm::test {

// Statistical tests accept a deviation of up to kSigma standard errors (seeded, so a pass or a
// failure replays exactly).
inline constexpr double kSigma = 4.0;

// One unit in the last place of T at x rounded to T (at least T's smallest subnormal).
template <class T>
long double ulp_of(long double x) {
  const T b = std::abs(static_cast<T>(x));
  const long double ulp = std::nextafter(b, std::numeric_limits<T>::infinity()) - b;
  return std::max(ulp, static_cast<long double>(std::numeric_limits<T>::denorm_min()));
}

// Distance between a and b in units in the last place of b (the reference).
template <class T>
double ulp_error(T a, long double reference) {
  const T b = static_cast<T>(reference);
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b) ? 0 : std::numeric_limits<double>::infinity();
  if (std::isinf(reference) || std::isinf(a)) return a == b ? 0 : std::numeric_limits<double>::infinity();
  return static_cast<double>(std::abs(static_cast<long double>(a) - reference) / ulp_of<T>(reference));
}

// The larger of a running worst error and a new one e, a NaN e counting as infinitely bad:
// std::max(worst, NaN) returns worst, and would let a NaN result pass a sweep's bound.
inline double worse(double worst, double e) { return std::isnan(e) ? std::numeric_limits<double>::infinity() : std::max(worst, e); }

// Moments of one layer's statistic over the trials of a result.
inline Moments over_trials(const PointResult& r, Stat s, int layer) {
  Moments m;
  for (std::int64_t t = 0; t < r.trials; ++t) {
    m.push(r.per_trial[static_cast<int>(s)][static_cast<std::size_t>(t * r.depth + layer - 1)]);
  }
  return m;
}

// A statistic's infinite-width value from Monte Carlo at widths n and n/2. At fixed depth the
// expectation of a per-layer statistic is S + b / n + c / n^2 + ... (finite-width corrections,
// Hanin and Nica 2019), so 2 S_n - S_{n/2} estimates S with the 1/n term removed (Richardson),
// leaving -2 c / n^2. From two independent runs its standard error is sqrt(4 se_n^2 + se_{n/2}^2).
struct Extrapolated {
  double value = 0.0;
  double standard_error = 0.0;
};
inline Extrapolated extrapolate_width(const Moments& at_n, const Moments& at_half) {
  const double se_n = at_n.standard_error(), se_half = at_half.standard_error();
  return {2.0 * at_n.mean - at_half.mean, std::sqrt(4.0 * se_n * se_n + se_half * se_half)};
}

// extrapolate_width of one statistic at one layer, from the results at widths n and n/2.
inline Extrapolated extrapolated(const PointResult& at_n, const PointResult& at_half, Stat s, int layer) {
  return extrapolate_width(over_trials(at_n, s, layer), over_trials(at_half, s, layer));
}

// Checks selu's fixed point, activation mean 0 and variance 1, at one layer: each within kSigma
// standard errors of its extrapolation from widths n and n/2.
inline void check_unit_fixed_point(const PointResult& at_n, const PointResult& at_half, int layer) {
  const Extrapolated mean = extrapolated(at_n, at_half, Stat::activation_mean, layer);
  const Extrapolated var = extrapolated(at_n, at_half, Stat::activation_var, layer);
  INFO("layer " << layer << ": mean " << mean.value << " +- " << mean.standard_error << ", var " << var.value
                << " +- " << var.standard_error);
  CHECK(std::abs(mean.value) <= kSigma * mean.standard_error);
  CHECK(std::abs(var.value - 1.0) <= kSigma * var.standard_error);
}

// A uniform-width spec.
inline PointSpec make_spec(Activation act, int depth, std::int64_t width, std::int64_t trials, std::int64_t batch,
                           Precision precision = Precision::float64) {
  PointSpec s;
  s.activation = act;
  s.network.widths.assign(static_cast<std::size_t>(depth + 1), width);
  s.monte_carlo.trials = trials;
  s.monte_carlo.batch = batch;
  s.precision = precision;
  return s;
}

// The same spec at another uniform width.
inline PointSpec with_width(PointSpec s, std::int64_t width) {
  s.network.widths.assign(s.network.widths.size(), width);
  return s;
}

// A fresh temporary folder, removed with everything in it at the end of the test.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::random_device rd;
    path = std::filesystem::temp_directory_path() / ("selfnorm-test-" + std::to_string(rd()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

}  // namespace selfnorm::test
