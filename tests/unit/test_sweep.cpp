// Sweeps: expansion order and shape, value forms, dataset names, and their error messages.
#include <catch2/catch.hpp>

#include <cmath>

#include "config_helpers.hpp"
#include "io/config.hpp"
#include "io/shards.hpp"
#include "io/sweep.hpp"

using namespace selfnorm;
using namespace selfnorm::io;

namespace {

Experiment parse(const std::string& text) { return parse_experiment(text, "sweep.json", "sweep"); }

std::vector<std::string> problems(const std::string& text) {
  return test::config_problems(text, "sweep.json", "sweep");
}

double alpha_of(const ConfigPoint& p) { return std::get<Selu>(p.spec.activation).alpha; }
double lambda_of(const ConfigPoint& p) { return std::get<Selu>(p.spec.activation).lambda; }

}  // namespace

TEST_CASE("a grid is the cartesian product in C order", "[sweep]") {
  const Experiment ex = parse(R"({"network": {"depth": 2, "width": 4}, "sweep": {"grid": {
      "activation.alpha": [1.5, 1.6, 1.7], "activation.lambda": {"linspace": [1.0, 1.1, 2]}}}})");
  REQUIRE(ex.points.size() == 6);
  CHECK(ex.grid_shape == std::vector<std::int64_t>{3, 2});
  // The first key varies slowest: alpha_var[point, layer] reshapes to [alpha, lambda, layer].
  const double alphas[] = {1.5, 1.5, 1.6, 1.6, 1.7, 1.7};
  const double lambdas[] = {1.0, 1.1, 1.0, 1.1, 1.0, 1.1};
  for (std::size_t p = 0; p < 6; ++p) {
    CHECK(alpha_of(ex.points[p]) == alphas[p]);
    CHECK(lambda_of(ex.points[p]) == lambdas[p]);
  }
  REQUIRE(ex.varied.size() == 2);
  CHECK(ex.varied[0].key == "activation.alpha");
  CHECK(ex.varied[0].dataset == "alpha");
  CHECK(ex.varied[1].dataset == "lambda");
  CHECK(ex.varied[0].axis == 0);
  CHECK(ex.varied[1].axis == 1);
  CHECK(ex.points[3].varied_values[0].get<double>() == 1.6);
}

TEST_CASE("linspace and logspace include their end points exactly", "[sweep]") {
  const Experiment ex = parse(R"({"network": {"depth": 1, "width": 2}, "sweep": {"grid": {
      "init.weight_variance": {"linspace": [0.5, 2.0, 4]}}}})");
  REQUIRE(ex.points.size() == 4);
  CHECK(ex.points[0].spec.init.weight_variance == 0.5);
  CHECK(ex.points[1].spec.init.weight_variance == 1.0);
  CHECK(ex.points[3].spec.init.weight_variance == 2.0);
  CHECK(ex.varied[0].dataset == "init_weight_variance");
  const Experiment lg = parse(R"({"network": {"depth": 1, "width": 2}, "sweep": {"grid": {
      "input.variance": {"logspace": [-1, 1, 3]}, "monte_carlo.batch": {"logspace": [4, 6, 3], "base": 2}}}})");
  REQUIRE(lg.points.size() == 9);
  CHECK(lg.points[0].spec.input.variance == Approx(0.1));
  CHECK(lg.points[8].spec.input.variance == 10.0);
  CHECK(lg.points[0].spec.monte_carlo.batch == 16);
  CHECK(lg.points[2].spec.monte_carlo.batch == 64);
}

TEST_CASE("zip varies its keys together, as one more axis", "[sweep]") {
  const Experiment ex = parse(R"({"activation": ["selu", "tanh"], "sweep": {
      "zip": {"network.depth": [4, 8, 16], "network.width": [64, 32, 16]},
      "grid": {"monte_carlo.trials": [2, 3]}}})");
  // Axes: the activation list, then the grid keys, then the zip.
  CHECK(ex.grid_shape == std::vector<std::int64_t>{2, 2, 3});
  REQUIRE(ex.points.size() == 12);
  CHECK(activation_name(ex.points[0].spec.activation) == "selu");
  CHECK(activation_name(ex.points[6].spec.activation) == "tanh");
  CHECK(ex.points[0].spec.monte_carlo.trials == 2);
  CHECK(ex.points[3].spec.monte_carlo.trials == 3);
  CHECK(ex.points[1].spec.network.depth() == 8);
  CHECK(ex.points[1].spec.network.widths.front() == 32);
  std::vector<std::string> names;
  for (const auto& v : ex.varied) names.push_back(v.dataset);
  CHECK(names == std::vector<std::string>{"activation", "monte_carlo_trials", "depth", "width", "alpha", "lambda"});
  // Each varied key names the axis it varies along: zipped keys share one, and the parameters
  // that differ between the listed activations vary along the activation list's axis.
  std::vector<std::int64_t> axes;
  for (const auto& v : ex.varied) axes.push_back(v.axis);
  CHECK(axes == std::vector<std::int64_t>{0, 1, 2, 2, 0, 0});
}

TEST_CASE("sweeping the activation name takes each activation's own defaults", "[sweep]") {
  const Experiment ex = parse(R"({"network": {"depth": 1, "width": 2},
      "sweep": {"grid": {"activation.name": ["relu", "elu", "selu"]}}})");
  REQUIRE(ex.points.size() == 3);
  CHECK(std::get<Elu>(ex.points[1].spec.activation).alpha == 1.0);
  CHECK(std::get<Selu>(ex.points[2].spec.activation).alpha == kSeluAlpha01);
  CHECK(ex.points[0].varied_values[1].is_null());  // relu: no alpha
  for (const auto& v : ex.varied) CHECK(v.axis == 0);
}

TEST_CASE("a resolved config reproduces its experiment and hash", "[sweep]") {
  const Experiment ex = parse(R"({"name": "r", "seed": 5, "activation": ["selu", {"name": "celu", "alpha": 2}],
      "network": {"depth": 2, "width": 4},
      "sweep": {"grid": {"network.width": [4, 8]}, "zip": {"init.bias_variance": [0, 0.1]}}})");
  const Experiment again = parse_experiment(ex.resolved.dump(), "resolved.json", "other");
  CHECK(again.hash == ex.hash);
  CHECK(again.name == "r");
  REQUIRE(again.points.size() == ex.points.size());
  for (std::size_t p = 0; p < ex.points.size(); ++p) CHECK(again.points[p].resolved == ex.points[p].resolved);
}

TEST_CASE("sweep errors name the key, the point and the remedy", "[sweep][errors]") {
  CHECK(problems(R"({"sweep": {}})") ==
        std::vector<std::string>{"sweep: is empty; give \"grid\": {key: values, ...} and/or \"zip\": {key: values, ...}"});
  CHECK(problems(R"({"sweep": {"grid": {"activation.alpha": []}}})") ==
        std::vector<std::string>{"sweep.grid.activation.alpha: empty list; give at least one value"});
  CHECK(problems(R"({"sweep": {"zip": {"network.depth": [1, 2], "network.width": [8, 16, 32]}}})") ==
        std::vector<std::string>{"sweep.zip: lists of different lengths (network.depth has 2, network.width has 3); "
                                 "zip varies its keys together, so every list needs the same length (use \"grid\" "
                                 "for all combinations)"});
  CHECK(problems(R"({"sweep": {"grid": {"network.widht": [8]}}})") ==
        std::vector<std::string>{"sweep.grid.network.widht: is not a config key that can be swept; did you mean "
                                 "'network.width'? (keys are dotted paths such as activation.alpha, network.depth, "
                                 "init.weight_variance)"});
  CHECK(problems(R"({"sweep": {"grid": {"seed": [1, 2]}}})") ==
        std::vector<std::string>{"sweep.grid.seed: cannot be swept: 'seed' names or places the whole experiment (a "
                                 "point's seed is derived from the experiment seed and the point index)"});
  CHECK(problems(R"({"sweep": {"grid": {"network.depth": [2]}, "zip": {"network.depth": [3]}}})") ==
        std::vector<std::string>{"sweep.zip.network.depth: is swept twice; sweep each key in one place"});
  // activation.name beside a list of activations would rename the list's entries, keeping their
  // parameters, and run neither list as written.
  CHECK(problems(R"({"activation": ["relu", "selu"], "sweep": {"grid": {"activation.name": ["elu", "celu"]}}})") ==
        std::vector<std::string>{"sweep.grid.activation.name: conflicts with the list of activations in \"activation\"; "
                                 "name the activations in one place, the list or the sweep"});
  CHECK(problems(R"({"sweep": {"grid": {"activation": ["relu"]}, "zip": {"activation.name": ["elu"]}}})") ==
        std::vector<std::string>{"sweep.zip.activation.name: sweeps the activation a second time (as activation and "
                                 "activation.name); sweep it in one place"});
  // A problem the sweep makes at every point says so.
  CHECK(problems(R"({"network": {"depth": 2, "width": 4}, "sweep": {"grid": {"network.widths": [[4, 4, 4]]}}})") ==
        std::vector<std::string>{"network.width: give either 'width' (all layers) or 'widths' (per layer), not both "
                                 "[every sweep point sets network.widths]"});
  // A whole section as a value would drop the base section's other keys (here the width).
  CHECK(problems(R"({"network": {"width": 4}, "sweep": {"grid": {"network": [{"depth": 2}, {"depth": 3}]}}})") ==
        std::vector<std::string>{"sweep.grid.network: cannot be swept as a whole section: each value would replace "
                                 "every key of 'network' it does not give; sweep its keys (such as network.depth), "
                                 "with \"zip\" to vary several together"});
  CHECK(problems(R"({"sweep": {"grid": {"activation.alpha": {"linspace": [1, 2]}}}})") ==
        std::vector<std::string>{"sweep.grid.activation.alpha.linspace: must be [start, stop, num] with numbers, got "
                                 "[1,2]"});
  CHECK(problems(R"({"sweep": {"grdi": {}}})") ==
        std::vector<std::string>{"sweep.grdi: unknown key; did you mean 'grid'? (valid keys: grid, zip)",
                                 "sweep: is empty; give \"grid\": {key: values, ...} and/or \"zip\": {key: values, "
                                 "...}"});
  // Ranges whose values overflow a double, and grids too large to hold (the count must not wrap).
  CHECK(problems(R"({"sweep": {"grid": {"init.weight_variance": {"logspace": [0, 400, 3]}}}})") ==
        std::vector<std::string>{"sweep.grid.init.weight_variance.logspace: base**400 = 10**400 overflows a double (the "
                                 "largest is about 1.8e308), got [0,400,3]; choose smaller ends"});
  CHECK(problems(R"({"sweep": {"grid": {"input.mean": {"linspace": [-1e308, 1e308, 3]},
                                         "input.variance": [-1]}}})") ==
        std::vector<std::string>{"input.variance: must be >= 0, got -1 [every sweep point sets input.variance]"});
  CHECK(problems(R"({"sweep": {"grid": {"input.mean": {"linspace": [0, 1, 65536]}, "input.variance": {"linspace":
      [0, 1, 65536]}, "init.bias_mean": {"linspace": [0, 1, 65536]}, "init.bias_variance": {"linspace": [0, 1,
      65536]}}}})") ==
        std::vector<std::string>{"sweep: has 65536 x 65536 x 65536 x 65536 points, more than the 100000 supported "
                                 "(each point is validated and kept in memory before the run); split it into several "
                                 "configs, or use fewer values per axis"});
  CHECK(problems(R"({"network": {"depth": 100000}, "sweep": {"grid": {"input.mean": {"linspace": [0, 1, 1000]}}}})") ==
        std::vector<std::string>{"sweep: its points have more than 20000000 layers in all (1000 points, 100000 layers at "
                                 "point 199), more than this program holds in memory; split the sweep into several "
                                 "configs"});
  // Values that are wrong at some points only: each names its point; one problem found at
  // several points names the first and counts the others.
  CHECK(problems(R"({"activation": "celu", "sweep": {"grid": {"activation.alpha": [1, 0, -1]}}})") ==
        std::vector<std::string>{"activation.alpha: must be > 0 (celu computes exp(x / alpha); as alpha -> 0 it tends "
                                 "to relu, so use \"relu\" for that limit), got 0 [at sweep point 1: "
                                 "activation.alpha=0]",
                                 "activation.alpha: must be > 0 (celu computes exp(x / alpha); as alpha -> 0 it tends "
                                 "to relu, so use \"relu\" for that limit), got -1 [at sweep point 2: "
                                 "activation.alpha=-1]"});
  CHECK(problems(R"({"sweep": {"grid": {"network.depth": [2, 0], "activation.alpha": [1, 2]}}})") ==
        std::vector<std::string>{"network.depth: must be an integer >= 1, got 0 [at sweep point 2: network.depth=0, "
                                 "activation.alpha=1, and 1 more]"});
  // A problem of the base config appears once, not once per point.
  CHECK(problems(R"({"network": {"depth": 0}, "sweep": {"grid": {"activation.alpha": [1, 2]}}})") ==
        std::vector<std::string>{"network.depth: must be an integer >= 1, got 0"});
}

TEST_CASE("shards deal points round-robin", "[shards]") {
  CHECK(shard_points(10, ShardInfo{0, 3}) == std::vector<std::int64_t>{0, 3, 6, 9});
  CHECK(shard_points(10, ShardInfo{2, 3}) == std::vector<std::int64_t>{2, 5, 8});
  CHECK(shard_points(2, ShardInfo{3, 5}).empty());
  CHECK(shard_points(3, std::nullopt) == std::vector<std::int64_t>{0, 1, 2});
  // Every point in exactly one shard.
  std::vector<int> seen(23, 0);
  for (std::int64_t k = 0; k < 4; ++k) {
    for (auto p : shard_points(23, ShardInfo{k, 4})) ++seen[static_cast<std::size_t>(p)];
  }
  CHECK(std::all_of(seen.begin(), seen.end(), [](int c) { return c == 1; }));
  CHECK(array_spec({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8");
  CHECK(array_spec({4}) == "4");
  CHECK(array_spec({}).empty());
}
