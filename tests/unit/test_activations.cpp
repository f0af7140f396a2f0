// Activations: known answers (including PyTorch's published values), finite-difference
// derivatives for every activation, and safety on the whole real line.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "core/activations.hpp"
#include "core/theory.hpp"
#include "test_helpers.hpp"

using namespace selfnorm;

namespace {

// Non-default parameters, so the derivative checks also cover the parameters' roles.
template <class A>
A with_parameters() {
  if constexpr (std::is_same_v<A, LeakyRelu>) return LeakyRelu{0.2};
  if constexpr (std::is_same_v<A, Softplus>) return Softplus{2.0, 5.0};
  if constexpr (std::is_same_v<A, Elu>) return Elu{0.7};
  if constexpr (std::is_same_v<A, Selu>) return Selu{1.5, 1.2};
  if constexpr (std::is_same_v<A, Celu>) return Celu{0.5};
  return A{};
}

}  // namespace

TEST_CASE("activations match known values", "[activations]") {
  struct Case {
    Activation act;
    double x;
    double expected;
  };
  // Double-precision references computed independently (Python's math module), see the comment
  // of each activation in core/activations.hpp for the formula.
  const std::vector<Case> cases = {
      {Relu{}, -1.0, 0.0},
      {Relu{}, 2.5, 2.5},
      {Relu6{}, 7.0, 6.0},
      {Relu6{}, 3.0, 3.0},
      {Relu6{}, -2.0, 0.0},
      {LeakyRelu{}, -2.0, -0.02},
      {LeakyRelu{0.3}, -2.0, -0.6},
      {Softplus{}, 0.0, 0.6931471805599453},
      {Softplus{}, 1.0, 1.3132616875182228},
      {Softplus{}, 30.0, 30.0},  // beyond the threshold softplus(x) = x, as in PyTorch
      {Elu{}, -1.0, -0.6321205588285577},
      {Elu{0.3}, -0.4, -0.09890398618930822},
      {Selu{}, -1.0, -1.1113307378125625},
      {Selu{}, 0.1895, 0.19910783710386354},
      {Celu{}, -0.8057, -0.5532249254782471},
      {Celu{0.5}, -2.0, -0.4908421805556329},
      {Tanh{}, 0.5, 0.46211715726000974},
      {Sigmoid{}, 2.0, 0.8807970779778823},
      {Gelu{}, 1.0, 0.8413447460685429},
      {Gelu{}, -1.5, -0.10021080190328713},
      {Silu{}, 2.0, 1.7615941559557646},
      {Identity{}, -3.25, -3.25},
  };
  for (const auto& c : cases) {
    INFO(activation_name(c.act) << "(" << c.x << ")");
    CHECK(activation_value(c.act, c.x) == Approx(c.expected).epsilon(1e-15).margin(1e-300));
  }
}

TEST_CASE("activations reproduce PyTorch's published values", "[activations]") {
  // Four-decimal values printed by torch.nn.functional (../shared/SCIENCE.md).
  CHECK(activation_value(Celu{1.0}, -0.8057) == Approx(-0.5532).margin(5e-5));
  CHECK(activation_value(Celu{1.0}, -0.8352) == Approx(-0.5662).margin(5e-5));
  CHECK(activation_value(Selu{}, 0.1895) == Approx(0.1991).margin(5e-5));
  CHECK(activation_value(Selu{}, -0.8333) == Approx(-0.9940).margin(5e-5));
}

TEST_CASE("selu defaults are the paper's constants and celu equals elu at alpha 1", "[activations]") {
  const Selu s;
  CHECK(s.alpha == 1.6732632423543772848170429916717);
  CHECK(s.lambda == 1.0507009873554804934193349852946);
  for (double x : {-3.0, -0.5, -1e-3, 0.0, 0.7}) {
    CHECK(activation_value(Celu{1.0}, x) == activation_value(Elu{1.0}, x));
    CHECK(activation_slope(Celu{1.0}, x) == activation_slope(Elu{1.0}, x));
  }
  // celu's exponent is x / alpha (not exp(x/alpha - 1), a known slip).
  CHECK(activation_value(Celu{2.0}, -1.0) == Approx(2.0 * std::expm1(-0.5)).epsilon(1e-15));
  CHECK(activation_slope(Celu{2.0}, -1.0) == Approx(std::exp(-0.5)).epsilon(1e-15));
}

TEST_CASE("kinks take PyTorch's one-sided derivatives", "[activations]") {
  CHECK(activation_slope(Relu{}, 0.0) == 0.0);
  CHECK(activation_slope(Relu6{}, 0.0) == 0.0);
  CHECK(activation_slope(Relu6{}, 6.0) == 0.0);
  CHECK(activation_slope(LeakyRelu{}, 0.0) == 0.01);
  CHECK(activation_slope(Elu{0.5}, 0.0) == 0.5);
  CHECK(activation_slope(Selu{}, 0.0) == Approx(kSeluAlpha01 * kSeluLambda01).epsilon(1e-15));
}

TEMPLATE_TEST_CASE("derivatives agree with central finite differences", "[activations]", Relu, Relu6, LeakyRelu,
                   Softplus, Elu, Selu, Celu, Tanh, Sigmoid, Gelu, Silu, Identity) {
  for (const TestType a : {TestType{}, with_parameters<TestType>()}) {
    const auto ks = theory::kinks(a);
    int checked = 0;
    for (double x = -8.0; x <= 8.0; x += 0.0625 * 1.0123) {
      bool near_kink = false;
      for (double k : ks) near_kink = near_kink || std::abs(x - k) < 1e-3;
      if (near_kink) continue;
      const double h = 1e-6;
      double yp, ym, y, dy, unused;
      a.eval(x + h, yp, unused);
      a.eval(x - h, ym, unused);
      a.eval(x, y, dy);
      const double fd = (yp - ym) / (2 * h);
      INFO(TestType::name << " at x = " << x);
      CHECK(dy == Approx(fd).epsilon(1e-6).margin(1e-8));
      ++checked;
    }
    CHECK(checked > 200);
  }
}

TEMPLATE_TEST_CASE("gelu and its derivative are accurate to a few ulp", "[activations]", float, double) {
  // Against x Phi(x) and Phi(x) + x phi(x) in long double, wherever x Phi(x) is a normal number of
  // T. The budget in ulp of T: erfcx 6 and e^{-x^2/2} 4.5 (their bounds in test_vmath.cpp), and
  // three roundings of products and sums: 12. The derivative is measured against the size of its
  // terms, Phi(x) + |x| phi(x): it crosses zero at x = -0.75, where its relative error is unbounded.
  using T = TestType;
  const long double sqrt2 = std::sqrt(2.0L);
  const long double inv_sqrt_2pi = 1 / std::sqrt(2 * 3.14159265358979323846264338327950288L);
  const double lo = std::is_same_v<T, float> ? -12.0 : -37.0;
  double worst_y = 0, worst_dy = 0;
  for (int i = 0; i <= 400000; ++i) {
    const T x = static_cast<T>(lo + (-2 * lo) * i / 400000.0);
    T y, dy;
    Gelu{}.eval(x, y, dy);
    const long double xl = x;
    const long double cdf = std::erfc(-xl / sqrt2) / 2;
    const long double pdf = std::exp(-xl * xl / 2) * inv_sqrt_2pi;
    worst_y = test::worse(worst_y, test::ulp_error<T>(y, xl * cdf));
    const long double scale = cdf + std::abs(xl) * pdf;
    worst_dy = test::worse(worst_dy, static_cast<double>(std::abs(dy - (cdf + xl * pdf)) / test::ulp_of<T>(scale)));
  }
  CHECK(worst_y <= 12.0);
  CHECK(worst_dy <= 12.0);
}

TEMPLATE_TEST_CASE("activations are finite and NaN-free on the whole real line", "[activations]", float, double) {
  using T = TestType;
  const T big = std::numeric_limits<T>::max();
  for (const auto& info : activation_catalog()) {
    std::vector<double> defaults;
    for (const auto& p : info.params) defaults.push_back(p.default_value);
    const Activation act = make_activation(info.name, defaults);
    for (T x : {T(-1000), T(1000), T(-1e30), T(1e30), -big, big, T(-88.5), T(89.5), T(-745), T(710), T(0)}) {
      std::visit(
          [&](const auto& a) {
            T y, dy;
            a.eval(x, y, dy);
            INFO(info.name << " at " << x);
            // Unbounded activations may legitimately reach +-inf only where x itself is beyond
            // what T can scale (selu's lambda * max); everything else must be finite.
            const bool may_overflow = std::abs(x) >= big / 2;
            CHECK(!std::isnan(y));
            CHECK(!std::isnan(dy));
            if (!may_overflow) {
              CHECK(std::isfinite(y));
              CHECK(std::isfinite(dy));
            }
          },
          act);
    }
  }
}

TEMPLATE_TEST_CASE("float evaluation agrees with double evaluation", "[activations]", Relu, Relu6, LeakyRelu,
                   Softplus, Elu, Selu, Celu, Tanh, Sigmoid, Gelu, Silu, Identity) {
  // Evaluating g in float at a float x costs a few float ulps relative to the magnitudes inside
  // the formula; the condition number |x g'(x)| / |g(x)| measures how much those can exceed |g|.
  // So the bound is 8 ulps of max(|g(x)|, |x g'(x)|), with g' by a double central difference.
  const TestType a = with_parameters<TestType>();
  const auto ks = theory::kinks(a);
  const double eps = std::numeric_limits<float>::epsilon();
  for (double xd = -12.0; xd <= 12.0; xd += 0.01) {
    const float x = static_cast<float>(xd);
    bool near_kink = false;
    for (double k : ks) near_kink = near_kink || std::abs(x - k) < 1e-3;
    if (near_kink) continue;
    float yf, dyf;
    double yd, dyd, yp, dyp, ym, dym;
    const double h = 1e-5;
    a.eval(x, yf, dyf);
    a.eval(static_cast<double>(x), yd, dyd);
    a.eval(static_cast<double>(x) + h, yp, dyp);
    a.eval(static_cast<double>(x) - h, ym, dym);
    const double d2 = (dyp - dym) / (2 * h);
    INFO(TestType::name << " at " << x);
    CHECK(std::abs(yf - yd) <= 8 * eps * std::max({std::abs(yd), std::abs(x * dyd), 1e-30}));
    CHECK(std::abs(dyf - dyd) <= 8 * eps * std::max({std::abs(dyd), std::abs(x * d2), 1e-30}));
  }
}

TEMPLATE_TEST_CASE("NaN inputs give NaN outputs, so blow-ups stay visible", "[activations]", float, double) {
  using T = TestType;
  for (const auto& info : activation_catalog()) {
    std::vector<double> defaults;
    for (const auto& p : info.params) defaults.push_back(p.default_value);
    std::visit(
        [&](const auto& a) {
          T y, dy;
          a.eval(std::numeric_limits<T>::quiet_NaN(), y, dy);
          INFO(info.name);
          CHECK(std::isnan(y));
        },
        make_activation(info.name, defaults));
  }
}

TEST_CASE("activation parameters are validated with clear messages", "[activations]") {
  const std::vector<double> zero{0.0};
  CHECK_THROWS_WITH(make_activation("celu", zero), Catch::Contains("alpha must be > 0"));
  CHECK_THROWS_WITH(make_activation("softplus", std::vector<double>{-1.0, 20.0}), Catch::Contains("beta must be > 0"));
  CHECK_THROWS_WITH(make_activation("selu", std::vector<double>{std::nan(""), 1.0}),
                    Catch::Contains("alpha must be a finite number"));
  CHECK_THROWS_WITH(make_activation("sofplus", std::vector<double>{}), Catch::Contains("unknown activation"));
  CHECK(activation_name(make_activation("swish", std::vector<double>{})) == "silu");
  CHECK(activation_catalog().size() == std::variant_size_v<Activation>);
}
