// What to simulate at one configuration point: plain structs with defaults. Their JSON mapping
// lives in sim/io/config.cpp, under the same names (InitSpec::kind is the key init.name), so an
// error path in a message points here.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "core/activations.hpp"

namespace selfnorm {

// Arithmetic of the matrix work. Statistics always accumulate in double.
enum class Precision { float32, float64 };

// Weight initialisers. Each draws W_l (fan_in x fan_out) with E[w^2] - E[w]^2 = scale / fan_in
// unless noted, times InitSpec::weight_variance.
enum class InitKind {
  lecun_normal,      // N(0, 1/fan_in) (LeCun et al. 1998); the SNN paper's choice
  lecun_uniform,     // U(-a, a), a = sqrt(3/fan_in): the same variance as lecun_normal
  he_normal,         // N(0, 2/fan_in) (He et al. 2015)
  glorot_normal,     // N(0, 2/(fan_in + fan_out)) (Glorot, Bengio 2010)
  orthogonal,        // a random (semi-)orthogonal matrix scaled to mean square 1/fan_in (Saxe et al. 2014)
  truncated_normal,  // N(0, s^2) cut at +-2s, s chosen so that the variance is exactly 1/fan_in
};

// The network: widths[0] is the input width, widths[l] the width of layer l (l = 1..depth).
struct NetworkSpec {
  std::vector<std::int64_t> widths;  // depth + 1 entries, each >= 1
  int depth() const { return static_cast<int>(widths.size()) - 1; }
};

// How weights and biases are drawn (Klambauer et al. 2017, section 3, for omega and tau).
struct InitSpec {
  InitKind kind = InitKind::lecun_normal;
  double weight_mean = 0.0;      // expected sum of a unit's incoming weights, the paper's omega; per weight omega/fan_in
  double weight_variance = 1.0;  // multiplies the initialiser's variance: sigma_w^2, the paper's tau under lecun
  double bias_mean = 0.0;        // biases b ~ N(bias_mean, bias_variance); none when both are 0
  double bias_variance = 0.0;
  bool has_bias() const { return bias_mean != 0.0 || bias_variance != 0.0; }
};

enum class InputDistribution { normal, uniform };

// The network's inputs x_0: i.i.d. entries with this mean and variance.
struct InputSpec {
  InputDistribution distribution = InputDistribution::normal;
  double mean = 0.0;
  double variance = 1.0;  // uniform inputs: U(mean - sqrt(3 v), mean + sqrt(3 v))
};

// Alpha dropout after every activation (Klambauer et al. 2017, section 4): a dropped unit is set
// to alpha' = -lambda alpha of the selu in use, then a x + b restores mean and variance.
struct AlphaDropoutSpec {
  double keep_probability = 1.0;  // the paper's q; 1 turns dropout off
  double fixed_point_mean = 0.0;  // mean and variance the affine correction restores
  double fixed_point_variance = 1.0;
  bool enabled() const { return keep_probability < 1.0; }
};

// How many random networks and samples.
struct MonteCarloSpec {
  std::int64_t trials = 8;          // independent networks T
  std::int64_t batch = 256;         // input samples B per network
  bool weight_gradients = false;    // also compute dL/dW_l (one more GEMM per layer)
};

// One configuration point.
struct PointSpec {
  NetworkSpec network;
  Activation activation = Selu{};
  InitSpec init;
  InputSpec input;
  AlphaDropoutSpec alpha_dropout;
  MonteCarloSpec monte_carlo;
  Precision precision = Precision::float32;
};

std::string_view to_string(Precision p);
std::string_view to_string(InitKind k);
std::string_view to_string(InputDistribution d);

}  // namespace selfnorm
