#include "core/theory.hpp"

#include <algorithm>
#include <cstdio>
#include <cmath>
#include <limits>
#include <queue>
#include <type_traits>

#include "core/engine.hpp"
#include "core/vmath.hpp"

namespace selfnorm::theory {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kSqrt2 = 1.41421356237309504880;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
// The Gaussian weight beyond |t| = 40 is below 1e-348: the integration range in standard units.
constexpr double kTailT = 40.0;

double phi(double t) { return std::isinf(t) ? 0.0 : kInvSqrt2Pi * std::exp(-0.5 * t * t); }
double Phi(double t) { return 0.5 * std::erfc(-t / kSqrt2); }
double Q(double t) { return 0.5 * std::erfc(t / kSqrt2); }  // 1 - Phi(t), accurate in the upper tail
double t_phi(double t) { return std::isinf(t) ? 0.0 : t * phi(t); }

// log Phi(y), accurate far into the lower tail.
double log_Phi(double y) {
  if (y > -30.0) return std::log(Phi(y));
  // Asymptotic series of the Mills ratio (Abramowitz & Stegun 26.2.12).
  const double y2 = y * y;
  const double series = 1.0 - 1.0 / y2 + 3.0 / (y2 * y2) - 15.0 / (y2 * y2 * y2) + 105.0 / (y2 * y2 * y2 * y2);
  return -0.5 * y2 - std::log(-y) - 0.5 * std::log(2.0 * M_PI) + std::log(series);
}

// E[e^{k z}; z < 0] for z ~ N(m, v) (v > 0): e^a Phi(y) with a = k m + k^2 v / 2 and
// y = -(m + k v) / sqrt(v). Where a is large, y is far in Phi's lower tail and the Gaussian factor
// of Phi(y) cancels e^a exactly: a - y^2 / 2 = -m^2 / (2 v), so the product is
// e^{-m^2 / (2 v)} erfcx(-y / sqrt 2) / 2, with no overflow and no cancellation between a and
// y^2 / 2 (both near v k^2 / 2, which for v = 1e60 left the difference without one correct digit).
double exp_below_zero(double k, double m, double v) {
  const double a = k * m + 0.5 * k * k * v;
  const double y = -(m + k * v) / std::sqrt(v);
  const double p = Phi(y);
  if (a < 700.0 && p > 1e-290) return std::exp(a) * p;
  if (y < 0) return std::exp(-m * m / (2.0 * v)) * 0.5 * vmath::erfcx(-y / kSqrt2);
  return std::exp(a + log_Phi(y));  // y >= 0 gives a <= -k^2 v / 2: only underflow is left to avoid
}

// Probability mass and the first two moments of z ~ N(m, v) over [a, b] (a < b, infinite ends
// allowed): M0 = P(a < z < b), M1 = E[z; a < z < b], M2 = E[z^2; a < z < b].
struct Truncated {
  double m0, m1, m2;
};
Truncated truncated(double m, double v, double a, double b) {
  const double s = std::sqrt(v);
  const double alpha = (a - m) / s;
  const double beta = (b - m) / s;
  double m0;
  if (alpha > 0) {
    m0 = Q(alpha) - Q(beta);
  } else if (beta < 0) {
    m0 = Phi(beta) - Phi(alpha);
  } else {
    m0 = 1.0 - Q(beta) - Phi(alpha);
  }
  const double dphi = phi(alpha) - phi(beta);
  const double m1 = m * m0 + s * dphi;
  const double m2 = (m * m + v) * m0 + 2.0 * m * s * dphi + v * (t_phi(alpha) - t_phi(beta));
  return {m0, m1, m2};
}

// Moments of lambda * (z for z > 0, amp (e^{c z} - 1) for z <= 0): elu, selu and celu.
GaussianMoments exponential_linear(double lambda, double amp, double c, double m, double v) {
  const double s = std::sqrt(v);
  const Truncated pos = truncated(m, v, 0.0, kInf);
  const double p_neg = Phi(-m / s);
  const double e1 = exp_below_zero(c, m, v);        // E[e^{cz}; z < 0]
  const double e2 = exp_below_zero(2.0 * c, m, v);  // E[e^{2cz}; z < 0]
  GaussianMoments g;
  g.mean = lambda * (pos.m1 + amp * (e1 - p_neg));
  g.second = lambda * lambda * (pos.m2 + amp * amp * (e2 - 2.0 * e1 + p_neg));
  g.deriv_sq = lambda * lambda * (pos.m0 + amp * amp * c * c * e2);
  return g;
}

// ---- adaptive Gauss-Kronrod (7, 15) on [a, b] ------------------------------------------------
// Nodes and weights of QUADPACK's qk15 (Piessens et al. 1983).
constexpr double kXgk[8] = {0.991455371120812639206854697526329, 0.949107912342758524526189684047851,
                            0.864864423359769072789712788640926, 0.741531185599394439863864773280788,
                            0.586087235467691130294144845693013, 0.405845151377397166906606412076961,
                            0.207784955007898467600689403773245, 0.000000000000000000000000000000000};
constexpr double kWgk[8] = {0.022935322010529224963732008058970, 0.063092092629978553290700663189204,
                            0.104790010322250183839876322541518, 0.140653259715525918745189590510238,
                            0.169004726639267902826583426598550, 0.190350578064785409913256402421014,
                            0.204432940075298892414161999234649, 0.209482141084727828012999174891714};
constexpr double kWg[4] = {0.129484966168869693270611432679082, 0.279705391489276667901467771423780,
                           0.381830050505118944950369775488975, 0.417959183673469387755102040816327};

template <class F>
void kronrod(const F& f, double a, double b, double& result, double& error, double& abs_result) {
  const double center = 0.5 * (a + b);
  const double half = 0.5 * (b - a);
  const double fc = f(center);
  double resk = fc * kWgk[7];
  double resg = fc * kWg[3];
  double resabs = std::abs(fc) * kWgk[7];
  for (int j = 0; j < 7; ++j) {
    const double dx = half * kXgk[j];
    const double f1 = f(center - dx), f2 = f(center + dx);
    resk += kWgk[j] * (f1 + f2);
    resabs += kWgk[j] * (std::abs(f1) + std::abs(f2));
    if (j % 2 == 1) resg += kWg[j / 2] * (f1 + f2);
  }
  result = resk * half;
  error = std::abs((resk - resg) * half);
  abs_result = resabs * std::abs(half);
}

// Integral of g(t) phi(t) over the real line, split at `breaks` (in t units): globally adaptive
// like QUADPACK's qag, always refining the piece with the largest error estimate, until the total
// estimate is below 1e-14 of the integral of |g| phi or 4000 pieces are in use.
template <class G>
double integrate_standard(const G& g, std::vector<double> breaks) {
  breaks.erase(std::remove_if(breaks.begin(), breaks.end(), [](double t) { return !(std::abs(t) < kTailT); }),
               breaks.end());
  breaks.push_back(-kTailT);
  breaks.push_back(kTailT);
  // The bulk of the Gaussian weight gets its own pieces, so the rule sees its scale at once.
  for (double t : {-8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0}) breaks.push_back(t);
  std::sort(breaks.begin(), breaks.end());
  breaks.erase(std::unique(breaks.begin(), breaks.end()), breaks.end());
  auto integrand = [&](double t) { return g(t) * phi(t); };
  struct Piece {
    double a, b, value, error, abs_value;
    bool operator<(const Piece& o) const { return error < o.error; }
  };
  std::priority_queue<Piece> pieces;
  double total = 0.0, error = 0.0, scale = 0.0;
  auto add = [&](double a, double b) {
    Piece p{a, b, 0.0, 0.0, 0.0};
    kronrod(integrand, a, b, p.value, p.error, p.abs_value);
    total += p.value;
    error += p.error;
    scale += p.abs_value;
    pieces.push(p);
  };
  for (std::size_t i = 0; i + 1 < breaks.size(); ++i) add(breaks[i], breaks[i + 1]);
  while (error > 1e-14 * scale && pieces.size() < 4000) {
    const Piece worst = pieces.top();
    pieces.pop();
    total -= worst.value;
    error -= worst.error;
    scale -= worst.abs_value;
    const double mid = 0.5 * (worst.a + worst.b);
    add(worst.a, mid);
    add(mid, worst.b);
    if (!std::isfinite(total)) break;
  }
  return total;
}

// Break points for integrating f over N(m, s^2), in standard units: f's kinks, and where s is wide
// against a smooth activation's bend at 0 (width 1 / beta for softplus, 1 for tanh, sigmoid, gelu
// and silu), points across it, so that the adaptive rule sees the narrow feature at once.
std::vector<double> kink_breaks(const Activation& f, double m, double s) {
  std::vector<double> out;
  for (double k : kinks(f)) out.push_back((k - m) / s);
  const double width = std::visit(
      [](const auto& a) -> double {
        using A = std::decay_t<decltype(a)>;
        if constexpr (std::is_same_v<A, Softplus>) return 1.0 / a.beta;
        if constexpr (std::is_same_v<A, Tanh> || std::is_same_v<A, Sigmoid> || std::is_same_v<A, Gelu> ||
                      std::is_same_v<A, Silu>) {
          return 1.0;
        }
        return 0.0;
      },
      f);
  if (width > s) return out;
  for (double w : {-16.0, -4.0, -1.0, 0.0, 1.0, 4.0, 16.0}) out.push_back((w * width - m) / s);
  return out;
}

// d/dm and d/dv of E[h(z)], z = m + s t ~ N(m, s^2), by Stein's identities: E[h t] / s and
// E[h (t^2 - 1)] / (2 s^2). `h_of_t` is h(m + s t) as a function of t, split at `breaks` (in t
// units). E[t] = E[t^2 - 1] = 0, so h(m) may be taken out of h first, and the callers do: a
// constant left in would add its rounding, magnified 1 / s and 1 / s^2, to both derivatives.
template <class H>
void gaussian_derivatives(const H& h_of_t, double s, const std::vector<double>& breaks, double& d_m, double& d_v) {
  d_m = integrate_standard([&](double t) { return h_of_t(t) * t; }, breaks) / s;
  d_v = integrate_standard([&](double t) { return h_of_t(t) * (t * t - 1.0); }, breaks) / (2.0 * s * s);
}

// A root of g in [a, b], where g(a) = fa and g(b) = fb have opposite signs, to within xtol:
// Brent's method (Brent 1973, "Algorithms for minimization without derivatives", ch. 4), inverse
// quadratic interpolation and secant steps safeguarded by bisection. On smooth functions it needs
// a fraction of bisection's evaluations, and never many more.
template <class G>
double brent_root(G&& g, double a, double b, double fa, double fb, double xtol) {
  if (fa == 0.0) return a;
  if (fb == 0.0) return b;
  constexpr double kEps = std::numeric_limits<double>::epsilon();
  double c = b, fc = fb, d = b - a, e = d;
  for (int it = 0; it < 200; ++it) {
    if ((fb > 0.0) == (fc > 0.0)) {  // keep the root between b and c
      c = a;
      fc = fa;
      d = e = b - a;
    }
    if (std::abs(fc) < std::abs(fb)) {  // b is the best estimate so far
      a = b;
      b = c;
      c = a;
      fa = fb;
      fb = fc;
      fc = fa;
    }
    const double tol = 2.0 * kEps * std::abs(b) + 0.5 * xtol;
    const double half = 0.5 * (c - b);
    if (std::abs(half) <= tol || fb == 0.0) return b;
    if (std::abs(e) >= tol && std::abs(fa) > std::abs(fb)) {
      const double sr = fb / fa;
      double p, q;
      if (a == c) {  // secant
        p = 2.0 * half * sr;
        q = 1.0 - sr;
      } else {  // inverse quadratic interpolation
        const double qa = fa / fc, rb = fb / fc;
        p = sr * (2.0 * half * qa * (qa - rb) - (b - a) * (rb - 1.0));
        q = (qa - 1.0) * (rb - 1.0) * (sr - 1.0);
      }
      if (p > 0.0) q = -q;
      p = std::abs(p);
      if (2.0 * p < std::min(3.0 * half * q - std::abs(tol * q), std::abs(e * q))) {
        e = d;
        d = p / q;
      } else {  // the interpolation would leave the bracket or converge too slowly: bisect
        d = half;
        e = d;
      }
    } else {
      d = half;
      e = d;
    }
    a = b;
    fa = fb;
    b += std::abs(d) > tol ? d : std::copysign(tol, half);
    fb = g(b);
  }
  return b;
}

// E[h(u1) h(u2)] for (u1, u2) ~ N(0, q) with correlation c, as the outer integral over u1 of
// h(u1) inner(c u1, q (1 - c^2)), where inner(m, v) = E[h(m + sqrt(v) z)] is the expectation of
// h(u2) given u1, computed as the caller chooses. The inner expectation smooths a kink of h over a
// width r sqrt(q), r = sqrt(1 - c^2): the outer integral gets break points across that width so
// that near c = 1 it needs few refinements.
template <class Inner>
double bivariate_with_inner(const std::function<double(double)>& h, const Inner& inner,
                            const std::vector<double>& k, double q, double c) {
  if (std::abs(c) < 1e-12) {  // independent: the product of the expectations
    const double e = inner(0.0, q);
    return e * e;
  }
  const double r = std::sqrt(std::max(0.0, 1.0 - c * c));
  const double width = r * std::sqrt(q);
  std::vector<double> outer;
  for (double x : k) {
    outer.push_back(x);
    for (double w : {0.25, 1.0, 3.0, 10.0}) {
      outer.push_back(x + w * width / c);
      outer.push_back(x - w * width / c);
    }
  }
  return gaussian_expectation([&](double u1) { return h(u1) * inner(c * u1, q * r * r); }, 0.0, q, outer);
}

}  // namespace

// E[h(u1) h(u2)] for (u1, u2) ~ N(0, q) with correlation c, integrating over u2 given u1 inside.
double bivariate_expectation(const std::function<double(double)>& h, const std::vector<double>& k, double q,
                             double c) {
  return bivariate_with_inner(h, [&](double m, double v) { return gaussian_expectation(h, m, v, k); }, k, q, c);
}

std::vector<double> kinks(const Activation& f) {
  return std::visit(
      [](const auto& a) -> std::vector<double> {
        using A = std::decay_t<decltype(a)>;
        if constexpr (std::is_same_v<A, Relu6>) return {0.0, 6.0};
        if constexpr (std::is_same_v<A, Softplus>) return {a.threshold / a.beta};
        if constexpr (std::is_same_v<A, Relu> || std::is_same_v<A, LeakyRelu> || std::is_same_v<A, Elu> ||
                      std::is_same_v<A, Selu> || std::is_same_v<A, Celu>) {
          return {0.0};
        }
        return {};
      },
      f);
}

double gaussian_expectation(const std::function<double(double)>& h, double m, double v,
                            std::span<const double> kink_points) {
  if (!(v > 0)) return h(m);
  const double s = std::sqrt(v);
  std::vector<double> breaks;
  for (double k : kink_points) breaks.push_back((k - m) / s);
  return integrate_standard([&](double t) { return h(m + s * t); }, breaks);
}

bool has_closed_form(const Activation& f) {
  return std::visit(
      [](const auto& a) {
        using A = std::decay_t<decltype(a)>;
        return std::is_same_v<A, Relu> || std::is_same_v<A, Relu6> || std::is_same_v<A, LeakyRelu> ||
               std::is_same_v<A, Elu> || std::is_same_v<A, Selu> || std::is_same_v<A, Celu> ||
               std::is_same_v<A, Identity>;
      },
      f);
}

GaussianMoments gaussian_moments_quadrature(const Activation& f, double m, double v) {
  if (!(v > 0)) {
    const double y = activation_value(f, m), d = activation_slope(f, m);
    return {y, y * y, d * d};
  }
  const double s = std::sqrt(v);
  const auto breaks = kink_breaks(f, m, s);
  GaussianMoments g;
  g.mean = integrate_standard([&](double t) { return activation_value(f, m + s * t); }, breaks);
  g.second = integrate_standard(
      [&](double t) {
        const double y = activation_value(f, m + s * t);
        return y * y;
      },
      breaks);
  g.deriv_sq = integrate_standard(
      [&](double t) {
        const double d = activation_slope(f, m + s * t);
        return d * d;
      },
      breaks);
  return g;
}

namespace {

// The rate c of the exponential in e^{cz} - 1 on the negative side: 1 for elu and selu, 1 / alpha
// for celu; 0 where f has none.
double exponential_rate(const Activation& f) {
  if (const auto* a = std::get_if<Celu>(&f)) return 1.0 / a->alpha;
  return std::holds_alternative<Elu>(f) || std::holds_alternative<Selu>(f) ? 1.0 : 0.0;
}

// Whether the moments of f over N(m, v), f's kinks at k, come from the closed form: where f has one
// and it keeps its digits. The truncated moments cancel catastrophically for a kink more than
// kClosedFormRange standard deviations from m, and to about (s / width)^2 for an interval between
// two kinks narrower than s. E[e^{cz} - 1; z < 0] and E[(e^{cz} - 1)^2; z < 0] cancel to the
// order of c E|z| and its square over the negative side, E|z| there below s + max(-m, 0). Within
// kClosedFormSpacing of either, at most four digits go; the quadrature keeps them all.
bool use_closed_form(const Activation& f, const std::vector<double>& k, double m, double v) {
  if (!(v > 0) || !has_closed_form(f)) return false;
  const double s = std::sqrt(v);
  if (std::any_of(k.begin(), k.end(), [&](double x) { return std::abs(x - m) > kClosedFormRange * s; })) return false;
  for (std::size_t i = 0; i + 1 < k.size(); ++i) {
    if (k[i + 1] - k[i] < kClosedFormSpacing * s) return false;
  }
  const double c = exponential_rate(f);
  return c == 0.0 || c * (s + std::max(-m, 0.0)) >= kClosedFormSpacing;
}

}  // namespace

GaussianMoments gaussian_moments(const Activation& f, double m, double v) {
  return use_closed_form(f, kinks(f), m, v) ? gaussian_moments_closed(f, m, v) : gaussian_moments_quadrature(f, m, v);
}

GaussianMoments gaussian_moments_closed(const Activation& f, double m, double v) {
  if (!(v > 0) || !has_closed_form(f)) return gaussian_moments_quadrature(f, m, v);
  return std::visit(
      [&](const auto& a) -> GaussianMoments {
        using A = std::decay_t<decltype(a)>;
        const double s = std::sqrt(v);
        if constexpr (std::is_same_v<A, Relu>) {
          const Truncated p = truncated(m, v, 0.0, kInf);
          return {p.m1, p.m2, p.m0};
        } else if constexpr (std::is_same_v<A, LeakyRelu>) {
          // f = a z + (1 - a) relu(z), and z relu(z) = relu(z)^2.
          const double k = a.negative_slope;
          const Truncated p = truncated(m, v, 0.0, kInf);
          return {k * m + (1.0 - k) * p.m1, k * k * (m * m + v) + (1.0 - k * k) * p.m2, p.m0 + k * k * Phi(-m / s)};
        } else if constexpr (std::is_same_v<A, Relu6>) {
          const Truncated mid = truncated(m, v, 0.0, 6.0);
          const double above = Q((6.0 - m) / s);
          return {mid.m1 + 6.0 * above, mid.m2 + 36.0 * above, mid.m0};
        } else if constexpr (std::is_same_v<A, Elu>) {
          return exponential_linear(1.0, a.alpha, 1.0, m, v);
        } else if constexpr (std::is_same_v<A, Selu>) {
          return exponential_linear(a.lambda, a.alpha, 1.0, m, v);
        } else if constexpr (std::is_same_v<A, Celu>) {
          return exponential_linear(1.0, a.alpha, 1.0 / a.alpha, m, v);
        } else {  // Identity
          return {m, m * m + v, 1.0};
        }
      },
      f);
}

namespace {

// tanh(m + d) - tanh(m) = sinh(d) / (cosh(m + d) cosh(m)). Where the coshes would overflow, the same
// with each factor divided by e^{|x|} or e^{|m|}: d - |x| - |m| <= 0, so no exponential overflows.
double tanh_step(double m, double d) {
  const double x = m + d;
  const double S = std::abs(x) + std::abs(m);
  if (S < 700.0) return std::sinh(d) / (std::cosh(x) * std::cosh(m));
  return 2.0 * (std::exp(d - S) - std::exp(-d - S)) /
         ((1.0 + std::exp(-2.0 * std::abs(x))) * (1.0 + std::exp(-2.0 * std::abs(m))));
}

// Phi(m + d) - Phi(m). Where the step is short against phi's scale, 1 / (1 + |m| + |d|), phi
// integrated over it by Gauss-Kronrod's 15 points (exact for polynomials of degree 22, so to
// rounding here); else the difference of the tails on the step's side, which no longer cancel.
double Phi_step(double m, double d) {
  const double x = m + d;
  if (std::abs(d) * (1.0 + std::abs(m) + std::abs(d)) < 1.0) {
    double result, error, abs_result;
    // Over u in [0, d], not t in [m, m + d]: d itself, not the difference of two rounded ends.
    kronrod([&](double u) { return phi(m + u); }, 0.0, d, result, error, abs_result);
    return result;
  }
  return m >= 0 && x >= 0 ? Q(m) - Q(x) : Phi(x) - Phi(m);
}

// log1p(e^a) - log1p(e^b) = log1p(e^b expm1(a - b) / (1 + e^b)), for b <= 0 (no overflow).
double log1p_exp_step(double b, double d) { return std::log1p(std::exp(b) * std::expm1(d) / (1.0 + std::exp(b))); }

}  // namespace

double activation_step(const Activation& f, double m, double d) {
  const double x = m + d;
  // The plain difference, for steps across a kink, and where one factor of the exact forms below
  // overflows (e^{cm} expm1(cd) at cm < -709): evaluated only there, off the quadrature's usual path.
  const auto direct = [&] { return activation_value(f, x) - activation_value(f, m); };
  const double step = std::visit(
      [&](const auto& a) -> double {
        using A = std::decay_t<decltype(a)>;
        if constexpr (std::is_same_v<A, Identity>) {
          return d;
        } else if constexpr (std::is_same_v<A, Relu>) {
          if (m > 0 && x > 0) return d;
          return m <= 0 && x <= 0 ? 0.0 : direct();
        } else if constexpr (std::is_same_v<A, LeakyRelu>) {
          if (m > 0 && x > 0) return d;
          return m <= 0 && x <= 0 ? a.negative_slope * d : direct();
        } else if constexpr (std::is_same_v<A, Relu6>) {
          if (m > 0 && m < 6 && x > 0 && x < 6) return d;
          return (m <= 0 && x <= 0) || (m >= 6 && x >= 6) ? 0.0 : direct();
        } else if constexpr (std::is_same_v<A, Elu> || std::is_same_v<A, Selu> || std::is_same_v<A, Celu>) {
          // lambda (x for x > 0, amp (e^{cx} - 1) for x <= 0).
          double lambda = 1.0, amp = a.alpha, c = 1.0;
          if constexpr (std::is_same_v<A, Selu>) lambda = a.lambda;
          if constexpr (std::is_same_v<A, Celu>) c = 1.0 / a.alpha;
          if (m > 0 && x > 0) return lambda * d;
          return m <= 0 && x <= 0 ? lambda * amp * std::exp(c * m) * std::expm1(c * d) : direct();
        } else if constexpr (std::is_same_v<A, Tanh>) {
          return tanh_step(m, d);
        } else if constexpr (std::is_same_v<A, Sigmoid>) {
          return 0.5 * tanh_step(0.5 * m, 0.5 * d);  // sigmoid(x) = (1 + tanh(x / 2)) / 2
        } else if constexpr (std::is_same_v<A, Softplus>) {
          // (log1p(e^{beta x})) / beta, or x beyond the threshold; for beta x > 0 it is
          // x + log1p(e^{-beta x}) / beta.
          const double z = a.beta * m, zx = a.beta * x, t = a.threshold;
          if (z > t && zx > t) return d;
          if (z > t || zx > t) return direct();
          if (z <= 0 && zx <= 0) return log1p_exp_step(z, a.beta * d) / a.beta;
          if (z > 0 && zx > 0) return d + log1p_exp_step(-z, -a.beta * d) / a.beta;
          return direct();
        } else if constexpr (std::is_same_v<A, Gelu>) {
          return d * Phi(x) + m * Phi_step(m, d);  // x Phi(x) - m Phi(m)
        } else {
          static_assert(std::is_same_v<A, Silu>, "every activation has its step");
          // x s(x) - m s(m), s the sigmoid, whose step is tanh's at half the arguments.
          return d * activation_value(Sigmoid{}, x) + m * 0.5 * tanh_step(0.5 * m, 0.5 * d);
        }
      },
      f);
  if (std::isfinite(step)) return step;
  const double plain = direct();
  return std::isfinite(plain) ? plain : step;
}

double gaussian_variance(const Activation& f, double m, double v, const GaussianMoments& g) {
  const double raw = g.second - g.mean * g.mean;
  // A NaN stays NaN, and an infinite second moment is a blow-up, not a variance to refine.
  if (!(v > 0) || !std::isfinite(raw) || raw >= 0.1 * g.second) return std::max(raw, 0.0);
  // The central moment of D = f(z) - f(m) over z = m + s t. Where f is nearly constant over the
  // bulk, so is D near 0, and E[D^2] - (E D)^2 cancels little.
  const double s = std::sqrt(v);
  const auto breaks = kink_breaks(f, m, s);
  const double e1 = integrate_standard([&](double t) { return activation_step(f, m, s * t); }, breaks);
  const double e2 = integrate_standard(
      [&](double t) {
        const double y = activation_step(f, m, s * t);
        return y * y;
      },
      breaks);
  return std::max(e2 - e1 * e1, 0.0);
}

MapValue snn_map(const Activation& f, double mu, double omega, double nu, double tau) {
  const double m = mu * omega, v = nu * tau;
  const GaussianMoments g = gaussian_moments(f, m, v);
  return {g.mean, gaussian_variance(f, m, v, g)};
}

Jacobian snn_jacobian(const Activation& f, double mu, double omega, double nu, double tau) {
  const double m = mu * omega;
  const double v = nu * tau;
  const double s = std::sqrt(v);
  const auto breaks = kink_breaks(f, m, s);
  // With D = f(z) - f(m) and f(m) held fixed: E f = f(m) + E D and Var f = E[D^2] - (E D)^2, so
  // d Var = d E[D^2] - 2 E[D] d E[D]. D is small where f is nearly constant, and then neither the
  // derivatives nor the variance's cancel the large terms that E f^2 - (E f)^2 does.
  const auto step = [&](double t) { return activation_step(f, m, s * t); };
  const auto step_sq = [&](double t) {
    const double y = activation_step(f, m, s * t);
    return y * y;
  };
  double dmean_dm, dmean_dv, dsq_dm, dsq_dv;
  gaussian_derivatives(step, s, breaks, dmean_dm, dmean_dv);
  gaussian_derivatives(step_sq, s, breaks, dsq_dm, dsq_dv);
  const double mean_step = integrate_standard(step, breaks);
  Jacobian jac;
  jac.j[0][0] = omega * dmean_dm;
  jac.j[0][1] = tau * dmean_dv;
  jac.j[1][0] = omega * (dsq_dm - 2.0 * mean_step * dmean_dm);
  jac.j[1][1] = tau * (dsq_dv - 2.0 * mean_step * dmean_dv);
  const double tr = jac.j[0][0] + jac.j[1][1];
  const double det = jac.j[0][0] * jac.j[1][1] - jac.j[0][1] * jac.j[1][0];
  const std::complex<double> root = std::sqrt(std::complex<double>(0.25 * tr * tr - det, 0.0));
  jac.eigenvalues = {0.5 * tr + root, 0.5 * tr - root};
  if (std::abs(jac.eigenvalues[0]) < std::abs(jac.eigenvalues[1])) std::swap(jac.eigenvalues[0], jac.eigenvalues[1]);
  jac.spectral_radius = std::abs(jac.eigenvalues[0]);
  // Largest singular value of a 2x2 matrix: sqrt((S + sqrt(S^2 - 4 det^2)) / 2), S the squared
  // Frobenius norm.
  double S = 0.0;
  for (const auto& row : jac.j) {
    for (double x : row) S += x * x;
  }
  jac.spectral_norm = std::sqrt(0.5 * (S + std::sqrt(std::max(0.0, S * S - 4.0 * det * det))));
  return jac;
}

FixedPoint snn_fixed_point(const Activation& f, double omega, double tau, double mu_start, double nu_start) {
  FixedPoint fp;
  // "Grows without bound" is judged against the map's own scale: a selu with alpha = 1e6 has its
  // stable fixed point at nu = 1.2e12, where a fixed cut-off of 1e12 had called it divergent.
  const MapValue first = snn_map(f, mu_start, omega, nu_start, tau);
  const double unbounded = 1e12 * std::max({1.0, nu_start, std::isfinite(first.nu) ? first.nu : 1.0});
  auto newton = [&](double mu, double nu, int max_iter, double& mu_out, double& nu_out) {
    for (int it = 0; it < max_iter; ++it) {
      ++fp.iterations;
      const MapValue g = snn_map(f, mu, omega, nu, tau);
      const double r0 = g.mu - mu, r1 = g.nu - nu;
      if (std::abs(r0) + std::abs(r1) < 1e-14 * (std::abs(mu) + nu)) {
        mu_out = mu;
        nu_out = nu;
        return true;
      }
      const Jacobian jac = snn_jacobian(f, mu, omega, nu, tau);
      const double a = jac.j[0][0] - 1.0, b = jac.j[0][1], c = jac.j[1][0], d = jac.j[1][1] - 1.0;
      const double det = a * d - b * c;
      if (!std::isfinite(det) || std::abs(det) < 1e-300) return false;
      double dmu = -(d * r0 - b * r1) / det;
      double dnu = -(-c * r0 + a * r1) / det;
      // Keep nu positive: damp a step that would cross zero.
      while (nu + dnu <= 0.0) {
        dmu *= 0.5;
        dnu *= 0.5;
      }
      mu += dmu;
      nu += dnu;
      if (!std::isfinite(mu) || !std::isfinite(nu) || nu > unbounded) return false;
    }
    return false;
  };
  // Iterating the map follows the network itself: from (mu, nu), for at most `steps` layers, until
  // the variance passes `unbounded`, falls below `vanished`, or (mu, nu) settles.
  enum class Fate { grows, vanishes, settles, still_moving };
  struct Trajectory {
    double mu, nu;
    int steps = 0;
    Fate fate = Fate::still_moving;
  };
  auto iterate = [&](double mu, double nu, int steps, double vanished) {
    Trajectory t{mu, nu};
    while (t.steps < steps && t.fate == Fate::still_moving) {
      ++t.steps;
      ++fp.iterations;
      const MapValue g = snn_map(f, t.mu, omega, t.nu, tau);
      const bool settled = std::abs(g.mu - t.mu) + std::abs(g.nu - t.nu) < 1e-12 * (1.0 + std::abs(t.mu) + t.nu);
      t.mu = g.mu;
      t.nu = g.nu;
      if (!std::isfinite(t.nu) || t.nu > unbounded) {
        t.fate = Fate::grows;
      } else if (t.nu < vanished) {
        t.fate = Fate::vanishes;
      } else if (settled) {
        t.fate = Fate::settles;
      }
    }
    return t;
  };
  double mu, nu;
  // Newton's method may also land on the trivial point nu = 0; then the map's own iteration
  // tells whether the variance vanishes or grows.
  bool ok = newton(mu_start, nu_start, 60, mu, nu) && nu > 1e-10;
  if (!ok) {
    // To a stable fixed point, to 0 or to infinity.
    const Trajectory t = iterate(mu_start, nu_start, 5000, 1e-12);
    if (t.fate == Fate::grows) {
      fp.note = "no fixed point: iterating the map, the variance grows without bound";
      return fp;
    }
    if (t.fate == Fate::vanishes) {
      fp.note = "no fixed point with variance > 0: iterating the map, the variance vanishes";
      return fp;
    }
    mu = t.mu;
    nu = t.nu;
    const double nu_iterated = nu;
    ok = newton(mu, nu, 60, mu, nu) && nu > 1e-10;
    if (!ok) {
      char buf[160];
      if (nu_iterated < 1e-2 * nu_start) {
        std::snprintf(buf, sizeof buf, "no fixed point with variance > 0: iterating the map, the variance decays "
                      "slowly towards 0 (%.3g after 5000 steps)", nu_iterated);
      } else if (nu_iterated > 1e2 * nu_start) {
        std::snprintf(buf, sizeof buf, "no fixed point: iterating the map, the variance grows (%.3g after 5000 "
                      "steps)", nu_iterated);
      } else {
        std::snprintf(buf, sizeof buf, "no fixed point found: neither Newton's method nor iterating the map "
                      "converged");
      }
      fp.note = buf;
      return fp;
    }
  }
  if (!(nu > 1e-12)) {
    fp.note = "only the trivial fixed point with variance 0";
    return fp;
  }
  fp.mu = mu;
  fp.nu = nu;
  fp.jacobian = snn_jacobian(f, mu, omega, nu, tau);
  // An eigenvalue 1 (within 1e-6) means a curve of fixed points through this one, not an isolated
  // point: where mu >> sqrt(nu) an activation that is linear for z > 0 (relu, elu) maps (mu, nu)
  // to itself, so Newton's method stops wherever it starts.
  for (const auto& ev : fp.jacobian.eigenvalues) {
    if (std::abs(ev - 1.0) < 1e-6) {  // the eigenvalues' own rounding is ~1e-8 (a square root of 1e-16)
      char buf[320];
      std::snprintf(buf, sizeof buf, "no isolated fixed point: the map leaves (%.6g, %.6g) in place, with a Jacobian "
                    "eigenvalue of 1 (within 1e-6): fixed points form a curve or a region there (an activation "
                    "linear for z > 0, with mu >> sqrt(nu)); start elsewhere", mu, nu);
      fp.note = buf;
      return fp;
    }
  }
  fp.found = true;
  fp.stable = fp.jacobian.spectral_radius < 1.0;
  fp.note = fp.stable ? "stable: the Jacobian's spectral radius is below 1"
                      : "unstable: the Jacobian's spectral radius is at least 1";
  if (!fp.stable) {
    // A network does not stay at an unstable point: say where the map goes from the start.
    const Trajectory t = iterate(mu_start, nu_start, 1000, 1e-12 * nu_start);
    char buf[200];
    if (t.fate == Fate::grows || t.fate == Fate::vanishes) {
      std::snprintf(buf, sizeof buf, "; iterating the map from (%.6g, %.6g), the variance %s (%d steps)", mu_start,
                    nu_start, t.fate == Fate::grows ? "grows without bound" : "vanishes", t.steps);
    } else {
      std::snprintf(buf, sizeof buf, "; iterating the map from (%.6g, %.6g), it is at (%.6g, %.6g) after %d steps%s",
                    mu_start, nu_start, t.mu, t.nu, t.steps, t.fate == Fate::settles ? ", settled" : "");
    }
    fp.note += buf;
  }
  return fp;
}

SeluSolution solve_selu(double mean, double variance, double omega, double tau) {
  SeluSolution sol;
  if (!(variance > 0)) {
    sol.note = "the target variance must be > 0";
    return sol;
  }
  const double m = mean * omega;
  const double v = variance * tau;
  const double s = std::sqrt(v);
  // elu_alpha(z) = z (z > 0), alpha (e^z - 1) (z <= 0): E elu = P + alpha Qn, E elu^2 = B0 + alpha^2 B2.
  const Truncated pos = truncated(m, v, 0.0, kInf);
  const double p_neg = Phi(-m / s);
  const double e1 = exp_below_zero(1.0, m, v);
  const double e2 = exp_below_zero(2.0, m, v);
  const double P = pos.m1, Qn = e1 - p_neg, B0 = pos.m2, B2 = e2 - 2.0 * e1 + p_neg;
  // selu = lambda elu: lambda (P + alpha Qn) = mean, lambda^2 (B0 + alpha^2 B2 - (P + alpha Qn)^2) = variance.
  // Dividing out lambda: (P + alpha Qn) / sqrt(B0 + alpha^2 B2) = rho = mean / sqrt(variance + mean^2),
  // then lambda^2 = (variance + mean^2) / (B0 + alpha^2 B2). Squared, the first is a quadratic in
  // alpha whose coefficients lose every digit for |mean| << sqrt(variance) (they cancel to order
  // variance / mean^2): its roots, and -P/Qn (rho = 0), only start Newton's method on the ratio.
  const double second = variance + mean * mean;
  const double rho = mean / std::sqrt(second);
  std::vector<double> starts{-P / Qn};
  if (mean != 0.0) {
    const double C = 1.0 + variance / (mean * mean);  // E elu^2 / (E elu)^2
    const double qa = B2 - C * Qn * Qn, qb = -2.0 * C * P * Qn, qc = B0 - C * P * P;
    const double disc = qb * qb - 4.0 * qa * qc;
    if (disc >= 0.0) {
      const double sq = std::sqrt(disc);
      // Numerically stable roots of qa x^2 + qb x + qc.
      const double qq = -0.5 * (qb + std::copysign(sq, qb));
      if (qa != 0.0) starts.push_back(qq / qa);
      if (qq != 0.0) starts.push_back(qc / qq);
    }
  }
  auto ratio = [&](double alpha) { return (P + alpha * Qn) / std::sqrt(B0 + alpha * alpha * B2); };
  auto ratio_slope = [&](double alpha) {
    const double b = B0 + alpha * alpha * B2;
    return (Qn * b - (P + alpha * Qn) * alpha * B2) / (b * std::sqrt(b));
  };
  std::vector<double> roots;
  for (double alpha : starts) {
    bool converged = false;
    for (int it = 0; it < 100 && std::isfinite(alpha); ++it) {
      const double step = (ratio(alpha) - rho) / ratio_slope(alpha);
      alpha -= step;
      if (std::abs(step) <= 1e-15 * std::abs(alpha)) {
        converged = true;
        break;
      }
    }
    if (!converged || !(alpha > 0) || !std::isfinite(alpha) || std::abs(ratio(alpha) - rho) > 1e-12) continue;
    if (std::none_of(roots.begin(), roots.end(), [&](double r) { return std::abs(r - alpha) <= 1e-9 * alpha; })) {
      roots.push_back(alpha);
    }
  }
  // Each solution is checked against the map itself, an independent evaluation.
  std::string failed;
  double best_distance = kInf;
  for (double alpha : roots) {
    const double lambda = std::sqrt(second / (B0 + alpha * alpha * B2));
    if (!(lambda > 0) || !std::isfinite(lambda)) continue;
    const MapValue back = snn_map(Selu{alpha, lambda}, mean, omega, variance, tau);
    if (!(std::abs(back.mu - mean) <= 1e-9 * std::sqrt(second)) || !(std::abs(back.nu - variance) <= 1e-9 * second)) {
      failed = "alpha = " + std::to_string(alpha) + " maps the target to (" + std::to_string(back.mu) + ", " +
               std::to_string(back.nu) + ")";
      continue;
    }
    const double distance = std::abs(alpha - kSeluAlpha01);
    if (distance < best_distance) {
      if (sol.found) sol.note = "two solutions; this one is nearer alpha01, the other has alpha = " + std::to_string(sol.alpha);
      best_distance = distance;
      sol.found = true;
      sol.alpha = alpha;
      sol.lambda = lambda;
    } else if (sol.found) {
      sol.note = "two solutions; this one is nearer alpha01, the other has alpha = " + std::to_string(alpha);
    }
  }
  if (!sol.found) {
    sol.note = failed.empty() ? "no alpha > 0, lambda > 0 gives this fixed point for these (omega, tau)"
                              : "no solution reproduces this fixed point to 1e-9 (" + failed + ")";
  } else if (sol.note.empty()) {
    sol.note = "unique solution with alpha > 0, lambda > 0";
  }
  return sol;
}

DropoutAffine alpha_dropout(double keep, double alpha_prime, double mean, double variance) {
  DropoutAffine d;
  d.alpha_prime = alpha_prime;
  alpha_dropout_affine(keep, alpha_prime, mean, variance, d.a, d.b);
  return d;
}

double sigma_w2(const InitSpec& init, std::int64_t fan_in, std::int64_t fan_out) {
  double base = 1.0;
  if (init.kind == InitKind::he_normal) base = 2.0;
  if (init.kind == InitKind::glorot_normal) {
    base = 2.0 * static_cast<double>(fan_in) / static_cast<double>(fan_in + fan_out);
  }
  return init.weight_variance * base;
}

LayerPrediction predict_layers(const PointSpec& spec) {
  const int L = spec.network.depth();
  const auto& n = spec.network.widths;
  LayerPrediction p;
  for (auto* v : {&p.preactivation_mean, &p.preactivation_var, &p.activation_mean, &p.activation_var,
                  &p.activation_msq, &p.grad_activation_msq, &p.grad_preactivation_msq, &p.grad_weight_msq,
                  &p.chi}) {
    v->assign(static_cast<std::size_t>(L), kNaN);
  }
  double mu = spec.input.mean;
  double q = spec.input.mean * spec.input.mean + spec.input.variance;
  std::vector<double> q_in(static_cast<std::size_t>(L)), dsq(static_cast<std::size_t>(L)), sw2(static_cast<std::size_t>(L));
  double keep = 1.0, a = 1.0, b = 0.0, alpha_prime = 0.0;
  if (spec.alpha_dropout.enabled()) {
    keep = spec.alpha_dropout.keep_probability;
    dropout_saturation(spec.activation, alpha_prime);
    alpha_dropout_affine(keep, alpha_prime, spec.alpha_dropout.fixed_point_mean,
                         spec.alpha_dropout.fixed_point_variance, a, b);
  }
  for (int l = 1; l <= L; ++l) {
    const auto i = static_cast<std::size_t>(l - 1);
    sw2[i] = sigma_w2(spec.init, n[i], n[i + 1]);
    q_in[i] = q;
    // h = x W + b at infinite width: N(omega mu + b_mean, s_w^2 q + s_b^2).
    const double m = spec.init.weight_mean * mu + spec.init.bias_mean;
    const double v = sw2[i] * q + spec.init.bias_variance;
    const GaussianMoments g = gaussian_moments(spec.activation, m, v);
    double var = gaussian_variance(spec.activation, m, v, g);
    mu = g.mean;
    q = g.second;
    dsq[i] = g.deriv_sq;
    if (spec.alpha_dropout.enabled()) {
      // Var x' = keep Var f + keep (1 - keep) (E f - alpha')^2, from the kept and dropped halves.
      var = a * a * (keep * var + keep * (1.0 - keep) * (g.mean - alpha_prime) * (g.mean - alpha_prime));
      // x' = a (x if kept, alpha' if dropped) + b.
      const double d_mean = keep * mu + (1.0 - keep) * alpha_prime;
      const double d_second = keep * q + (1.0 - keep) * alpha_prime * alpha_prime;
      mu = a * d_mean + b;
      q = a * a * d_second + 2.0 * a * b * d_mean + b * b;
      dsq[i] = a * a * keep * g.deriv_sq;
    }
    p.preactivation_mean[i] = m;
    p.preactivation_var[i] = v;
    p.activation_mean[i] = mu;
    p.activation_msq[i] = q;
    p.activation_var[i] = var;
  }
  // Backward, under the gradient-independence assumption: E[g^2] = 1 at the output;
  // E[dL/dh_l^2] = E[dL/dx_l^2] E[f'^2]; E[dL/dx_{l-1}^2] = s_w^2 (n_l / n_{l-1}) E[dL/dh_l^2].
  double g2 = 1.0;
  for (int l = L; l >= 1; --l) {
    const auto i = static_cast<std::size_t>(l - 1);
    p.grad_activation_msq[i] = g2;
    p.grad_preactivation_msq[i] = g2 * dsq[i];
    const double ratio = static_cast<double>(n[i + 1]) / static_cast<double>(n[i]);
    p.chi[i] = sw2[i] * ratio * dsq[i];
    if (spec.monte_carlo.weight_gradients) {
      // dL/dW_l = x_{l-1}^T dL/dh_l summed over the batch; samples are uncorrelated in dL/dh.
      p.grad_weight_msq[i] = static_cast<double>(spec.monte_carlo.batch) * q_in[i] * p.grad_preactivation_msq[i];
    }
    g2 = p.chi[i] * g2;
  }
  return p;
}

double correlation_map(const Activation& f, double q, double c, double sigma_w2_value, double sigma_b2) {
  const std::function<double(double)> h = [&](double x) { return activation_value(f, x); };
  const auto k = kinks(f);
  // The inner expectation E[f(u2) | u1] is a Gaussian mean of f: in closed form where gaussian_moments
  // would use it, else by quadrature of the mean alone. Nested quadrature throughout had made the
  // search for c* take 0.1 s per point of a selu sweep.
  const double cross = bivariate_with_inner(
      h,
      [&](double m, double v) {
        return use_closed_form(f, k, m, v) ? gaussian_moments_closed(f, m, v).mean : gaussian_expectation(h, m, v, k);
      },
      k, q, c);
  const double second = gaussian_moments(f, 0.0, q).second;
  return (sigma_w2_value * cross + sigma_b2) / (sigma_w2_value * second + sigma_b2);
}

DepthScales depth_scales(const Activation& f, double sigma_w2_value, double sigma_b2) {
  DepthScales d;
  d.xi_q = kNaN;
  d.xi_c = kNaN;
  const auto k = kinks(f);
  const auto slope = [&](double x) { return activation_slope(f, x); };
  auto qmap = [&](double q) { return sigma_w2_value * gaussian_moments(f, 0.0, q).second + sigma_b2; };
  // d/dq E f(z)^2, z ~ N(0, q), from f(z)^2 - f(0)^2 = D (2 f(0) + D), D = f(z) - f(0).
  const double f0 = activation_value(f, 0.0);
  auto second_slope = [&](double q) {
    const double s = std::sqrt(q);
    double d_m, d_v;
    gaussian_derivatives(
        [&](double t) {
          const double y = activation_step(f, 0.0, s * t);
          return y * (2.0 * f0 + y);
        },
        s, kink_breaks(f, 0.0, s), d_m, d_v);
    return sigma_w2_value * d_v;
  };
  // Iterate the q-map (it follows the network to a stable fixed point), then polish by Newton.
  // Growth is judged against the map's own scale (its value at q = 1), and with a bias q never
  // falls below s_b^2, however small: only without one can it vanish.
  constexpr int kLayers = 300;
  const double first = qmap(1.0);
  const double unbounded = 1e12 * std::max(1.0, std::isfinite(first) ? first : 1.0);
  const bool can_vanish = sigma_b2 == 0.0;
  double q = 1.0;
  for (int it = 0; it < kLayers; ++it) {
    q = qmap(q);
    if (!std::isfinite(q) || q > unbounded) {
      d.note = "no fixed point q*: the second moment grows without bound";
      return d;
    }
    if (can_vanish && q < 1e-12) {
      d.note = "no fixed point q* > 0: the second moment vanishes";
      return d;
    }
  }
  const double q_iterated = q;
  bool settled = false;
  for (int it = 0; it < 60 && !settled; ++it) {
    const double r = qmap(q) - q;
    const double dq = -r / (second_slope(q) - 1.0);
    if (!std::isfinite(dq)) break;
    settled = std::abs(dq) < 1e-13 * q;
    q = std::max(q + dq, 0.5 * q);
  }
  if (!settled || (can_vanish && q < 1e-10)) {
    // Where the iteration was still going says which way: relu with s_b^2 > 0 at s_w^2 = 2 adds
    // s_b^2 per layer (q = 31 after kLayers), relu at s_w^2 = 2 without a bias keeps any q.
    const double step = qmap(q_iterated) - q_iterated;
    char where[64];
    std::snprintf(where, sizeof where, "q = %.6g after %d layers", q_iterated, kLayers);
    if (step > 1e-12 * q_iterated) {
      d.note = std::string("no fixed point q*: the second moment grows without bound, slowly (") + where +
               ", still growing)";
    } else if (step < -1e-12 * q_iterated) {
      d.note = std::string("no fixed point q* > 0: the second moment decreases towards 0, slowly (") + where + ")";
    } else {
      d.note = "no isolated fixed point q*: the q-map is marginal (every q nearby is a fixed point)";
    }
    return d;
  }
  d.found = true;
  d.q_star = q;
  d.slope_q = second_slope(q);
  d.chi = sigma_w2_value * gaussian_moments(f, 0.0, q).deriv_sq;
  // A slope within rounding of 1 is marginal (the linear network): no finite depth scale.
  if (std::abs(d.slope_q) < 1.0 - 1e-9 && d.slope_q != 0.0) d.xi_q = -1.0 / std::log(std::abs(d.slope_q));
  // The stable correlation fixed point c*: 1 when chi <= 1 (ordered phase), below 1 otherwise.
  double c = 1.0;
  if (d.chi > 1.0) {
    // Near c = 0 the map is linear to O(c^2): cmap(c) = cmap(0) + c chi_c(0), with cmap(0) =
    // (s_w^2 (E f)^2 + s_b^2) / q* and chi_c(0) = s_w^2 (E f')^2. With cmap(0) = 0 (an odd
    // activation without a bias) c* = 0; otherwise c* is the root of cmap(c) - c, which is > 0
    // below c* and < 0 just below 1 (slope chi > 1 there), by Brent's method, bracketed near the
    // line's root (taking the line's root itself was off by up to 5e-4 relative for small c*).
    const GaussianMoments g = gaussian_moments(f, 0.0, q);
    const double mean_slope = gaussian_expectation(slope, 0.0, q, k);
    const double c0 = (sigma_w2_value * g.mean * g.mean + sigma_b2) / (sigma_w2_value * g.second + sigma_b2);
    const double slope0 = sigma_w2_value * mean_slope * mean_slope;
    const double linear_root = slope0 < 1.0 ? c0 / (1.0 - slope0) : kInf;
    if (c0 == 0.0) {
      c = 0.0;
    } else {
      auto excess = [&](double x) { return correlation_map(f, q, x, sigma_w2_value, sigma_b2) - x; };
      const double lo = std::min(1e-3, 0.5 * linear_root), hi = 1.0 - 1e-6;
      // The root is usually within a few percent of the line's: bracket it there when 5% on
      // the far side of the line's root changes the sign (two evaluations instead of the
      // interval's ends and the steps in from them), else search all of [lo, hi].
      bool bracketed = false;
      if (linear_root > lo && linear_root < hi) {
        const double g_line = excess(linear_root);
        if (g_line == 0.0) {
          c = linear_root;
          bracketed = true;
        } else {
          const double other = std::clamp(linear_root * (g_line > 0.0 ? 1.05 : 0.95), lo, hi);
          const double g_other = excess(other);
          if ((g_line > 0.0) != (g_other > 0.0)) {
            c = g_line > 0.0 ? brent_root(excess, linear_root, other, g_line, g_other, 1e-12)
                             : brent_root(excess, other, linear_root, g_other, g_line, 1e-12);
            bracketed = true;
          }
        }
      }
      if (!bracketed) {
        const double f_lo = excess(lo), f_hi = excess(hi);
        if (f_lo > 0.0 && f_hi < 0.0) {
          c = brent_root(excess, lo, hi, f_lo, f_hi, 1e-12);
        } else {
          c = f_lo > 0.0 ? hi : lo;  // no sign change: the fixed point is at (or past) that end
        }
      }
    }
  }
  // Slope of the correlation map at c*: s_w^2 E[f'(u1) f'(u2)] (Poole et al. 2016).
  const double chi_c = sigma_w2_value * bivariate_expectation(slope, k, q, c);
  if (chi_c > 0.0 && chi_c < 1.0 - 1e-9) d.xi_c = -1.0 / std::log(chi_c);
  d.c_star = c;
  d.chi_c = chi_c;
  d.note = d.chi > 1.0 ? "chaotic phase (chi > 1): xi_c at the correlation fixed point c* < 1"
                       : "ordered phase (chi <= 1): xi_c at c* = 1";
  return d;
}

}  // namespace selfnorm::theory
