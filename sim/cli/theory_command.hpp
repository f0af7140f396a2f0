// selfnorm theory: the mean-field map, its Jacobian and fixed points, SELU's parameters for a
// chosen fixed point, alpha dropout, and depth scales, as a table or as JSON.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace selfnorm::cli {

struct TheoryArgs {
  std::string verb;                 // map | jacobian | fixed-point | solve | dropout | depth-scales
  std::string activation = "selu";
  std::optional<double> alpha;
  std::optional<double> lambda;
  std::vector<std::string> params;  // NAME=VALUE
  double mu = 0.0, omega = 0.0, nu = 1.0, tau = 1.0;
  double mean = 0.0, var = 1.0;
  double keep = 0.95;
  double weight_variance = 1.0, bias_variance = 0.0;
  bool json = false;
};

int theory_command(const TheoryArgs& args);

}  // namespace selfnorm::cli
