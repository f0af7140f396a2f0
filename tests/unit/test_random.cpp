// Counter-based streams: reproducible, sliceable, and with the right distribution.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "core/init.hpp"
#include "core/moments.hpp"
#include "core/random.hpp"
#include "test_helpers.hpp"

using namespace selfnorm;
using selfnorm::test::kSigma;

TEMPLATE_TEST_CASE("a stream's values do not depend on how it is sliced", "[random]", float, double) {
  using T = TestType;
  const std::uint64_t key = stream_key(7, 3, StreamKind::weights, 2, 5);
  std::vector<T> whole(1000);
  fill_normal<T>(key, 0, whole.size(), whole.data(), T(0), T(1));
  std::vector<T> pieces(1000);
  // Odd offsets and lengths cut through the 32-element groups.
  std::size_t at = 0;
  for (std::size_t len : {1u, 31u, 33u, 2u, 100u, 64u, 769u}) {
    fill_normal<T>(key, at, len, pieces.data() + at, T(0), T(1));
    at += len;
  }
  REQUIRE(at == whole.size());
  CHECK(std::equal(whole.begin(), whole.end(), pieces.begin()));
}

TEST_CASE("streams are keyed by seed, point, kind, trial and layer", "[random]") {
  const std::uint64_t base = stream_key(1, 2, StreamKind::inputs, 3, 4);
  CHECK(base != stream_key(2, 2, StreamKind::inputs, 3, 4));
  CHECK(base != stream_key(1, 3, StreamKind::inputs, 3, 4));
  CHECK(base != stream_key(1, 2, StreamKind::weights, 3, 4));
  CHECK(base != stream_key(1, 2, StreamKind::inputs, 4, 4));
  CHECK(base != stream_key(1, 2, StreamKind::inputs, 3, 5));
  CHECK(base == stream_key(1, 2, StreamKind::inputs, 3, 4));
  // Swapped arguments give different keys.
  CHECK(stream_key(1, 2, StreamKind::inputs, 3, 4) != stream_key(1, 2, StreamKind::inputs, 4, 3));
}

TEMPLATE_TEST_CASE("normal streams have the moments of N(0, 1)", "[random]", float, double) {
  using T = TestType;
  const std::size_t n = 1 << 21;
  std::vector<T> z(n);
  fill_normal<T>(stream_key(11, 0, StreamKind::weights, 0, 1), 0, n, z.data(), T(0), T(1));
  Moments m1, m2, m3, m4, lag;
  std::size_t beyond3 = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double v = z[i];
    m1.push(v);
    m2.push(v * v);
    m3.push(v * v * v);
    m4.push(v * v * v * v);
    if (i + 1 < n) lag.push(v * static_cast<double>(z[i + 1]));
    beyond3 += std::abs(v) > 3.0;
  }
  // Standard errors from the exact moments of N(0, 1): Var z = 1, Var z^2 = 2, Var z^3 = 15,
  // Var z^4 = 96, Var z_i z_{i+1} = 1.
  const double rn = std::sqrt(static_cast<double>(n));
  CHECK(std::abs(m1.mean) < kSigma * 1.0 / rn);
  CHECK(std::abs(m2.mean - 1.0) < kSigma * std::sqrt(2.0) / rn);
  CHECK(std::abs(m3.mean) < kSigma * std::sqrt(15.0) / rn);
  CHECK(std::abs(m4.mean - 3.0) < kSigma * std::sqrt(96.0) / rn);
  CHECK(std::abs(lag.mean) < kSigma * 1.0 / rn);
  // Tail: P(|z| > 3) = 0.0026998.
  const double p = 0.0026997960632601866;
  CHECK(std::abs(static_cast<double>(beyond3) / n - p) < kSigma * std::sqrt(p * (1 - p) / n));
}

// The uniforms of pair p of a normal stream, exactly as random.hpp defines them: float streams
// take one word per pair (its high and low 32 bits), double streams two words (53 bits each).
template <class T>
void pair_uniforms(std::uint64_t key, std::uint64_t p, T& u1, T& u2) {
  if constexpr (std::is_same_v<T, float>) {
    const std::uint64_t w = stream_word(key, p);
    u1 = (static_cast<float>(static_cast<std::uint32_t>(w >> 32)) + 0.5f) * 0x1.0p-32f;
    u2 = static_cast<float>(static_cast<std::uint32_t>(w)) * 0x1.0p-32f;
    u1 = std::min(u1, 1.0f);  // the rounding up to 1 that random.cpp clamps
  } else {
    u1 = uniform_open(stream_word(key, 2 * p));
    u2 = static_cast<double>(stream_word(key, 2 * p + 1) >> 11) * 0x1.0p-53;
  }
}

TEMPLATE_TEST_CASE("normal streams are Box-Muller of their uniforms, to a few ulp", "[random]", float, double) {
  // Element 128 g + k is r cos(theta) and element 128 g + 64 + k is r sin(theta) of pair
  // p = 64 g + k, with r = sqrt(-2 log u1) and theta = 2 pi u2 - pi / 4 (random.cpp's quadrant
  // split, a = (4 u2 - floor(4 u2) - 1/2) pi / 2 rotated by a quarter turn per quadrant). The
  // reference is computed in long double from the same uniforms. Each of log, sqrt, the angle and
  // sin/cos is within 2 ulp of its value, so an element is within a few ulp of r: 8 ulp of r
  // passes, a wrong coefficient or quadrant does not.
  using T = TestType;
  const std::uint64_t key = stream_key(3, 1, StreamKind::weights, 4, 7);
  const std::size_t n = 128 * 600;
  std::vector<T> z(n);
  fill_normal<T>(key, 0, n, z.data(), T(0), T(1));
  const long double two_pi = 6.283185307179586476925286766559L;
  const long double quarter_pi = 0.785398163397448309615660845819876L;
  double worst = 0;  // the largest error, in ulp of r
  for (std::size_t g = 0; g < n / 128; ++g) {
    for (std::size_t k = 0; k < 64; ++k) {
      T u1, u2;
      pair_uniforms<T>(key, 64 * g + k, u1, u2);
      const long double r = std::sqrt(-2.0L * std::log(static_cast<long double>(u1)));
      const long double theta = two_pi * static_cast<long double>(u2) - quarter_pi;
      const long double ulp_r = r * std::numeric_limits<T>::epsilon();
      if (r == 0) continue;  // u1 rounded to 1 (float): r = 0, no ulp of r to measure against
      worst = test::worse(worst, static_cast<double>(std::abs(z[128 * g + k] - r * std::cos(theta)) / ulp_r));
      worst = test::worse(worst, static_cast<double>(std::abs(z[128 * g + 64 + k] - r * std::sin(theta)) / ulp_r));
    }
  }
  INFO("largest error " << worst << " ulp of r");
  CHECK(worst <= 8);
}

TEST_CASE("normal streams pass a Kolmogorov-Smirnov test", "[random]") {
  const std::size_t n = 100000;
  std::vector<double> z(n);
  fill_normal<double>(stream_key(5, 1, StreamKind::upstream, 0, 0), 0, n, z.data(), 0.0, 1.0);
  // Every value finite first: sorting NaNs is undefined, and a NaN distance would not count.
  REQUIRE(std::all_of(z.begin(), z.end(), [](double x) { return std::isfinite(x); }));
  std::sort(z.begin(), z.end());
  double d = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double cdf = 0.5 * std::erfc(-z[i] / std::sqrt(2.0));
    d = test::worse(d, std::abs(cdf - static_cast<double>(i) / n));
    d = test::worse(d, std::abs(cdf - static_cast<double>(i + 1) / n));
  }
  // Critical value at significance 0.001: 1.95 / sqrt(n).
  CHECK(d < 1.95 / std::sqrt(static_cast<double>(n)));
}

TEMPLATE_TEST_CASE("uniform streams stay inside the open interval with the right moments", "[random]", float,
                   double) {
  using T = TestType;
  const std::size_t n = 1 << 20;
  std::vector<T> u(n);
  fill_uniform<T>(stream_key(3, 0, StreamKind::dropout, 0, 1), 0, n, u.data(), T(0), T(1));
  Moments m;
  for (T v : u) {
    REQUIRE(v > T(0));
    REQUIRE(v < T(1));
    m.push(v);
  }
  const double rn = std::sqrt(static_cast<double>(n));
  CHECK(std::abs(m.mean - 0.5) < kSigma * std::sqrt(1.0 / 12.0) / rn);
  // Var of (u - 1/2)^2 is 1/180.
  CHECK(std::abs(m.variance() - 1.0 / 12.0) < kSigma * std::sqrt(1.0 / 180.0) / rn);
}

TEST_CASE("weight initialisers have their documented mean and variance", "[random][init]") {
  const std::int64_t fan_in = 300, fan_out = 200;
  struct Case {
    InitKind kind;
    double variance;  // per weight, before weight_variance
    double kurtosis;  // E (w - mu)^4 / v^2; 0 where the sample variance is fixed (orthogonal)
  };
  // N(0, 1) truncated to [-2, 2], with phi(2) = 0.0539910 and P(|z| < 2) = 0.9544997:
  // E z^2 = 1 - 4 phi(2) / P and E z^4 = 3 - 28 phi(2) / P, so a kurtosis of 2.3655.
  const double p2 = 0.95449973610364, phi2 = 0.05399096651318806;
  const double m2 = 1.0 - 4.0 * phi2 / p2, m4 = 3.0 - 28.0 * phi2 / p2;
  for (const Case c : {Case{InitKind::lecun_normal, 1.0 / fan_in, 3.0}, Case{InitKind::lecun_uniform, 1.0 / fan_in, 1.8},
                       Case{InitKind::he_normal, 2.0 / fan_in, 3.0},
                       Case{InitKind::glorot_normal, 2.0 / (fan_in + fan_out), 3.0},
                       Case{InitKind::truncated_normal, 1.0 / fan_in, m4 / (m2 * m2)},
                       Case{InitKind::orthogonal, 1.0 / fan_in, 0.0}}) {
    InitSpec init;
    init.kind = c.kind;
    init.weight_variance = 1.7;
    init.weight_mean = 0.3;  // omega: the expected sum of a unit's incoming weights
    std::vector<double> w(static_cast<std::size_t>(fan_in * fan_out));
    Moments all;
    // Several matrices, so the check covers more than one draw of an orthogonal matrix.
    for (std::uint64_t layer = 1; layer <= 8; ++layer) {
      generate_weights<double>(init, stream_key(9, 0, StreamKind::weights, 0, layer), fan_in, fan_out, w.data(),
                               fan_out);
      for (double v : w) all.push(v);
    }
    INFO(to_string(c.kind));
    const double expected_var = 1.7 * c.variance;
    const double n = static_cast<double>(all.count);
    // Standard errors: Var w = v and Var (w - mu)^2 = (kurtosis - 1) v^2. Orthogonal entries are
    // weakly dependent, which the mean's bound absorbs at 4 sigma with room to spare.
    CHECK(std::abs(all.mean - 0.3 / fan_in) < kSigma * std::sqrt(expected_var / n));
    if (c.kind == InitKind::orthogonal) {
      // Each matrix's sum of (w - mu)^2 is fixed: its columns are orthonormal, scaled. The sample
      // variance is that less the squared deviation of the sample mean, below (4 sigma)^2 = 16 v / n.
      CHECK(all.variance() <= expected_var * (1.0 + 1e-12));
      CHECK(all.variance() >= expected_var * (1.0 - kSigma * kSigma / n));
    } else {
      CHECK(std::abs(all.variance() - expected_var) < kSigma * std::sqrt((c.kurtosis - 1.0) / n) * expected_var);
    }
  }
}

TEST_CASE("orthogonal weights are orthogonal", "[init]") {
  InitSpec init;
  init.kind = InitKind::orthogonal;
  for (auto [fan_in, fan_out] : {std::pair<std::int64_t, std::int64_t>{64, 64}, {80, 48}, {48, 80}}) {
    std::vector<double> w(static_cast<std::size_t>(fan_in * fan_out));
    generate_weights<double>(init, stream_key(1, 0, StreamKind::weights, 0, 1), fan_in, fan_out, w.data(), fan_out);
    // W^T W (tall) or W W^T (wide) is (mean square * larger side) times the identity.
    const std::int64_t small = std::min(fan_in, fan_out);
    const double expected = static_cast<double>(std::max(fan_in, fan_out)) / static_cast<double>(fan_in);
    for (std::int64_t a = 0; a < small; ++a) {
      for (std::int64_t b = 0; b < small; ++b) {
        double dot = 0;
        const std::int64_t large = std::max(fan_in, fan_out);
        for (std::int64_t k = 0; k < large; ++k) {
          dot += fan_in >= fan_out ? w[k * fan_out + a] * w[k * fan_out + b] : w[a * fan_out + k] * w[b * fan_out + k];
        }
        CHECK(dot == Approx(a == b ? expected : 0.0).margin(1e-12));
      }
    }
  }
}

TEST_CASE("the truncated normal's variance constant is exact", "[init]") {
  const double phi2 = std::exp(-2.0) / std::sqrt(2.0 * M_PI);
  const double mass = std::erf(std::sqrt(2.0));
  CHECK(kTruncatedNormalVariance == Approx(1.0 - 4.0 * phi2 / mass).epsilon(1e-15));
}

TEMPLATE_TEST_CASE("weights are drawn in strips: element (j / 12) 12 fan_in + 12 i + j % 12 of the stream",
                   "[random][init]", float, double) {
  using T = TestType;
  const std::int64_t fan_in = 29, fan_out = 31;  // neither a multiple of 12: a ragged last strip, padded rows
  const std::uint64_t key = stream_key(4, 1, StreamKind::weights, 2, 3);
  for (const InitKind kind : {InitKind::lecun_normal, InitKind::lecun_uniform, InitKind::truncated_normal}) {
    INFO(to_string(kind));
    InitSpec init;
    init.kind = kind;
    init.weight_mean = 0.5;
    std::vector<T> w(static_cast<std::size_t>(fan_in * fan_out));
    generate_weights<T>(init, key, fan_in, fan_out, w.data(), fan_out);

    // Row-major weights against the stream read in the documented order (normal and uniform
    // streams read directly; the truncated normal through the strips below).
    const WeightScale sc = weight_scale(init, fan_in, fan_out);
    if (kind != InitKind::truncated_normal) {
      const std::uint64_t count = weight_element(0, fan_out + kWeightStrip, fan_in);
      std::vector<T> z(static_cast<std::size_t>(count));
      if (kind == InitKind::lecun_normal) {
        fill_normal<T>(key, 0, z.size(), z.data(), static_cast<T>(sc.mean), static_cast<T>(sc.stddev));
      } else {
        const double a = std::sqrt(3.0) * sc.stddev;
        fill_uniform<T>(key, 0, z.size(), z.data(), static_cast<T>(sc.mean - a), static_cast<T>(sc.mean + a));
      }
      std::int64_t mismatches = 0;
      for (std::int64_t i = 0; i < fan_in; ++i) {
        for (std::int64_t j = 0; j < fan_out; ++j) {
          mismatches += w[static_cast<std::size_t>(i * fan_out + j)] != z[weight_element(i, j, fan_in)];
        }
      }
      CHECK(mismatches == 0);
    }

    // Strips drawn one slice at a time, with padding rows and a wider stride, equal the matrix and
    // are zero wherever there is no weight.
    const std::int64_t strips = (fan_out + kWeightStrip - 1) / kWeightStrip;
    const std::int64_t rows = 36;
    const std::ptrdiff_t stride = rows * kWeightStrip + 5;
    std::vector<T> st(static_cast<std::size_t>(strips * stride), T(-7));
    generate_weight_strips<T>(init, key, fan_in, fan_out, 0, 1, rows, st.data(), stride);
    generate_weight_strips<T>(init, key, fan_in, fan_out, 1, strips, rows, st.data() + stride, stride);
    std::int64_t wrong = 0;
    for (std::int64_t s = 0; s < strips; ++s) {
      for (std::int64_t i = 0; i < rows; ++i) {
        for (std::int64_t r = 0; r < kWeightStrip; ++r) {
          const std::int64_t j = s * kWeightStrip + r;
          const T expected = (i < fan_in && j < fan_out) ? w[static_cast<std::size_t>(i * fan_out + j)] : T(0);
          wrong += st[static_cast<std::size_t>(s * stride + i * kWeightStrip + r)] != expected;
        }
      }
    }
    CHECK(wrong == 0);
  }
}
