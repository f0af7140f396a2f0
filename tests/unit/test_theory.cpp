// Mean-field theory: closed forms against quadrature, the SNN paper's constants, Jacobian and
// contraction, fixed points, alpha dropout, depth scales, and Monte Carlo against the theory.
#include <catch2/catch.hpp>

#include <cmath>
#include <tuple>
#include <vector>

#include "core/engine.hpp"
#include "core/theory.hpp"
#include "test_helpers.hpp"

using namespace selfnorm;
using namespace selfnorm::theory;
using selfnorm::test::check_unit_fixed_point;
using selfnorm::test::Extrapolated;
using selfnorm::test::extrapolated;
using selfnorm::test::kSigma;
using selfnorm::test::make_spec;
using selfnorm::test::with_width;

TEST_CASE("closed forms agree with quadrature to 1e-10 relative", "[theory]") {
  const std::vector<Activation> acts = {Relu{},      LeakyRelu{},  LeakyRelu{0.3}, Relu6{},     Elu{},
                                        Elu{0.7},    Elu{1.5},     Selu{},         Selu{1.2, 0.9}, Celu{0.5},
                                        Celu{2.0},   Identity{}};
  int compared = 0;
  for (const auto& a : acts) {
    REQUIRE(has_closed_form(a));
    for (double m : {-3.0, -1.0, 0.0, 0.5, 2.0, 7.0}) {
      for (double v : {0.01, 0.3, 1.0, 4.0, 25.0}) {
        // The closed forms are used within kClosedFormRange standard deviations of the kinks.
        bool in_range = true;
        for (double k : kinks(a)) in_range = in_range && std::abs(k - m) <= kClosedFormRange * std::sqrt(v);
        if (!in_range) continue;
        const GaussianMoments c = gaussian_moments_closed(a, m, v);
        const GaussianMoments q = gaussian_moments_quadrature(a, m, v);
        INFO(activation_name(a) << " m=" << m << " v=" << v);
        // The mean can be 0 exactly (selu at (0, 1)): measure it against its natural scale.
        const double scale = std::sqrt(c.second);
        CHECK(std::abs(c.mean - q.mean) <= 1e-10 * scale);
        CHECK(c.second == Approx(q.second).epsilon(1e-10));
        CHECK(c.deriv_sq == Approx(q.deriv_sq).epsilon(1e-10).margin(1e-300));
        ++compared;
      }
    }
  }
  CHECK(compared > 250);
  // Far in a tail, gaussian_moments switches to quadrature and stays accurate.
  CHECK(gaussian_moments(Relu{}, -3.0, 0.01).second ==
        Approx(gaussian_moments_quadrature(Relu{}, -3.0, 0.01).second).epsilon(1e-12));
  CHECK(gaussian_moments(Relu{}, -3.0, 0.01).second > 0.0);
}

TEST_CASE("the exponential-linear closed forms stay finite and exact at huge variances", "[theory]") {
  // A network blowing up (weight variance 1e6) reaches pre-activation variances of 1e40 and more.
  // E[e^{cz}; z < 0] there is e^{c^2 v / 2} times a Phi far in its tail: the two must cancel
  // analytically, or the moments turn NaN while the Monte Carlo statistics are still finite.
  for (const Activation& a : {Activation{Selu{}}, Activation{Elu{0.7}}, Activation{Celu{2.0}}}) {
    for (double v : {1e3, 1e10, 1e40, 1e60, 1e100, 1e200, 1e300}) {
      for (double m : {-0.5 * std::sqrt(v), 0.0, 2.0}) {
        const GaussianMoments c = gaussian_moments_closed(a, m, v);
        const GaussianMoments q = gaussian_moments_quadrature(a, m, v);
        INFO(activation_name(a) << " m=" << m << " v=" << v);
        REQUIRE(std::isfinite(c.mean));
        REQUIRE(std::isfinite(c.second));
        REQUIRE(std::isfinite(c.deriv_sq));
        // In between, the exponential part lives within 1 / (c sqrt v) standard deviations of the
        // kink: at v = 1e10 a 1e-5-wide feature worth 4e-6 of deriv_sq, which the adaptive
        // quadrature does not resolve to 1e-10. Beyond 1e40 it is below 1e-20 of every moment.
        if (v > 1e3 && v < 1e40) continue;
        CHECK(std::abs(c.mean - q.mean) <= 1e-10 * std::sqrt(c.second));
        CHECK(c.second == Approx(q.second).epsilon(1e-10));
        CHECK(c.deriv_sq == Approx(q.deriv_sq).epsilon(1e-10));
      }
    }
  }
}

TEST_CASE("the map's variance keeps its digits where f is nearly constant or linear", "[theory]") {
  // E f^2 - (E f)^2 loses the digits the two terms share: at m = -15 selu's variance came out
  // 1e-3 off and at m = -20 as 0, tanh's at m = 10 1.2% off, relu's at m = 1e4 4e-8 off. Each
  // reference below is derived independently of the map. The quadrature stops at an error
  // estimate of 1e-14 of its integrands' scale, and E[D^2] / Var D is below 1.1 in every case:
  // 1e-12 leaves two orders for the estimate itself.
  const double la = kSeluLambda01 * kSeluAlpha01;
  for (double m : {-10.0, -15.0, -20.0, -30.0, -40.0}) {
    // Below 0 with weight 1 - Q(|m|) (Q(10) = 8e-24): Var = (lambda alpha)^2 Var e^z
    // = (lambda alpha)^2 e^{2m + v} (e^v - 1).
    const MapValue g = snn_map(Selu{}, m, 1.0, 1.0, 1.0);
    INFO("selu at m = " << m);
    CHECK(g.nu == Approx(la * la * std::exp(2 * m + 1) * std::expm1(1.0)).epsilon(1e-12));
    CHECK(g.mu == Approx(la * std::expm1(m + 0.5)).epsilon(1e-13));
  }
  for (double m : {10.0, 15.0}) {
    // Var tanh(z) = Var g, g = 1 - tanh z = 2 e^{-2z} / (1 + e^{-2z}): small, with no cancellation
    // in its moments (E g^2 / Var g = 1 / (1 - e^{-4}) = 1.02).
    const auto gz = [](double z) { return 2.0 * std::exp(-2.0 * z) / (1.0 + std::exp(-2.0 * z)); };
    const double e1 = gaussian_expectation(gz, m, 1.0);
    const double e2 = gaussian_expectation([&](double z) { return gz(z) * gz(z); }, m, 1.0);
    INFO("tanh at m = " << m);
    CHECK(snn_map(Tanh{}, m, 1.0, 1.0, 1.0).nu == Approx(e2 - e1 * e1).epsilon(1e-12));
  }
  for (double m : {30.0, 1e4, 1e8}) {  // relu is the identity but for a weight Q(30) = 5e-198
    INFO("relu at m = " << m);
    CHECK(snn_map(Relu{}, m, 1.0, 1.0, 1.0).nu == Approx(1.0).epsilon(1e-13));
    CHECK(snn_map(LeakyRelu{0.2}, -m, 1.0, 1.0, 1.0).nu == Approx(0.04).epsilon(1e-13));
  }
  CHECK(std::isnan(snn_map(Selu{}, std::nan(""), 1.0, 4.0, 1.0).nu));  // NaN is not clamped away
}

TEST_CASE("the closed forms give way to quadrature where they would cancel", "[theory]") {
  // celu at alpha >> 1 is z + z^2 / (2 alpha) + z^3 / (6 alpha^2) + ... below 0. Over N(0, 1), with
  // E[z^2; z < 0] = 1/2, E[z^3; z < 0] = -sqrt(2/pi), E[z^4; z < 0] = 3/2:
  //   E f   = 1 / (4 alpha) - sqrt(2/pi) / (6 alpha^2) + O(alpha^-3),
  //   E f^2 = 1 - sqrt(2/pi) / alpha + (7/12)(3/2) / alpha^2 + O(alpha^-3),
  // so Var f = 1 - sqrt(2/pi) / alpha + (7/8 - 1/16) / alpha^2 + O(alpha^-3). The closed form's
  // e1 - P(z < 0) and e2 - 2 e1 + P(z < 0) cancel to 1 / alpha and its square: at alpha = 1e6 the
  // mean came out 2e-4 off and the variance 1.2e-4, at 1e8 the variance as 1.61.
  const double r = std::sqrt(2.0 / M_PI);
  for (double alpha : {1e3, 1e6, 1e8}) {
    const MapValue g = snn_map(Celu{alpha}, 0.0, 0.0, 1.0, 1.0);
    INFO("celu alpha = " << alpha);
    // The series' next terms: E[z^4; z < 0] / (24 alpha^3) in E f, and 8 phi(0) / (4 alpha^3) in
    // E f^2 (the z^5 term), both below 1 / alpha^3. Quadrature adds 1e-14 of E|f| = 0.8.
    const double tol = 4.0 / (alpha * alpha * alpha) + 1e-13;
    CHECK(std::abs(g.mu - (1.0 / (4 * alpha) - r / (6 * alpha * alpha))) <= tol);
    CHECK(std::abs(g.nu - (1.0 - r / alpha + 0.8125 / (alpha * alpha))) <= tol);
  }
  // relu6 at s = sqrt(v) >> 6: 6 with probability Q(6 / s) = 1/2 - 6 phi(0) / s + O(s^-3), and over
  // [0, 6] density phi(0) / s (1 + O(s^-2)). So E f = 3 - 18 phi(0) / s + O(s^-3) and
  // E f^2 = 18 - 144 phi(0) / s + O(s^-3), and Var f = 9 - 36 phi(0) / s - (18 phi(0) / s)^2 + O(s^-3),
  // the O(s^-3) coefficients below 1e3 (21 and 207 for the two moments). The truncated moments on
  // [0, 6] cancel to (s / 6)^2: at v = 1e16 the variance came out 8.29, at 1e18 46.3.
  const double phi0 = 1.0 / std::sqrt(2.0 * M_PI);
  for (double s : {1e4, 1e6, 1e8, 1e9}) {
    const MapValue g = snn_map(Relu6{}, 0.0, 0.0, s * s, 1.0);
    INFO("relu6 s = " << s);
    const double tol = 1e3 / (s * s * s) + 1e-12;  // and quadrature's 1e-14 of E f^2 = 18
    CHECK(std::abs(g.mu - (3.0 - 18.0 * phi0 / s)) <= tol);
    CHECK(std::abs(g.nu - (9.0 - 36.0 * phi0 / s - (18.0 * phi0 / s) * (18.0 * phi0 / s))) <= tol);
  }
}

TEST_CASE("activation_step keeps its digits where f is nearly constant or linear", "[theory]") {
  // For small d, f(m + d) - f(m) = d f'(m + d/2) (1 + r), |r| <= d^2 |f''' / f'| / 24: at
  // |d| <= 1e-6 and |f''' / f'| <= 23 (gelu at -5, the largest here) below 1e-12. f' comes from
  // the activations' own derivative. The plain difference of f's values fails each of these: at
  // tanh(15), d f' = 4e-19 against f's ulp of 2e-16.
  const std::vector<std::pair<Activation, double>> cases = {
      {Tanh{}, 15.0},     {Tanh{}, -15.0},    {Sigmoid{}, -40.0}, {Sigmoid{}, 40.0},      {Selu{}, -30.0},
      {Elu{0.7}, -30.0},  {Celu{2.0}, -60.0}, {Softplus{}, -30.0}, {Softplus{}, 15.0},    {Softplus{}, 30.0},
      {Relu{}, 1e8},      {Relu6{}, 3.0},     {Gelu{}, 8.0},      {LeakyRelu{0.1}, -1e8}, {Silu{}, 30.0},
      {Identity{}, 1e12}, {Selu{}, 1e10},       {Gelu{}, -0.3},     {Gelu{}, -5.0},      {Silu{}, -3.0},
      {Silu{}, 1.6}};
  for (const auto& [f, m] : cases) {
    for (double d : {-1e-6, -1e-7, 1e-7, 1e-6}) {
      INFO(activation_name(f) << " at m = " << m << ", d = " << d);
      CHECK(activation_step(f, m, d) == Approx(d * activation_slope(f, m + 0.5 * d)).epsilon(1e-11));
    }
  }
  // Large steps, across kinks, and where e^{cm} expm1(cd) or tanh's cosh overflow: there the
  // plain difference is as good, and the two agree to f's rounding. f's values are within 12 ulp
  // (gelu's bound in test_activations.cpp), the step's own forms within a few: 32 ulp of the
  // larger value.
  for (const Activation& f : {Activation{Selu{}}, Activation{Tanh{}}, Activation{Sigmoid{}}, Activation{Relu6{}},
                              Activation{Softplus{}}, Activation{Gelu{}}, Activation{Silu{}}, Activation{Celu{0.5}}}) {
    for (double m : {-800.0, -400.0, -3.0, 0.0, 2.0, 400.0}) {
      for (double d : {-1200.0, -5.0, 0.5, 6.0, 800.0, 1200.0}) {
        const double at_x = activation_value(f, m + d), at_m = activation_value(f, m);
        const double scale = std::max(std::abs(at_x), std::abs(at_m));
        INFO(activation_name(f) << " at m = " << m << ", d = " << d);
        CHECK(std::abs(activation_step(f, m, d) - (at_x - at_m)) <= 32 * 2.3e-16 * scale);
      }
    }
  }
}

TEST_CASE("the Jacobian keeps its digits where f saturates and at small variances", "[theory]") {
  // selu below 0 (weight 1 - Q(|m| / s)), omega = tau = 1: mu~ = la (e^{m + v/2} - 1) and
  // nu~ = la^2 e^{2m + v} (e^v - 1), la = lambda alpha, and their derivatives
  //   d mu~ / dm = la e^{m + v/2},  d mu~ / dv = la e^{m + v/2} / 2,
  //   d nu~ / dm = 2 nu~,           d nu~ / dv = la^2 e^{2m + v} (2 e^v - 1).
  // At m = -20, E f^2 - (E f)^2 left nu~'s row without a correct digit; at v = 1e-12 the constant
  // f(m) in Stein's E[f (t^2 - 1)] / (2 v) put d mu~ / dv 1e-4 off.
  const double la = kSeluLambda01 * kSeluAlpha01;
  // At v = 1e-12 the quadrature's stopping rule, 1e-14 of E|D (t^2 - 1)| ~ f' s, allows
  // 1e-14 f' / (2 s) = 3e-9 in d mu~ / dv, 1e-8 of it: 1e-7 leaves a factor 10. At v = 1 the same
  // rule gives 1e-14 and 1e-10 leaves margin for the estimate.
  for (const auto& [m, v, tol] : {std::tuple{-20.0, 1.0, 1e-10}, std::tuple{-1.0, 1e-12, 1e-7}}) {
    const Jacobian j = snn_jacobian(Selu{}, m, 1.0, v, 1.0);
    const double e = la * std::exp(m + 0.5 * v);
    const double nu = la * la * std::exp(2 * m + v) * std::expm1(v);
    INFO("m = " << m << ", v = " << v);
    CHECK(j.j[0][0] == Approx(e).epsilon(tol));
    CHECK(j.j[0][1] == Approx(0.5 * e).epsilon(tol));
    CHECK(j.j[1][0] == Approx(2 * nu).epsilon(tol));
    CHECK(j.j[1][1] == Approx(la * la * std::exp(2 * m + v) * (2 * std::exp(v) - 1)).epsilon(tol));
  }
  // gelu and silu at v = 1e-12: d mu~ / dv = E f''(z) / 2 = f''(m) / 2 + O(v), with
  // gelu'' = phi(m) (2 - m^2) and silu'' = s'(m) (2 + m (1 - 2 s(m))), s the sigmoid. The plain
  // difference f(z) - f(m) put this entry 1.4e-6 of the Jacobian's scale off; the same bound as
  // above, 1e-7 of |f'| + |f''| / 2.
  for (double m : {-3.0, -0.3, 1.6}) {
    const double phi_m = std::exp(-0.5 * m * m) / std::sqrt(2.0 * M_PI), sg = 1.0 / (1.0 + std::exp(-m));
    const double ds = sg * (1.0 - sg);
    for (const auto& [f, d1, d2] : {std::tuple<Activation, double, double>{Gelu{}, 0.5 * std::erfc(-m / std::sqrt(2.0)) +
                                                                                     m * phi_m,
                                                                           phi_m * (2.0 - m * m)},
                                    {Silu{}, sg + m * ds, ds * (2.0 + m * (1.0 - 2.0 * sg))}}) {
      INFO(activation_name(f) << " at m = " << m);
      const Jacobian j = snn_jacobian(f, m, 1.0, 1e-12, 1.0);
      CHECK(std::abs(j.j[0][1] - 0.5 * d2) <= 1e-7 * (std::abs(d1) + 0.5 * std::abs(d2)));
      CHECK(j.j[0][0] == Approx(d1).epsilon(1e-9));
    }
  }
}

TEST_CASE("quadrature reproduces known Gaussian integrals", "[theory]") {
  // E[z^2], E[exp z] and gelu's mean E[z Phi(z)] = m Phi(m/r) + v phi(m/r)/r, r = sqrt(1 + v).
  for (double m : {-1.0, 0.0, 0.8}) {
    for (double v : {0.2, 1.0, 3.0}) {
      CHECK(gaussian_expectation([](double z) { return z * z; }, m, v) == Approx(m * m + v).epsilon(1e-13));
      CHECK(gaussian_expectation([](double z) { return std::exp(z); }, m, v) ==
            Approx(std::exp(m + 0.5 * v)).epsilon(1e-13));
      const double r = std::sqrt(1 + v);
      const double gelu_mean = m * 0.5 * std::erfc(-m / r / std::sqrt(2.0)) +
                               v * std::exp(-0.5 * m * m / (r * r)) / std::sqrt(2 * M_PI) / r;
      CHECK(gaussian_moments(Gelu{}, m, v).mean == Approx(gelu_mean).epsilon(1e-12));
    }
  }
}

TEST_CASE("solve reproduces alpha01 and lambda01 and other fixed points", "[theory]") {
  const SeluSolution s = solve_selu(0.0, 1.0);
  REQUIRE(s.found);
  CHECK(std::abs(s.alpha - kSeluAlpha01) <= 1e-12 * kSeluAlpha01);
  CHECK(std::abs(s.lambda - kSeluLambda01) <= 1e-12 * kSeluLambda01);
  // Other targets: the map of the solution has the target as its fixed point.
  struct Target {
    double mean, var;
  };
  for (const Target t : {Target{0.0, 0.5}, Target{0.0, 2.0}, Target{0.1, 0.5}, Target{-0.05, 1.2}}) {
    const SeluSolution sol = solve_selu(t.mean, t.var);
    INFO("target mean " << t.mean << " var " << t.var << ": " << sol.note);
    REQUIRE(sol.found);
    const Selu act{sol.alpha, sol.lambda};
    const MapValue g = snn_map(act, t.mean, 0.0, t.var, 1.0);
    CHECK(g.mu == Approx(t.mean).margin(1e-12));
    CHECK(g.nu == Approx(t.var).epsilon(1e-12));
    const FixedPoint fp = snn_fixed_point(act, 0.0, 1.0);
    REQUIRE(fp.found);
    CHECK(fp.nu == Approx(t.var).epsilon(1e-10));
  }
  // The notebook's convention z ~ N(mean, var) (omega = tau = 1) differs for mean != 0.
  const SeluSolution notebook = solve_selu(0.1, 0.5, 1.0, 1.0);
  REQUIRE(notebook.found);
  CHECK(std::abs(notebook.alpha - solve_selu(0.1, 0.5).alpha) > 1e-3);
  CHECK(snn_map(Selu{notebook.alpha, notebook.lambda}, 0.1, 1.0, 0.5, 1.0).nu == Approx(0.5).epsilon(1e-12));
}

TEST_CASE("solve stays exact for means far below the standard deviation", "[theory]") {
  // The quadratic in alpha lost every digit there: at mean 1e-10 it returned lambda = 0.0227 (a
  // variance of 4.7e-4, not 1) as the unique solution, and at 1e-12 it found none.
  for (const double tau : {1.0, 0.5}) {
    for (const double omega : {0.0, 1.0}) {
      const SeluSolution zero = solve_selu(0.0, 1.0, omega, tau);  // alpha01, lambda01 at tau = 1
      REQUIRE(zero.found);
      // alpha leaves the mean-0 solution along its tangent. With elu's moments over z ~ N(0, tau),
      // Qn = E[e^z - 1; z < 0] = e^{tau/2} Phi(-sqrt tau) - 1/2 and E elu'(z) = 1/2 + alpha
      // e^{tau/2} Phi(-sqrt tau), and sqrt(E elu^2) = 1 / lambda there, the fixed-point condition
      // E elu / sqrt(E elu^2) = mean / sqrt(1 + mean^2) gives, differentiated at mean 0,
      // d alpha / d mean = (1 - omega lambda E elu') / (lambda Qn).
      const double tail = std::exp(0.5 * tau) * 0.5 * std::erfc(std::sqrt(tau / 2.0));
      const double slope = (1.0 - omega * zero.lambda * (0.5 + zero.alpha * tail)) / (zero.lambda * (tail - 0.5));
      for (const double mean : {1e-14, 1e-12, 1e-10, 1e-9, 1e-8, 1e-6, 1e-4}) {
        const SeluSolution sol = solve_selu(mean, 1.0, omega, tau);
        INFO("mean " << mean << " omega " << omega << " tau " << tau << ": " << sol.note);
        REQUIRE(sol.found);
        const MapValue g = snn_map(Selu{sol.alpha, sol.lambda}, mean, omega, 1.0, tau);
        CHECK(std::abs(g.mu - mean) <= 1e-12);
        CHECK(g.nu == Approx(1.0).epsilon(1e-12));
        // The second-order term is mean |alpha'' / (2 alpha')| of the first, O(1e-4) at the
        // largest mean: 1e-2 leaves two orders. 1e-14 is alpha's own rounding.
        CHECK(std::abs(sol.alpha - zero.alpha - slope * mean) <= 1e-2 * std::abs(slope) * mean + 1e-14);
      }
    }
  }
}

TEST_CASE("a fixed point on a curve of fixed points is not reported as found", "[theory]") {
  // Where mu >> sqrt(nu), relu and elu (omega = tau = 1) map (mu, nu) to itself to rounding:
  // Newton's method used to stop at its start and call it "found" (and "unstable").
  for (const auto& [f, mu, nu] : {std::tuple<Activation, double, double>{Elu{1.0}, 5.0, 0.01},
                                  {Relu{}, 3.0, 0.1}, {LeakyRelu{0.01}, 3.0, 0.1}}) {
    const FixedPoint fp = snn_fixed_point(f, 1.0, 1.0, mu, nu);
    INFO(activation_name(f) << " from (" << mu << ", " << nu << "): " << fp.note);
    CHECK_FALSE(fp.found);
    CHECK(fp.note.rfind("no isolated fixed point", 0) == 0);
  }
  // An isolated one still is: SELU's (0, 1), eigenvalues 0 and 0.78.
  CHECK(snn_fixed_point(Selu{}, 0.0, 1.0).found);
}

TEST_CASE("growth and vanishing are judged on the map's own scale", "[theory]") {
  // selu with alpha = 1e6: a stable fixed point at nu* = 1.22e12, which a fixed cut-off of 1e12
  // called "grows without bound". With nu = alpha^2 s^2 and alpha >> 1, selu(sqrt(nu) t) is
  // lambda alpha (s t for t > 0, -1 for t < 0) but within 1 / (alpha s) of 0, and its variance
  // lambda^2 alpha^2 (s^2 (1/2 - 1/(2 pi)) + s / sqrt(2 pi) + 1/4). nu* is its fixed point:
  // (1 - lambda^2 (1/2 - 1/(2 pi))) s^2 - lambda^2 s / sqrt(2 pi) - lambda^2 / 4 = 0, to O(1e-6).
  const double alpha = 1e6, l2 = kSeluLambda01 * kSeluLambda01;
  const double qa = 1.0 - l2 * (0.5 - 0.5 / M_PI), qb = -l2 / std::sqrt(2.0 * M_PI), qc = -0.25 * l2;
  const double s = (-qb + std::sqrt(qb * qb - 4.0 * qa * qc)) / (2.0 * qa);
  const FixedPoint big = snn_fixed_point(Selu{alpha, kSeluLambda01}, 0.0, 1.0);
  INFO(big.note);
  REQUIRE(big.found);
  CHECK(big.stable);
  CHECK(big.nu == Approx(alpha * alpha * s * s).epsilon(1e-5));
  CHECK(snn_map(Selu{alpha, kSeluLambda01}, big.mu, 0.0, big.nu, 1.0).nu == Approx(big.nu).epsilon(1e-10));
  // tanh at s_w^2 = 0.5 with a tiny bias: q* = s_b^2 / (1 - 0.5) to first order, not "vanishes"
  // (s_b^2 = 1e-13) or "marginal" (1e-11): with a bias q never falls below s_b^2.
  for (const double bias : {1e-13, 1e-11}) {
    const DepthScales tiny = depth_scales(Tanh{}, 0.5, bias);
    INFO("bias variance " << bias << ": " << tiny.note);
    REQUIRE(tiny.found);
    CHECK(tiny.q_star == Approx(2.0 * bias).epsilon(1e-6));
  }
}

TEST_CASE("an unstable fixed point says where the network goes instead", "[theory]") {
  // (mu, nu) = (-3.46, 0.69) is a fixed point with spectral radius 1.54; from (0, 1) the
  // variance grows without bound.
  const FixedPoint fp = snn_fixed_point(Selu{3.0, 1.5}, 0.5, 0.8);
  INFO(fp.note);
  REQUIRE(fp.found);
  CHECK_FALSE(fp.stable);
  CHECK(fp.jacobian.spectral_radius > 1.0);
  const MapValue back = snn_map(Selu{3.0, 1.5}, fp.mu, 0.5, fp.nu, 0.8);
  CHECK(back.mu == Approx(fp.mu).epsilon(1e-10));
  CHECK(back.nu == Approx(fp.nu).epsilon(1e-10));
  CHECK_THAT(fp.note, Catch::Contains("unstable") &&
                          Catch::Contains("iterating the map from (0, 1), the variance grows without bound"));
}

TEST_CASE("the Jacobian at (0, 1) has eigenvalues 0 and 0.7826 and spectral norm 0.7877", "[theory]") {
  const Jacobian j = snn_jacobian(Selu{}, 0.0, 0.0, 1.0, 1.0);
  // Triangular with a zero first column (omega = 0), as in Klambauer et al. 2017.
  CHECK(j.j[0][0] == 0.0);
  CHECK(j.j[1][0] == 0.0);
  CHECK(j.eigenvalues[1].real() == 0.0);
  CHECK(j.eigenvalues[0].real() == Approx(0.7826).margin(5e-5));
  CHECK(j.spectral_norm == Approx(0.7877).margin(5e-5));
  CHECK(j.j[0][1] == Approx(0.0888).margin(5e-5));
  // Against central differences of the map, at a point off the axis.
  const double mu = 0.05, omega = 0.07, nu = 1.1, tau = 0.98, h = 1e-6;
  const Jacobian k = snn_jacobian(Selu{}, mu, omega, nu, tau);
  const MapValue mp = snn_map(Selu{}, mu + h, omega, nu, tau), mm = snn_map(Selu{}, mu - h, omega, nu, tau);
  const MapValue np = snn_map(Selu{}, mu, omega, nu + h, tau), nm = snn_map(Selu{}, mu, omega, nu - h, tau);
  CHECK(k.j[0][0] == Approx((mp.mu - mm.mu) / (2 * h)).margin(1e-8));
  CHECK(k.j[1][0] == Approx((mp.nu - mm.nu) / (2 * h)).margin(1e-8));
  CHECK(k.j[0][1] == Approx((np.mu - nm.mu) / (2 * h)).margin(1e-8));
  CHECK(k.j[1][1] == Approx((np.nu - nm.nu) / (2 * h)).margin(1e-8));
}

TEST_CASE("the map is a contraction over Theorem 1's domain", "[theory]") {
  // mu, omega in [-0.1, 0.1], nu in [0.8, 1.5], tau in [0.95, 1.1] (Klambauer et al. 2017, Theorem 1).
  double worst = 0.0;
  int points = 0;
  for (int a = 0; a <= 4; ++a) {
    for (int b = 0; b <= 4; ++b) {
      for (int c = 0; c <= 7; ++c) {
        for (int d = 0; d <= 3; ++d) {
          const double mu = -0.1 + 0.05 * a, omega = -0.1 + 0.05 * b;
          const double nu = 0.8 + 0.1 * c, tau = 0.95 + 0.05 * d;
          worst = test::worse(worst, snn_jacobian(Selu{}, mu, omega, nu, tau).spectral_norm);
          ++points;
        }
      }
    }
  }
  INFO("largest spectral norm " << worst << " over " << points << " grid points");
  CHECK(points == 800);
  CHECK(worst < 1.0);
}

TEST_CASE("fixed points, and plain answers where there is none", "[theory]") {
  const FixedPoint selu = snn_fixed_point(Selu{}, 0.0, 1.0, 0.3, 1.5);
  REQUIRE(selu.found);
  CHECK(selu.mu == Approx(0.0).margin(1e-12));
  CHECK(selu.nu == Approx(1.0).epsilon(1e-12));
  CHECK(selu.stable);
  // Var relu(z) = (1/2 - 1/(2 pi)) v: the variance shrinks for tau = 2 and grows for tau = 3.
  const FixedPoint shrink = snn_fixed_point(Relu{}, 0.0, 2.0);
  CHECK(!shrink.found);
  CHECK(shrink.note.find("vanishes") != std::string::npos);
  const FixedPoint grow = snn_fixed_point(Relu{}, 0.0, 3.0);
  CHECK(!grow.found);
  CHECK(grow.note.find("grows without bound") != std::string::npos);
  CHECK(!snn_fixed_point(Tanh{}, 0.0, 1.0).found);
}

TEST_CASE("alpha dropout's affine correction", "[theory]") {
  const double ap = -kSeluLambda01 * kSeluAlpha01;
  for (double q : {0.5, 0.9, 0.95}) {
    const DropoutAffine d = alpha_dropout(q, ap, 0.0, 1.0);
    // The paper's (0, 1) form.
    const double a = 1.0 / std::sqrt(q + ap * ap * q * (1 - q));
    CHECK(d.a == Approx(a).epsilon(1e-15));
    CHECK(d.b == Approx(-a * (1 - q) * ap).epsilon(1e-15));
  }
  // The general form keeps any fixed point: a x + b of the dropped-out variable has mean 0.3, var 2.
  const double q = 0.8, mu = 0.3, nu = 2.0;
  const DropoutAffine d = alpha_dropout(q, ap, mu, nu);
  const double mean_d = q * mu + (1 - q) * ap;
  const double var_d = q * (nu + mu * mu) + (1 - q) * ap * ap - mean_d * mean_d;
  CHECK(d.a * mean_d + d.b == Approx(mu).epsilon(1e-14));
  CHECK(d.a * d.a * var_d == Approx(nu).epsilon(1e-14));
}

TEST_CASE("layer predictions: relu halves exactly, selu stays at (0, 1), dropout keeps it", "[theory]") {
  const LayerPrediction relu = predict_layers(make_spec(Relu{}, 30, 100, 1, 1));
  for (int l = 1; l <= 30; ++l) CHECK(relu.activation_msq[l - 1] == Approx(std::ldexp(1.0, -l)).epsilon(1e-14));
  for (int l = 1; l <= 30; ++l) CHECK(relu.chi[l - 1] == Approx(0.5).epsilon(1e-14));
  PointSpec spec = make_spec(Selu{}, 20, 100, 1, 1);
  const LayerPrediction selu = predict_layers(spec);
  spec.alpha_dropout.keep_probability = 0.9;
  const LayerPrediction dropped = predict_layers(spec);
  for (int l = 1; l <= 20; ++l) {
    CHECK(selu.activation_mean[l - 1] == Approx(0.0).margin(1e-12));
    CHECK(selu.activation_var[l - 1] == Approx(1.0).epsilon(1e-12));
    CHECK(dropped.activation_mean[l - 1] == Approx(0.0).margin(1e-12));
    CHECK(dropped.activation_var[l - 1] == Approx(1.0).epsilon(1e-12));
  }
  // The gradient grows by chi = E[selu'(z)^2] = 1.0716 per layer backwards.
  CHECK(selu.grad_activation_msq[0] == Approx(std::pow(selu.chi[0], 19)).epsilon(1e-12));
}

TEST_CASE("depth scales and the correlation map", "[theory]") {
  const DepthScales selu = depth_scales(Selu{}, 1.0, 0.0);
  REQUIRE(selu.found);
  CHECK(selu.q_star == Approx(1.0).epsilon(1e-12));
  CHECK(selu.slope_q == Approx(snn_jacobian(Selu{}, 0, 0, 1, 1).j[1][1]).epsilon(1e-10));
  CHECK(selu.xi_q == Approx(-1.0 / std::log(selu.slope_q)).epsilon(1e-12));
  CHECK(selu.chi > 1.0);  // selu normalises the forward pass only (SCIENCE.md)
  CHECK(!depth_scales(Tanh{}, 1.0, 0.0).found);  // q -> 0 at weight variance 1
  CHECK(std::isnan(depth_scales(Identity{}, 1.0, 0.0).xi_q));  // marginal
  // Without a fixed point the note says which way q goes, also where it goes slowly.
  CHECK_THAT(depth_scales(Tanh{}, 1.0, 0.0).note, Catch::StartsWith("no fixed point q* > 0: the second moment "
                                                                    "decreases towards 0, slowly"));
  CHECK_THAT(depth_scales(Relu{}, 2.0, 0.1).note, Catch::StartsWith("no fixed point q*: the second moment grows "
                                                                    "without bound, slowly (q = 31"));
  CHECK(depth_scales(Relu{}, 2.0, 0.0).note ==
        "no isolated fixed point q*: the q-map is marginal (every q nearby is a fixed point)");
  // A small c* (a small bias) is the map's fixed point too, not the root of its linearisation
  // at 0, which was taken below 1e-3 and was off by 1.8e-4 relative at s_b^2 = 1e-5.
  for (const double bias : {1e-5, 2.9e-5}) {
    const DepthScales small = depth_scales(Selu{}, 1.0, bias);
    REQUIRE(small.found);
    INFO("bias variance " << bias << ": c* " << small.c_star);
    REQUIRE(small.c_star > 0.0);
    REQUIRE(small.c_star < 1e-3);
    CHECK(std::abs(correlation_map(Selu{}, small.q_star, small.c_star, 1.0, bias) - small.c_star) <=
          1e-9 * small.c_star);
  }
  // Chaotic phase with a nonzero mean: c* is the correlation map's fixed point in (0, 1), found
  // by a root search, and stable there.
  for (const Selu f : {Selu{2.0, 1.1}, Selu{1.4, 1.15}, Selu{1.8, 1.2}}) {
    INFO("selu alpha " << f.alpha << ", lambda " << f.lambda);
    const DepthScales d = depth_scales(f, 1.0, 0.0);
    REQUIRE(d.found);
    REQUIRE(d.chi > 1.0);
    CHECK(d.c_star > 1e-3);
    CHECK(d.c_star < 1.0);
    CHECK(std::abs(correlation_map(f, d.q_star, d.c_star, 1.0, 0.0) - d.c_star) < 1e-11);
    CHECK(d.chi_c > 0.0);
    CHECK(d.chi_c < 1.0);
  }
  // relu with weight variance 2: the arc-cosine kernel (Cho & Saul 2009).
  for (double c : {0.0, 0.3, 0.9, 1.0}) {
    const double expected = (std::sqrt(1 - c * c) + (M_PI - std::acos(c)) * c) / M_PI;
    CHECK(correlation_map(Relu{}, 1.3, c, 2.0, 0.0) == Approx(expected).epsilon(1e-10));
  }
  CHECK(correlation_map(Tanh{}, 0.7, 1.0, 1.5, 0.1) == Approx(1.0).epsilon(1e-12));
}

TEST_CASE("Monte Carlo extrapolated to infinite width agrees with the mean-field prediction", "[theory][statistics]") {
  // Each statistic at widths 1024 and 512, extrapolated (extrapolate_width): what is left is the
  // 1/n^2 term. The 1/n coefficients measured here are at most about 5 at depth 16 (tanh and elu,
  // relative), so that term, of the order of their square over n^2, is below 1e-4 relative: a
  // tenth of a standard error or less.
  const std::int64_t n = 1024;
  const int L = 16;
  for (const Activation act : std::vector<Activation>{Selu{}, Relu{}, Elu{}, Tanh{}, Sigmoid{}, Softplus{}}) {
    const PointSpec spec = make_spec(act, L, n, 16, 128, Precision::float32);
    const PointResult r = simulate_point(spec, {64, 1}, {2});
    const PointResult h = simulate_point(with_width(spec, n / 2), {65, 1}, {2});
    const LayerPrediction p = predict_layers(spec);
    for (int l = 1; l <= L; l += 5) {
      auto check = [&](Stat s, double predicted, const char* what) {
        const Extrapolated e = extrapolated(r, h, s, l);
        INFO(activation_name(act) << " layer " << l << " " << what << ": MC " << e.value << " +- "
                                  << e.standard_error << ", theory " << predicted);
        CHECK(std::abs(e.value - predicted) <= kSigma * e.standard_error);
      };
      check(Stat::activation_mean, p.activation_mean[l - 1], "activation_mean");
      check(Stat::activation_msq, p.activation_msq[l - 1], "activation_msq");
      check(Stat::activation_var, p.activation_var[l - 1], "activation_var");
      // At layer L this is the output gradient's own draw, 1 by construction of the theory.
      check(Stat::grad_activation_msq, p.grad_activation_msq[l - 1], "grad_activation_msq");
    }
  }
}

TEST_CASE("tanh at weight variance 1: Monte Carlo follows the slow decay of q", "[theory][statistics]") {
  // q_{l+1} = E tanh(z)^2, z ~ N(0, q_l), with no fixed point above 0. From tanh^2 x = x^2 -
  // (2/3) x^4 + (17/45) x^6 - (62/315) x^8 + (1382/14175) x^10 - ... and E z^{2k} = (2k - 1)!! q^k,
  // E tanh(z)^2 = q - 2 q^2 + (17/3) q^3 - (62/3) q^4 + (1382/15) q^5 - ..., so
  // 1 / q_{l+1} = 1 / q_l + 2 - (5/3) q_l + 6 q_l^2 - (1321/45) q_l^3 + 174 q_l^4 + ...:
  // q_l ~ 1 / (2 l) for large l.
  const std::int64_t n = 1024;
  const int L = 40;
  const PointSpec spec = make_spec(Tanh{}, L, n, 8, 128, Precision::float32);
  const PointResult r = simulate_point(spec, {7, 0}, {2});
  const PointResult h = simulate_point(with_width(spec, n / 2), {8, 0}, {2});
  const LayerPrediction p = predict_layers(spec);
  for (int l : {1, 10, 20, 40}) {
    const Extrapolated e = extrapolated(r, h, Stat::activation_msq, l);
    INFO("layer " << l << ": MC " << e.value << " +- " << e.standard_error << ", theory " << p.activation_msq[l - 1]);
    CHECK(std::abs(e.value - p.activation_msq[l - 1]) <= kSigma * e.standard_error);
  }
  // The prediction's last step against the series, at q = 1/76: the q^4 term is 5e-6.
  const double q = p.activation_msq[L - 2], step = 1.0 / p.activation_msq[L - 1] - 1.0 / q;
  INFO("q_{L-1} = " << q << ", 1/q_L - 1/q_{L-1} = " << step);
  CHECK(std::abs(step - (2.0 - 5.0 / 3.0 * q + 6.0 * q * q - 1321.0 / 45.0 * q * q * q)) <= 2e-5);
}

TEST_CASE("alpha dropout in the Monte Carlo forward pass keeps the fixed point", "[theory][statistics]") {
  // Extrapolated to infinite width as above.
  const std::int64_t n = 1024;
  PointSpec spec = make_spec(Selu{}, 16, n, 16, 128, Precision::float32);
  spec.alpha_dropout.keep_probability = 0.9;
  const PointResult r = simulate_point(spec, {99, 0}, {2});
  const PointResult h = simulate_point(with_width(spec, n / 2), {100, 0}, {2});
  for (int l : {1, 8, 16}) {
    check_unit_fixed_point(r, h, l);
  }
}
