// Mergeable first and second moments: (count, mean, M2) with Chan, Golub, LeVeque's update
// (1979, "Updating formulae and a pairwise algorithm for computing sample variances").
// Merging two accumulators equals pushing all their values into one, up to rounding, and the
// result does not suffer the cancellation of sum-of-squares formulas when the mean is large.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

namespace selfnorm {

struct Moments {
  std::int64_t count = 0;
  double mean = 0.0;
  double m2 = 0.0;  // sum of squared deviations from the mean

  // Adds one value (Welford's update).
  void push(double x) {
    ++count;
    const double delta = x - mean;
    mean += delta / static_cast<double>(count);
    m2 += delta * (x - mean);
  }

  // Adds all values summarised by `other`.
  void merge(const Moments& other) {
    if (other.count == 0) return;
    if (count == 0) {
      *this = other;
      return;
    }
    const double na = static_cast<double>(count);
    const double nb = static_cast<double>(other.count);
    const double n = na + nb;
    const double delta = other.mean - mean;
    mean += delta * (nb / n);
    m2 += other.m2 + delta * delta * (na * nb / n);
    count += other.count;
  }

  // Population variance M2 / n (NaN when empty).
  double variance() const {
    return count > 0 ? m2 / static_cast<double>(count) : std::numeric_limits<double>::quiet_NaN();
  }

  // Unbiased sample variance M2 / (n - 1) (NaN for fewer than two values).
  double sample_variance() const {
    return count > 1 ? m2 / static_cast<double>(count - 1) : std::numeric_limits<double>::quiet_NaN();
  }

  // Standard error of the mean, sqrt(sample variance / n).
  double standard_error() const {
    return count > 1 ? std::sqrt(sample_variance() / static_cast<double>(count))
                     : std::numeric_limits<double>::quiet_NaN();
  }

  // Mean of the squares, variance + mean^2.
  double mean_square() const { return variance() + mean * mean; }
};

}  // namespace selfnorm
