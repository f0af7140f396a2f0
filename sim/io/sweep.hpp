// Sweeps: the points of an experiment as overrides of dotted config keys.
//
//   "sweep": {
//     "grid": {"activation.alpha": [1.5, 1.6, 1.7], "activation.lambda": {"linspace": [1.0, 1.1, 5]}},
//     "zip":  {"network.depth": [8, 16, 32], "monte_carlo.batch": [512, 256, 128]}
//   }
//
// Each grid key is an axis; the zip keys vary together as one more axis; points are the cartesian
// product in C order (the first axis varies slowest), so a [point] array reshapes to the grid's
// shape. A list of activations in "activation" is an axis of its own, before the others.
// Values are lists, {"linspace": [start, stop, num]} or {"logspace": [start, stop, num]} (powers of
// "base", default 10, as numpy.logspace).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/config.hpp"

namespace selfnorm::io {

struct SweepPointPlan {
  std::vector<std::pair<std::string, nlohmann::ordered_json>> overrides;  // dotted key -> value
  std::string activation_path;  // "activation[i]" when the point comes from an activation list
  std::string label;            // "activation.alpha=1.5, activation.lambda=1", for messages
};

struct SweepPlan {
  std::vector<SweepPointPlan> points;     // at least one (no sweep: one point, no overrides)
  std::vector<std::string> swept_keys;    // every key the plan sets, axis by axis
  std::vector<std::int64_t> swept_axes;   // the axis (index into grid_shape) of each swept key
  std::vector<std::int64_t> grid_shape;   // one entry per axis; empty without a sweep
  nlohmann::ordered_json resolved_sweep;  // the sweep section with every value list expanded
  bool activation_list = false;
};

// Reads the sweep section and the activation list of a config. Problems go to `issues`.
SweepPlan plan_sweep(const nlohmann::ordered_json& root, std::vector<ConfigIssue>& issues);

// A swept value as the points' labels show it: a float to 6 significant digits, a string bare,
// anything else as JSON.
std::string format_value(const nlohmann::ordered_json& v);

// Sets j's value at a dotted path, creating objects on the way.
void set_dotted(nlohmann::ordered_json& j, std::string_view key, const nlohmann::ordered_json& value);

// The value at a dotted path, or null.
nlohmann::ordered_json get_dotted(const nlohmann::ordered_json& j, std::string_view key);

// The keys that become result datasets: the swept keys, and for activation sweeps every
// activation parameter whose value is not the same at all points (on the activation's axis).
std::vector<VariedKey> varied_keys(const SweepPlan& plan, const std::vector<nlohmann::ordered_json>& resolved_points);

// Dataset name for a dotted key: "activation.name" -> "activation", "activation.alpha" -> "alpha",
// "network.depth" -> "depth", otherwise dots become underscores ("init.weight_variance" ->
// "init_weight_variance").
std::string dataset_name(std::string_view key);

}  // namespace selfnorm::io
