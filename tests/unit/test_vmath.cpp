// Accuracy of the vectorisable elementary functions against long double references.
#include <catch2/catch.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "core/vmath.hpp"
#include "test_helpers.hpp"

using namespace selfnorm;
using selfnorm::test::ulp_error;
using selfnorm::test::worse;

namespace {

// Largest ulp error of f against ref over a linear sweep of [lo, hi] and, where [lo, hi] does not
// contain 0, a geometric one too (a linear sweep of [1e-6, 10] puts one point in 50000 below 1e-4).
template <class T, class F, class R>
double max_ulp(F f, R ref, double lo, double hi, int steps = 200001) {
  double worst = 0;
  auto check = [&](double v) {
    const T x = static_cast<T>(v);
    worst = worse(worst, ulp_error<T>(f(x), ref(static_cast<long double>(x))));
  };
  const bool one_sign = lo > 0 || hi < 0;
  for (int i = 0; i < steps; ++i) {
    const double t = static_cast<double>(i) / (steps - 1);
    check(lo + (hi - lo) * t);
    if (one_sign) check(lo * std::pow(hi / lo, t));
  }
  return worst;
}

}  // namespace

TEMPLATE_TEST_CASE("exp, expm1, log and log1p are accurate to a few ulp", "[vmath]", float, double) {
  using T = TestType;
  const double bound = 4.0;
  SECTION("exp over its finite range") {
    const double hi = std::is_same_v<T, float> ? 88.0 : 709.0;
    const double lo = std::is_same_v<T, float> ? -87.0 : -708.0;
    CHECK(max_ulp<T>([](T x) { return vmath::exp(x); }, [](long double x) { return std::exp(x); }, lo, hi) <= bound);
  }
  SECTION("expm1 near zero and on the negative axis") {
    CHECK(max_ulp<T>([](T x) { return vmath::expm1(x); }, [](long double x) { return std::expm1(x); }, -1, 1) <=
          bound);
    CHECK(max_ulp<T>([](T x) { return vmath::expm1(x); }, [](long double x) { return std::expm1(x); }, -40, 0) <=
          bound);
    CHECK(max_ulp<T>([](T x) { return vmath::expm1(x); }, [](long double x) { return std::expm1(x); }, -1e-6,
                     1e-6) <= bound);
  }
  SECTION("log on (0, 10] and on large values") {
    CHECK(max_ulp<T>([](T x) { return vmath::log(x); }, [](long double x) { return std::log(x); }, 1e-6, 10) <=
          bound);
    CHECK(max_ulp<T>([](T x) { return vmath::log(x); }, [](long double x) { return std::log(x); }, 0.5, 2) <= bound);
    CHECK(max_ulp<T>([](T x) { return vmath::log(x); }, [](long double x) { return std::log(x); }, 1, 1e30) <= bound);
  }
  SECTION("log of subnormal numbers") {
    const T x = std::numeric_limits<T>::denorm_min() * 12345;
    CHECK(ulp_error<T>(vmath::log(x), std::log(static_cast<long double>(x))) <= bound);
  }
  SECTION("log1p on (0, 1] and for tiny arguments") {
    CHECK(max_ulp<T>([](T x) { return vmath::log1p(x); }, [](long double x) { return std::log1p(x); }, 0, 1) <=
          bound);
    CHECK(max_ulp<T>([](T x) { return vmath::log1p(x); }, [](long double x) { return std::log1p(x); }, -1e-7,
                     1e-7) <= bound);
  }
}

namespace {

// erfcx(a) = e^{a^2} erfc(a) in long double: directly up to a = 26, where the rounding of a^2 in
// long double costs at most 0.3 ulp of double; above, the asymptotic series
// 1 / (a sqrt(pi)) sum_k (-1)^k (2k - 1)!! / (2 a^2)^k, whose 14th term is below 1e-22 there.
long double erfcx_reference(long double a) {
  if (a <= 26) return std::exp(a * a) * std::erfc(a);
  long double term = 1, sum = 1;
  for (int k = 1; k <= 14; ++k) {
    term *= -(2 * k - 1) / (2 * a * a);
    sum += term;
  }
  return sum / (a * std::sqrt(3.14159265358979323846264338327950288L));
}

}  // namespace

TEMPLATE_TEST_CASE("exp_neg_half_square and erfcx are accurate to a few ulp", "[vmath]", float, double) {
  using T = TestType;
  const double bound = 4.0;
  SECTION("e^{-x^2/2} down to where it underflows, also where x^2 rounds") {
    const double hi = std::is_same_v<T, float> ? 13.0 : 37.0;
    CHECK(max_ulp<T>([](T x) { return vmath::exp_neg_half_square(x); },
                     [](long double x) { return std::exp(-x * x / 2); }, -hi, hi) <= bound);
  }
  SECTION("erfcx over its whole range") {
    // The error budget in ulp of the result (a relative error becomes up to twice as many ulp where
    // a result lies just above a power of two): the polynomial 2.6 in double and 2.0 in float
    // (2.92e-16 and 1.21e-7 relative, measured by scripts/dev/erfcx_series.py), the rounding of t
    // 1.6 (dY/dt = 1.6 at t = -1, times half an ulp of t), of 1 + 2a 1, of the quotient 0.5:
    // 6 ulp in either precision.
    const double erfcx_bound = 6.0;
    const auto f = [](T a) { return vmath::erfcx(a); };
    CHECK(max_ulp<T>(f, erfcx_reference, 0, 4) <= erfcx_bound);
    CHECK(max_ulp<T>(f, erfcx_reference, 0, 30) <= erfcx_bound);
    CHECK(max_ulp<T>(f, erfcx_reference, 26, 1e4) <= erfcx_bound);
    CHECK(max_ulp<T>(f, erfcx_reference, 1e4, 1e12) <= erfcx_bound);
  }
}

TEST_CASE("exp_neg_half_square and erfcx at their limits", "[vmath]") {
  constexpr double inf = std::numeric_limits<double>::infinity();
  constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  CHECK(vmath::exp_neg_half_square(0.0) == 1.0);
  CHECK(vmath::exp_neg_half_square(40.0) == 0.0);
  CHECK(vmath::exp_neg_half_square(-inf) == 0.0);
  CHECK(vmath::exp_neg_half_square(1e300) == 0.0);
  CHECK(vmath::exp_neg_half_square(38.0f) == 0.0f);
  CHECK(std::isnan(vmath::exp_neg_half_square(nan)));
  CHECK(vmath::erfcx(inf) == 0.0);
  CHECK(vmath::erfcx(1e300) == Approx(1 / (1e300 * std::sqrt(3.14159265358979323846))).epsilon(1e-15));
  CHECK(std::isnan(vmath::erfcx(nan)));
}

TEMPLATE_TEST_CASE("elementary functions handle special values like the C library", "[vmath]", float, double) {
  using T = TestType;
  constexpr T inf = std::numeric_limits<T>::infinity();
  constexpr T nan = std::numeric_limits<T>::quiet_NaN();
  CHECK(vmath::exp(T(-1000)) == 0);
  CHECK(vmath::exp(T(1000)) == inf);
  CHECK(vmath::exp(-inf) == 0);
  CHECK(vmath::exp(inf) == inf);
  CHECK(std::isnan(vmath::exp(nan)));
  CHECK(vmath::expm1(T(-1000)) == -1);
  CHECK(vmath::expm1(T(0)) == 0);
  CHECK(vmath::expm1(T(1000)) == inf);
  CHECK(std::isnan(vmath::expm1(nan)));
  CHECK(vmath::log(T(0)) == -inf);
  CHECK(vmath::log(inf) == inf);
  CHECK(vmath::log(T(1)) == 0);
  CHECK(std::isnan(vmath::log(T(-1))));
  CHECK(std::isnan(vmath::log(nan)));
  CHECK(vmath::log1p(T(0)) == 0);
  CHECK(vmath::log1p(inf) == inf);
}

TEST_CASE("from_uint53 converts every integer below 2^53 exactly", "[vmath]") {
  // The edges of each part (the low bit, the 52 bits above it), then a sweep of mixed bit patterns.
  // from_uint53 is a plain conversion with AVX-512, so the parts that other builds use are checked
  // on their own too.
  const std::uint64_t top = (std::uint64_t{1} << 53) - 1;
  for (const std::uint64_t x : {std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{2}, std::uint64_t{3},
                                (std::uint64_t{1} << 52) - 1, std::uint64_t{1} << 52, (std::uint64_t{1} << 52) + 1,
                                top - 1, top}) {
    INFO(x);
    CHECK(vmath::from_uint53(x) == static_cast<double>(x));
    CHECK(vmath::detail::from_uint53_parts(x) == static_cast<double>(x));
  }
  std::uint64_t z = 0x9E3779B97F4A7C15ULL;
  int mismatches = 0;
  for (int i = 0; i < 100000; ++i) {
    z = z * 6364136223846793005ULL + 1442695040888963407ULL;
    const std::uint64_t x = z >> 11;
    mismatches += vmath::from_uint53(x) != static_cast<double>(x);
    mismatches += vmath::detail::from_uint53_parts(x) != static_cast<double>(x);
  }
  CHECK(mismatches == 0);
}

TEMPLATE_TEST_CASE("log_positive is log to the bit on every finite normal number", "[vmath]", float, double) {
  using T = TestType;
  using U = std::conditional_t<std::is_same_v<T, float>, std::uint32_t, std::uint64_t>;
  // The edges (the smallest normal, 1 and its neighbours, sqrt(2) where the mantissa is halved,
  // the largest finite), then positive normal bit patterns spread over every exponent.
  const T edges[] = {std::numeric_limits<T>::min(), std::nextafter(std::numeric_limits<T>::min(), T(1)),
                     std::nextafter(T(1), T(0)), T(1), std::nextafter(T(1), T(2)),
                     static_cast<T>(1.41421356237309504880L), std::nextafter(static_cast<T>(1.41421356237309504880L), T(2)),
                     T(0.5), T(2), std::numeric_limits<T>::max()};
  for (const T x : edges) {
    INFO(x);
    CHECK(std::bit_cast<U>(vmath::log_positive(x)) == std::bit_cast<U>(vmath::log(x)));
  }
  const U lowest = std::bit_cast<U>(std::numeric_limits<T>::min());
  const U highest = std::bit_cast<U>(std::numeric_limits<T>::max());
  std::uint64_t z = 0x2545F4914F6CDD1DULL;
  int mismatches = 0;
  for (int i = 0; i < 2000000; ++i) {
    z = z * 6364136223846793005ULL + 1442695040888963407ULL;
    const U bits = static_cast<U>(lowest + (z >> 11) % (highest - lowest + 1));
    const T x = std::bit_cast<T>(bits);
    mismatches += std::bit_cast<U>(vmath::log_positive(x)) != std::bit_cast<U>(vmath::log(x));
  }
  CHECK(mismatches == 0);
}
