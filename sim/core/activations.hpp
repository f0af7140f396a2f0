// Activation functions: each is a small value type holding its parameters, with its value and
// derivative evaluated together (they share the expensive exponential).
//
// Parameter names and conventions follow PyTorch (torch.nn.functional), so a configuration reads
// like the model it stands for. References:
//   elu:  Clevert, Unterthiner, Hochreiter 2015, "Fast and Accurate Deep Network Learning by ELUs".
//   selu: Klambauer, Unterthiner, Mayr, Hochreiter 2017, "Self-Normalizing Neural Networks", eq. (2).
//   celu: Barron 2017, "Continuously Differentiable Exponential Linear Units", arXiv:1704.07483.
//   gelu: Hendrycks, Gimpel 2016; the exact form x Phi(x) (not the tanh approximation).
//   silu: Elfwing, Uchibe, Doya 2018 (also called swish).
// Every function is safe on the whole real line: no overflow and no NaN for finite input, and
// the exponential is only ever evaluated at non-positive arguments.
// At a kink the derivative takes PyTorch's one-sided value: relu'(0) = 0, elu'(0) = alpha.
#pragma once

#include <array>
#include <cmath>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "core/vmath.hpp"

namespace selfnorm {

// One parameter of an activation: its name (as in PyTorch), default and meaning.
struct ParamInfo {
  std::string_view name;
  double default_value;
  std::string_view meaning;
};

// SELU's fixed-point constants for mean 0 and variance 1 (Klambauer et al. 2017, eq. 14),
// to the 32 digits the paper gives.
inline constexpr double kSeluAlpha01 = 1.6732632423543772848170429916717;
inline constexpr double kSeluLambda01 = 1.0507009873554804934193349852946;

// relu(x) = max(0, x).
struct Relu {
  static constexpr std::string_view name = "relu";
  static constexpr std::string_view formula = "max(0, x)";
  static constexpr std::array<ParamInfo, 0> params{};
  static Relu from(std::array<double, 0>) { return {}; }
  std::array<double, 0> values() const { return {}; }
  template <class T>
  void eval(T x, T& y, T& dy) const {
    y = x < T(0) ? T(0) : x;  // NaN stays NaN: a blow-up must stay visible
    dy = x > T(0) ? T(1) : T(0);
  }
};

// relu6(x) = min(max(0, x), 6).
struct Relu6 {
  static constexpr std::string_view name = "relu6";
  static constexpr std::string_view formula = "min(max(0, x), 6)";
  static constexpr std::array<ParamInfo, 0> params{};
  static Relu6 from(std::array<double, 0>) { return {}; }
  std::array<double, 0> values() const { return {}; }
  template <class T>
  void eval(T x, T& y, T& dy) const {
    y = x < T(0) ? T(0) : (x > T(6) ? T(6) : x);  // NaN stays NaN
    dy = (x > T(0) && x < T(6)) ? T(1) : T(0);
  }
};

// leaky_relu(x) = x for x > 0, negative_slope * x otherwise.
struct LeakyRelu {
  static constexpr std::string_view name = "leaky_relu";
  static constexpr std::string_view formula = "x if x > 0 else negative_slope * x";
  static constexpr std::array<ParamInfo, 1> params{{{"negative_slope", 0.01, "slope for x < 0"}}};
  double negative_slope = 0.01;
  static LeakyRelu from(std::array<double, 1> v) { return {v[0]}; }
  std::array<double, 1> values() const { return {negative_slope}; }
  template <class T>
  void eval(T x, T& y, T& dy) const {
    const T s = static_cast<T>(negative_slope);
    y = x > T(0) ? x : s * x;
    dy = x > T(0) ? T(1) : s;
  }
};

// softplus(x) = log(1 + exp(beta x)) / beta, and x itself where beta x > threshold (as PyTorch).
// Evaluated as (max(z, 0) + log1p(exp(-|z|))) / beta, z = beta x, which cannot overflow.
struct Softplus {
  static constexpr std::string_view name = "softplus";
  static constexpr std::string_view formula = "log(1 + exp(beta x)) / beta; x where beta x > threshold";
  static constexpr std::array<ParamInfo, 2> params{{{"beta", 1.0, "sharpness, > 0"},
                                                    {"threshold", 20.0, "beta x above which softplus(x) = x"}}};
  double beta = 1.0;
  double threshold = 20.0;
  static Softplus from(std::array<double, 2> v) { return {v[0], v[1]}; }
  std::array<double, 2> values() const { return {beta, threshold}; }
  template <class T>
  void eval(T x, T& y, T& dy) const {
    const T b = static_cast<T>(beta);
    const T z = b * x;
    T e;
    const T s = vmath::sigmoid(z, e);  // e = exp(-|z|)
    const T sp = ((z > T(0) ? z : T(0)) + vmath::log1p(e)) / b;
    const bool linear = z > static_cast<T>(threshold);
    y = linear ? x : sp;
    dy = linear ? T(1) : s;
  }
};

// elu(x) = x for x > 0, alpha (exp(x) - 1) otherwise.
struct Elu {
  static constexpr std::string_view name = "elu";
  static constexpr std::string_view formula = "x if x > 0 else alpha * (exp(x) - 1)";
  static constexpr std::array<ParamInfo, 1> params{{{"alpha", 1.0, "saturation value -alpha for x -> -inf"}}};
  double alpha = 1.0;
  static Elu from(std::array<double, 1> v) { return {v[0]}; }
  std::array<double, 1> values() const { return {alpha}; }
  template <class T>
  void eval(T x, T& y, T& dy) const {
    const T a = static_cast<T>(alpha);
    T e, em1;
    vmath::exp_expm1(x > T(0) ? T(0) : x, e, em1);  // NaN stays NaN
    y = x > T(0) ? x : a * em1;
    dy = x > T(0) ? T(1) : a * e;
  }
};

// selu(x) = lambda * (x for x > 0, alpha (exp(x) - 1) otherwise); defaults alpha01, lambda01.
struct Selu {
  static constexpr std::string_view name = "selu";
  static constexpr std::string_view formula = "lambda * (x if x > 0 else alpha * (exp(x) - 1))";
  static constexpr std::array<ParamInfo, 2> params{
      {{"alpha", kSeluAlpha01, "negative-side saturation; default alpha01 = 1.6732632423543772848170429916717 (Klambauer et al. 2017)"},
       {"lambda", kSeluLambda01, "scale; default lambda01 = 1.0507009873554804934193349852946 (Klambauer et al. 2017)"}}};
  double alpha = kSeluAlpha01;
  double lambda = kSeluLambda01;
  static Selu from(std::array<double, 2> v) { return {v[0], v[1]}; }
  std::array<double, 2> values() const { return {alpha, lambda}; }
  template <class T>
  void eval(T x, T& y, T& dy) const {
    const T l = static_cast<T>(lambda);
    const T la = static_cast<T>(lambda * alpha);
    T e, em1;
    vmath::exp_expm1(x > T(0) ? T(0) : x, e, em1);  // NaN stays NaN
    y = x > T(0) ? l * x : la * em1;
    dy = x > T(0) ? l : la * e;
  }
};

// celu(x) = max(0, x) + min(0, alpha (exp(x / alpha) - 1)); alpha > 0. Equals elu at alpha = 1.
struct Celu {
  static constexpr std::string_view name = "celu";
  static constexpr std::string_view formula = "max(0, x) + min(0, alpha * (exp(x / alpha) - 1))";
  static constexpr std::array<ParamInfo, 1> params{{{"alpha", 1.0, "scale of the exponential, > 0"}}};
  double alpha = 1.0;
  static Celu from(std::array<double, 1> v) { return {v[0]}; }
  std::array<double, 1> values() const { return {alpha}; }
  template <class T>
  void eval(T x, T& y, T& dy) const {
    const T a = static_cast<T>(alpha);
    const T inv_a = static_cast<T>(1.0 / alpha);
    T e, em1;
    vmath::exp_expm1((x > T(0) ? T(0) : x) * inv_a, e, em1);
    y = x > T(0) ? x : a * em1;
    dy = x > T(0) ? T(1) : e;
  }
};

// tanh(x), from expm1(-2|x|) so that small x keeps full relative accuracy.
struct Tanh {
  static constexpr std::string_view name = "tanh";
  static constexpr std::string_view formula = "tanh(x)";
  static constexpr std::array<ParamInfo, 0> params{};
  static Tanh from(std::array<double, 0>) { return {}; }
  std::array<double, 0> values() const { return {}; }
  template <class T>
  void eval(T x, T& y, T& dy) const {
    T e, t;
    vmath::exp_expm1(T(-2) * std::abs(x), e, t);  // e = e^{-2|x|}, t = e - 1 in (-1, 0]
    const T d = t + T(2);
    y = std::copysign(-t / d, x);
    dy = T(4) * e / (d * d);  // 1 - tanh^2 = 4 e^{-2|x|} / (1 + e^{-2|x|})^2
  }
};

// sigmoid(x) = 1 / (1 + exp(-x)).
struct Sigmoid {
  static constexpr std::string_view name = "sigmoid";
  static constexpr std::string_view formula = "1 / (1 + exp(-x))";
  static constexpr std::array<ParamInfo, 0> params{};
  static Sigmoid from(std::array<double, 0>) { return {}; }
  std::array<double, 0> values() const { return {}; }
  template <class T>
  void eval(T x, T& y, T& dy) const {
    T e;
    y = vmath::sigmoid(x, e);
    const T s = T(1) / (T(1) + e);
    dy = e * s * s;  // e^{-|x|} / (1 + e^{-|x|})^2, exact in both tails
  }
};

// gelu(x) = x Phi(x) with the exact normal CDF (erf-based), not the tanh approximation.
// With phi(x) = e^{-x^2/2} / sqrt(2 pi), the tail Phi(-|x|) is phi(x) sqrt(pi/2) erfcx(|x| / sqrt 2),
// so the CDF and the derivative Phi(x) + x phi(x) share one exponential, and every step
// vectorises (the C library's erfc, an opaque call per entry, made a width-512 gelu network 1.5x
// as slow as a selu one). A few ulp of T, checked against long double in test_activations.cpp.
struct Gelu {
  static constexpr std::string_view name = "gelu";
  static constexpr std::string_view formula = "x * Phi(x), Phi the standard normal CDF (exact, erf-based)";
  static constexpr std::array<ParamInfo, 0> params{};
  static Gelu from(std::array<double, 0>) { return {}; }
  std::array<double, 0> values() const { return {}; }
  template <class T>
  void eval(T x, T& y, T& dy) const {
    // |x| capped at 40, beyond which phi(x) is 0 in both precisions: the limits stay finite
    // (gelu(-inf) = 0, gelu'(+-inf) = 1 and 0). NaN stays NaN. It is exp_neg_half_square's cap,
    // so that function's clamped form takes xc as it is.
    const T xc = vmath::clamp_keep_nan(std::abs(x), T(0), T(vmath::kHalfSquareCap));
    const T e = vmath::exp_neg_half_square_clamped(xc);
    const T half_erfcx = T(0.5) * vmath::erfcx(xc * T(0.70710678118654752440));
    const T tail = e * half_erfcx;  // Phi(-|x|)
    const T cdf = x < T(0) ? tail : T(1) - tail;
    // For x < 0, |x| e first: x Phi(x) stays a normal number down to x = -37.5 in double, where
    // Phi(x) alone is already subnormal.
    y = x < T(0) ? -((xc * e) * half_erfcx) : x * cdf;
    dy = cdf + std::copysign(xc, x) * (T(0.39894228040143267794) * e);
  }
};

// silu(x) = x sigmoid(x), also called swish.
struct Silu {
  static constexpr std::string_view name = "silu";
  static constexpr std::string_view formula = "x * sigmoid(x)";
  static constexpr std::array<ParamInfo, 0> params{};
  static Silu from(std::array<double, 0>) { return {}; }
  std::array<double, 0> values() const { return {}; }
  template <class T>
  void eval(T x, T& y, T& dy) const {
    T e;
    const T s = vmath::sigmoid(x, e);       // sigmoid(x)
    const T one_minus_s = x >= T(0) ? e * (T(1) / (T(1) + e)) : T(1) / (T(1) + e);  // sigmoid(-x)
    y = x * s;
    dy = s * (T(1) + x * one_minus_s);
  }
};

// identity(x) = x: the linear network, a baseline.
struct Identity {
  static constexpr std::string_view name = "identity";
  static constexpr std::string_view formula = "x";
  static constexpr std::array<ParamInfo, 0> params{};
  static Identity from(std::array<double, 0>) { return {}; }
  std::array<double, 0> values() const { return {}; }
  template <class T>
  void eval(T x, T& y, T& dy) const {
    y = x;
    dy = T(1);
  }
};

// Any activation selfnorm offers.
using Activation =
    std::variant<Relu, Relu6, LeakyRelu, Softplus, Elu, Selu, Celu, Tanh, Sigmoid, Gelu, Silu, Identity>;

// What a user needs to know about one activation: for listings and config validation.
struct ActivationInfo {
  std::string_view name;
  std::string_view formula;
  std::span<const ParamInfo> params;
  std::vector<std::string_view> aliases;
};

// All activations in a fixed order (the variant's order).
const std::vector<ActivationInfo>& activation_catalog();

// Finds an activation by name or alias ("swish" is silu); nullptr if unknown.
const ActivationInfo* find_activation(std::string_view name);

// Every parameter name of any activation, each once, in the catalog's order (alpha, lambda, ...).
const std::vector<std::string>& activation_param_names();

// Problems with parameter values for the named activation, one message per bad parameter
// naming it, e.g. "alpha must be > 0 ...". `values` follow the order of ActivationInfo::params.
std::vector<std::pair<std::string, std::string>> check_activation_params(std::string_view name,
                                                                         std::span<const double> values);

// Builds an activation from its name and parameter values (in ActivationInfo::params order).
// Throws std::invalid_argument naming the problem if the name or values are invalid.
Activation make_activation(std::string_view name, std::span<const double> values);

// The canonical name of an activation.
std::string_view activation_name(const Activation& activation);

// Parameter values of an activation, in ActivationInfo::params order.
std::vector<double> activation_values(const Activation& activation);

// Evaluates y = f(x) and dy = f'(x) in double; for tests and theory, not for hot loops.
void evaluate(const Activation& activation, double x, double& y, double& dy);
// f(x) alone, and f'(x) alone, by evaluate.
double activation_value(const Activation& activation, double x);
double activation_slope(const Activation& activation, double x);

}  // namespace selfnorm
