// Mean-field theory of signal propagation: Gaussian expectations of activations, the SNN paper's
// mean/variance map with its Jacobian and fixed points, the (alpha, lambda) that produce a chosen
// fixed point, alpha dropout, and the infinite-width layer recursion for random networks.
//
// Glossary (Klambauer et al. 2017, section 3; Poole et al. 2016; Schoenholz et al. 2017):
//   mu, nu     mean and variance of the lower layer's activations
//   omega, tau sum and sum of squares of a unit's incoming weights; "normalised weights" means
//              omega = 0, tau = 1. The map is z ~ N(mu omega, nu tau), mu~ = E f(z), nu~ = Var f(z).
//   q          second moment E[x^2] of the activations; with random weights W ~ N(omega/n, s_w^2/n)
//              the pre-activation of the next layer is N(omega mu + b_mean, s_w^2 q + s_b^2)
//              at infinite width, which is the recursion the engine is compared with.
//   chi        s_w^2 E[f'(z)^2]: the factor by which the mean square of dL/dx grows per layer
//              going backwards (Schoenholz et al. 2017, eq. 5).
//   xi_q, xi_c depth scales of the approach of q to its fixed point and of the correlation between
//              two inputs to 1 (Schoenholz et al. 2017): xi = -1 / log |slope of the map|.
// Gaussian expectations are computed in closed form where one exists (the relu family by moments
// of the truncated normal, the exponential family by E[e^{cz}; z < 0] = e^{cm + c^2 v / 2}
// Phi(-(m + c v) / sqrt v)), otherwise by adaptive Gauss-Kronrod quadrature split at the kinks.
#pragma once

#include <array>
#include <complex>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "core/activations.hpp"
#include "core/spec.hpp"

namespace selfnorm::theory {

// E[f(z)], E[f(z)^2] and E[f'(z)^2] for z ~ N(m, v).
struct GaussianMoments {
  double mean = 0.0;
  double second = 0.0;
  double deriv_sq = 0.0;
};

// By the closed form where the activation has one and it keeps its digits, else by quadrature.
// The closed forms cancel where a kink is more than kClosedFormRange standard deviations from m,
// where two kinks are closer than kClosedFormSpacing standard deviations (relu6 at v > 3.6e5), and
// where the exponential of elu, selu or celu is nearly linear over the Gaussian's negative side:
// its scale (1, or celu's alpha) beyond 1 / kClosedFormSpacing times sqrt v + max(-m, 0). v >= 0.
GaussianMoments gaussian_moments(const Activation& f, double m, double v);
// By the closed form (quadrature for activations without one); accurate to ~1e-13 relative where
// gaussian_moments chooses it, cancelling beyond (the three cases above).
GaussianMoments gaussian_moments_closed(const Activation& f, double m, double v);
inline constexpr double kClosedFormRange = 8.0;
inline constexpr double kClosedFormSpacing = 1e-2;
// Always by quadrature (split at the activation's kinks), relative accuracy about 1e-13.
GaussianMoments gaussian_moments_quadrature(const Activation& f, double m, double v);
// True if gaussian_moments uses a closed form for this activation.
bool has_closed_form(const Activation& f);

// Var f(z) for z ~ N(m, v). Where E f^2 and (E f)^2 agree to a digit or more (f nearly constant
// over the Gaussian's bulk: selu saturated at its floor, tanh at +-1, relu with m >> sqrt v),
// E f^2 - (E f)^2 would lose those digits; there it is the central moment of f(z) - f(m), with
// activation_step, by quadrature. `g` is gaussian_moments(f, m, v).
double gaussian_variance(const Activation& f, double m, double v, const GaussianMoments& g);

// f(m + d) - f(m), from the step's own terms, without the cancellation of f's two nearly equal
// values: d on a linear piece, lambda alpha e^m expm1(d) on selu's exponential one,
// sinh(d) / (cosh(m + d) cosh(m)) for tanh and so sigmoid, log1p forms for softplus,
// d Phi(m + d) + m (Phi(m + d) - Phi(m)) for gelu (the difference by quadrature of phi over the
// step) and likewise for silu. Across a kink it is the plain difference of f's values.
double activation_step(const Activation& f, double m, double d);

// E[h(z)] for z ~ N(m, v) by adaptive Gauss-Kronrod quadrature, the real line split at `kinks`
// (points where h is not smooth).
double gaussian_expectation(const std::function<double(double)>& h, double m, double v,
                            std::span<const double> kinks = {});

// Points where the activation is not smooth (0 for relu, 0 and 6 for relu6, softplus's switch to
// x at its threshold, ...).
std::vector<double> kinks(const Activation& f);

// The SNN map g(mu, omega, nu, tau) -> (mu~, nu~) (Klambauer et al. 2017, eq. 3-4).
struct MapValue {
  double mu = 0.0;
  double nu = 0.0;
};
MapValue snn_map(const Activation& f, double mu, double omega, double nu, double tau);

// The Jacobian of the map with respect to (mu, nu) at fixed (omega, tau), its eigenvalues and
// spectral norm (largest singular value).
struct Jacobian {
  std::array<std::array<double, 2>, 2> j{};  // j[row][col], rows (mu~, nu~), cols (mu, nu)
  std::array<std::complex<double>, 2> eigenvalues{};
  double spectral_norm = 0.0;
  double spectral_radius = 0.0;
};
Jacobian snn_jacobian(const Activation& f, double mu, double omega, double nu, double tau);

// A fixed point (mu*, nu*) = g(mu*, omega, nu*, tau) with its stability, or the reason there is
// none with nu* > 0.
struct FixedPoint {
  bool found = false;
  double mu = 0.0;
  double nu = 0.0;
  Jacobian jacobian;
  bool stable = false;  // spectral radius of the Jacobian < 1
  int iterations = 0;
  std::string note;     // why there is no fixed point, or how it was found
};
FixedPoint snn_fixed_point(const Activation& f, double omega, double tau, double mu_start = 0.0,
                           double nu_start = 1.0);

// SELU's (alpha, lambda) whose map has the fixed point (mean, variance) for weights with the
// given (omega, tau). The paper's convention, used by default, is normalised weights: omega = 0,
// tau = 1, so z ~ N(0, variance). The official notebook instead puts the target into z directly,
// z ~ N(mean, variance), which is omega = tau = 1; both agree for mean 0.
struct SeluSolution {
  bool found = false;
  double alpha = 0.0;
  double lambda = 0.0;
  std::string note;
};
SeluSolution solve_selu(double mean, double variance, double omega = 0.0, double tau = 1.0);

// Alpha dropout's affine correction (a, b) for keep probability q, so that dropped units set to
// alpha_prime (-lambda alpha for selu) and then a x + b keep mean and variance (section 4).
struct DropoutAffine {
  double a = 1.0;
  double b = 0.0;
  double alpha_prime = 0.0;
};
DropoutAffine alpha_dropout(double keep, double alpha_prime, double mean, double variance);

// The infinite-width prediction of every per-layer statistic the engine measures, for one point.
// Index l - 1 holds layer l. unit_mean_spread has no prediction (NaN).
struct LayerPrediction {
  std::vector<double> preactivation_mean, preactivation_var;
  std::vector<double> activation_mean, activation_var, activation_msq;
  std::vector<double> grad_activation_msq, grad_preactivation_msq, grad_weight_msq;
  std::vector<double> chi;  // s_w^2 (n_l / n_{l-1}) E[f'(z_l)^2] per layer (times q a^2 with alpha dropout)
};
LayerPrediction predict_layers(const PointSpec& spec);

// The weight variance s_w^2 (in units of 1/fan_in) of layer l's initialiser.
double sigma_w2(const InitSpec& init, std::int64_t fan_in, std::int64_t fan_out);

// Depth scales of a uniform-width random network with weight variance s_w^2 / n and bias
// variance s_b^2 (zero-mean weights): the fixed point q* of q -> s_w^2 E f(z)^2 + s_b^2,
// z ~ N(0, q), its slope, chi = s_w^2 E f'(z*)^2, the correlation map's fixed point c* and its slope
// chi_c there, and the depth scales xi_q = -1/log|slope| (where |slope| < 1) and xi_c = -1/log chi_c
// (where 0 < chi_c < 1; chi_c = chi in the ordered phase, where c* = 1), NaN elsewhere and where
// there is no fixed point q* > 0.
struct DepthScales {
  bool found = false;
  double q_star = 0.0;
  double slope_q = 0.0;
  double chi = 0.0;
  double c_star = 1.0;  // the stable fixed point of the correlation map
  double chi_c = 0.0;   // slope of the correlation map at c*
  double xi_q = 0.0;  // NaN where undefined
  double xi_c = 0.0;  // NaN where undefined
  std::string note;
};
DepthScales depth_scales(const Activation& f, double sigma_w2, double sigma_b2);

// E[h(u1) h(u2)] for (u1, u2) jointly normal, each N(0, q), with correlation c; h has kinks at `k`.
double bivariate_expectation(const std::function<double(double)>& h, const std::vector<double>& k, double q, double c);

// The correlation map: correlation of the next layer's pre-activations for two inputs whose
// pre-activations have variance q and correlation c (Poole et al. 2016, eq. 5).
double correlation_map(const Activation& f, double q, double c, double sigma_w2, double sigma_b2);

}  // namespace selfnorm::theory
