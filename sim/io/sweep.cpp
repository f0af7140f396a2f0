#include "io/sweep.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <set>

namespace selfnorm::io {

using json = nlohmann::ordered_json;

namespace {

// Keys a sweep may set, section by section.
const std::vector<std::pair<std::string, std::vector<std::string>>>& sweepable() {
  static const std::vector<std::pair<std::string, std::vector<std::string>>> keys = [] {
    std::vector<std::string> act = {"name"};
    act.insert(act.end(), activation_param_names().begin(), activation_param_names().end());
    return std::vector<std::pair<std::string, std::vector<std::string>>>{
        {"precision", {}},
        {"network", {"depth", "width", "widths"}},
        {"activation", act},
        {"init", {"name", "weight_mean", "weight_variance", "bias_mean", "bias_variance"}},
        {"input", {"distribution", "mean", "variance"}},
        {"alpha_dropout", {"keep_probability", "fixed_point_mean", "fixed_point_variance"}},
        {"monte_carlo", {"trials", "batch", "weight_gradients"}},
    };
  }();
  return keys;
}

std::vector<std::string> all_sweepable_keys() {
  std::vector<std::string> out;
  for (const auto& [section, keys] : sweepable()) {
    // A section with keys is swept key by key (check_key says why); activation is the exception.
    if (keys.empty() || section == "activation") out.push_back(section);
    for (const auto& k : keys) out.push_back(section + "." + k);
  }
  return out;
}

// Empty if `key` can be swept, else the reason.
std::string check_key(const std::string& key) {
  for (const auto& [section, keys] : sweepable()) {
    if (key == section && !keys.empty() && section != "activation") {
      // A whole section as the value would drop every key of the base section it does not give.
      std::string example = section + "." + keys.front();
      return "cannot be swept as a whole section: each value would replace every key of '" + section +
             "' it does not give; sweep its keys (such as " + example + "), with \"zip\" to vary several together";
    }
  }
  const auto all = all_sweepable_keys();
  if (std::find(all.begin(), all.end(), key) != all.end()) return {};
  for (const char* whole : {"device", "cuda"}) {
    if (key == whole || key.rfind(std::string(whole) + ".", 0) == 0) {
      return "cannot be swept: '" + std::string(whole) + "' chooses where the whole experiment runs; run the "
             "config once per device (or with --device)";
    }
  }
  for (const char* fixed : {"name", "description", "seed", "output", "sweep"}) {
    if (key == fixed || key.rfind(std::string(fixed) + ".", 0) == 0) {
      return "cannot be swept: '" + std::string(fixed) +
             "' names or places the whole experiment (a point's seed is derived from the experiment seed and "
             "the point index)";
    }
  }
  std::string msg = "is not a config key that can be swept";
  const std::string near = nearest_key(key, all);
  if (!near.empty()) msg += "; did you mean '" + near + "'?";
  return msg + " (keys are dotted paths such as activation.alpha, network.depth, init.weight_variance)";
}

// Expands one value specification into its list of values; records problems at `path`.
std::vector<json> expand_values(const json& spec, const std::string& path, std::vector<ConfigIssue>& issues) {
  if (spec.is_array()) {
    if (spec.empty()) issues.push_back({path, "empty list; give at least one value"});
    return std::vector<json>(spec.begin(), spec.end());
  }
  if (spec.is_object() && (spec.contains("linspace") || spec.contains("logspace"))) {
    const bool log = spec.contains("logspace");
    const std::string form = log ? "logspace" : "linspace";
    for (const auto& [k, v] : spec.items()) {
      if (k != form && !(log && k == "base")) {
        issues.push_back({path + "." + k, "unknown key in a " + form + " (valid: " + form + (log ? ", base" : "") + ")"});
      }
    }
    const json& a = spec.at(form);
    const bool shape_ok = a.is_array() && a.size() == 3 && a[0].is_number() && a[1].is_number() && a[2].is_number();
    if (!shape_ok) {
      issues.push_back({path + "." + form, "must be [start, stop, num] with numbers, got " + a.dump()});
      return {};
    }
    const double start = a[0].get<double>();
    const double stop = a[1].get<double>();
    const double numd = a[2].get<double>();
    if (!std::isfinite(start) || !std::isfinite(stop)) {
      issues.push_back({path + "." + form, "start and stop must be finite, got " + a.dump()});
      return {};
    }
    if (!(numd >= 1) || numd != std::floor(numd) || numd > 1e6) {
      issues.push_back({path + "." + form, "num must be an integer in [1, 1000000], got " + a[2].dump()});
      return {};
    }
    double base = 10.0;
    if (log && spec.contains("base")) {
      const json& b = spec.at("base");
      if (!b.is_number() || !(b.get<double>() > 0)) {
        issues.push_back({path + ".base", "must be a number > 0, got " + b.dump()});
        return {};
      }
      base = b.get<double>();
    }
    const auto num = static_cast<std::int64_t>(numd);
    // stop - start overflows for ends near +-1.8e308; the weighted form is then used instead (it
    // would change the last bits of ordinary sweeps, so only then).
    const bool span_finite = std::isfinite(stop - start);
    std::vector<json> values;
    for (std::int64_t i = 0; i < num; ++i) {
      const double f = static_cast<double>(i) / static_cast<double>(std::max<std::int64_t>(num - 1, 1));
      const double t = num == 1 ? start
                                : (i == num - 1 ? stop
                                                : (span_finite ? start + (stop - start) * static_cast<double>(i) /
                                                                             static_cast<double>(num - 1)
                                                               : start * (1.0 - f) + stop * f));
      const double value = log ? std::pow(base, t) : t;
      if (!std::isfinite(value)) {
        char buf[96];
        if (log) {
          std::snprintf(buf, sizeof buf, "base**%.17g = %.17g**%.17g", t, base, t);
        } else {
          std::snprintf(buf, sizeof buf, "value %d", static_cast<int>(i));
        }
        issues.push_back({path + "." + form, std::string(buf) + " overflows a double (the largest is about "
                                             "1.8e308), got " + a.dump() + "; choose smaller ends"});
        return {};
      }
      values.emplace_back(value);
    }
    return values;
  }
  issues.push_back({path, "must be a list of values, {\"linspace\": [start, stop, num]} or "
                          "{\"logspace\": [start, stop, num]}, got " + spec.dump()});
  return {};
}

struct Axis {
  std::vector<std::string> keys;
  std::vector<std::vector<json>> values;  // values[k][i]: key k at index i
  std::string path;                       // "activation[{}]" for an activation list
  std::string where;                      // where the config gives it: "activation", "sweep.grid.KEY", "sweep.zip"
  std::size_t size() const { return values.empty() ? 0 : values.front().size(); }
};

// A problem for the first entry of `axis` that repeats an earlier one, or "": it would make the
// same points twice, and give a grid coordinate two places (xarray's sel would return both).
// Numbers compare by value (1 and 1.0 are one value).
std::optional<ConfigIssue> repeated_entry(const Axis& axis) {
  std::map<std::string, std::size_t> first;
  for (std::size_t i = 0; i < axis.size(); ++i) {
    json entry = json::array();
    for (const auto& values : axis.values) {
      entry.push_back(values[i].is_number() ? json(values[i].get<double>()) : values[i]);
    }
    const auto [it, inserted] = first.emplace(entry.dump(), i);
    if (inserted) continue;
    std::string what;
    for (std::size_t k = 0; k < axis.keys.size(); ++k) {
      const json& v = axis.values[k][i];
      const json shown = axis.path.empty() || !v.is_object() ? v : v.value("name", json("?"));
      what += (k ? ", " : "") + (axis.keys.size() > 1 ? axis.keys[k] + "=" : std::string()) + format_value(shown);
    }
    return ConfigIssue{axis.where, what + " is listed twice (at " + std::to_string(it->second) + " and " +
                                       std::to_string(i) + "), which would make the same points twice; list each " +
                                       (!axis.path.empty() ? "activation" : axis.keys.size() > 1 ? "combination" : "value") +
                                       " once (monte_carlo.trials repeats a point's measurement)"};
  }
  return std::nullopt;
}

}  // namespace

std::string format_value(const json& v) {
  if (v.is_number_float()) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.6g", v.get<double>());
    return buf;
  }
  if (v.is_string()) return v.get<std::string>();
  return v.dump();
}

void set_dotted(json& j, std::string_view key, const json& value) {
  json* node = &j;
  std::size_t start = 0;
  while (true) {
    // A section that is there but is not an object ("network": 5) is left as it is, for the
    // config's checks to name; it used to be replaced by the swept key alone.
    if (node->is_null()) *node = json::object();
    if (!node->is_object()) return;
    const std::size_t dot = key.find('.', start);
    const std::string part(key.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start));
    if (dot == std::string_view::npos) {
      (*node)[part] = value;
      return;
    }
    // A string activation ("selu") becomes an object before a parameter is set in it.
    json& child = (*node)[part];
    if (node == &j && part == "activation" && child.is_string()) child = json{{"name", child}};
    node = &child;
    start = dot + 1;
  }
}

json get_dotted(const json& j, std::string_view key) {
  const json* node = &j;
  std::size_t start = 0;
  while (true) {
    const std::size_t dot = key.find('.', start);
    const std::string part(key.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start));
    if (!node->is_object() || !node->contains(part)) return nullptr;
    node = &node->at(part);
    if (dot == std::string_view::npos) return *node;
    start = dot + 1;
  }
}

std::string dataset_name(std::string_view key) {
  if (key == "activation.name" || key == "activation") return "activation";
  for (const char* section : {"activation.", "network."}) {
    if (key.rfind(section, 0) == 0) return std::string(key.substr(std::string_view(section).size()));
  }
  std::string name(key);
  std::replace(name.begin(), name.end(), '.', '_');
  return name;
}

SweepPlan plan_sweep(const json& root, std::vector<ConfigIssue>& issues) {
  SweepPlan plan;
  std::vector<Axis> axes;
  const std::size_t issues_before = issues.size();

  if (root.is_object() && root.contains("activation") && root.at("activation").is_array()) {
    const json& list = root.at("activation");
    if (list.empty()) issues.push_back({"activation", "empty list; give at least one activation"});
    Axis axis;
    axis.keys = {"activation"};
    axis.values = {std::vector<json>(list.begin(), list.end())};
    axis.path = "activation";
    axis.where = "activation";
    axes.push_back(axis);
    plan.activation_list = true;
  }

  if (root.is_object() && root.contains("sweep")) {
    const json& sweep = root.at("sweep");
    plan.resolved_sweep = json::object();
    if (!sweep.is_object()) {
      issues.push_back({"sweep", "must be an object with \"grid\" and/or \"zip\", got " + sweep.dump()});
    } else {
      for (const auto& [k, v] : sweep.items()) {
        if (k != "grid" && k != "zip") {
          std::string msg = "unknown key";
          const std::string near = nearest_key(k, {"grid", "zip"});
          if (!near.empty()) msg += "; did you mean '" + near + "'?";
          issues.push_back({"sweep." + k, msg + " (valid keys: grid, zip)"});
        }
      }
      if (!sweep.contains("grid") && !sweep.contains("zip")) {
        issues.push_back({"sweep", "is empty; give \"grid\": {key: values, ...} and/or \"zip\": {key: values, ...}"});
      }
      std::set<std::string> seen;
      for (const char* form : {"grid", "zip"}) {
        if (!sweep.contains(form)) continue;
        const json& section = sweep.at(form);
        const std::string spath = std::string("sweep.") + form;
        if (!section.is_object() || section.empty()) {
          issues.push_back({spath, "must be a non-empty object {\"dotted.key\": values, ...}, got " + section.dump()});
          continue;
        }
        Axis zip;
        json resolved = json::object();
        for (const auto& [key, spec] : section.items()) {
          const std::string kpath = spath + "." + key;
          const std::string problem = check_key(key);
          if (!problem.empty()) {
            issues.push_back({kpath, problem});
            continue;
          }
          if (!seen.insert(key).second) {
            issues.push_back({kpath, "is swept twice; sweep each key in one place"});
            continue;
          }
          if ((key == "activation" || key == "activation.name") && plan.activation_list) {
            issues.push_back({kpath, "conflicts with the list of activations in \"activation\"; name the activations "
                                     "in one place, the list or the sweep"});
            continue;
          }
          if ((key == "activation" && seen.count("activation.name")) ||
              (key == "activation.name" && seen.count("activation"))) {
            issues.push_back({kpath, "sweeps the activation a second time (as activation and activation.name); "
                                     "sweep it in one place"});
            continue;
          }
          auto values = expand_values(spec, kpath, issues);
          if (values.empty()) continue;
          resolved[key] = values;
          if (std::string(form) == "grid") {
            axes.push_back(Axis{{key}, {values}, "", kpath});
          } else {
            zip.keys.push_back(key);
            zip.values.push_back(values);
          }
        }
        if (std::string(form) == "zip" && !zip.keys.empty()) {
          bool same = true;
          for (const auto& v : zip.values) same = same && v.size() == zip.values.front().size();
          if (!same) {
            std::string lengths;
            for (std::size_t k = 0; k < zip.keys.size(); ++k) {
              lengths += (k ? ", " : "") + zip.keys[k] + " has " + std::to_string(zip.values[k].size());
            }
            issues.push_back({spath, "lists of different lengths (" + lengths +
                                         "); zip varies its keys together, so every list needs the same length "
                                         "(use \"grid\" for all combinations)"});
          } else {
            zip.where = spath;
            axes.push_back(zip);
          }
        }
        plan.resolved_sweep[form] = resolved;
      }
    }
  }
  for (const auto& axis : axes) {
    if (auto issue = repeated_entry(axis)) issues.push_back(*issue);
  }
  if (issues.size() != issues_before) return plan;

  // Cartesian product in C order. The count is checked axis by axis, so it cannot wrap around.
  std::size_t total = 1;
  std::string shape;
  for (const auto& axis : axes) {
    shape += (shape.empty() ? "" : " x ") + std::to_string(axis.size());
    if (total <= static_cast<std::size_t>(kMaxPoints)) total *= axis.size();  // ~5 KiB, 60 us each
    plan.grid_shape.push_back(static_cast<std::int64_t>(axis.size()));
    for (const auto& k : axis.keys) {
      plan.swept_keys.push_back(k);
      plan.swept_axes.push_back(static_cast<std::int64_t>(plan.grid_shape.size()) - 1);
    }
  }
  if (total > static_cast<std::size_t>(kMaxPoints)) {
    issues.push_back({"sweep", "has " + shape + " points, more than the " + std::to_string(kMaxPoints) +
                                   " supported (each point is validated and kept in memory before the run); split "
                                   "it into several configs, or use fewer values per axis"});
    return plan;
  }
  if (axes.empty()) {
    plan.points.push_back({});
    return plan;
  }
  std::vector<std::size_t> index(axes.size(), 0);
  for (std::size_t p = 0; p < total; ++p) {
    SweepPointPlan point;
    for (std::size_t a = 0; a < axes.size(); ++a) {
      const Axis& axis = axes[a];
      for (std::size_t k = 0; k < axis.keys.size(); ++k) {
        const json& value = axis.values[k][index[a]];
        point.overrides.emplace_back(axis.keys[k], value);
        if (!axis.path.empty()) {
          point.activation_path = axis.path + "[" + std::to_string(index[a]) + "]";
          const json name = value.is_object() ? value.value("name", json("?")) : value;
          point.label += (point.label.empty() ? "" : ", ") + std::string("activation=") + format_value(name);
        } else {
          point.label += (point.label.empty() ? "" : ", ") + axis.keys[k] + "=" + format_value(value);
        }
      }
    }
    plan.points.push_back(std::move(point));
    for (std::size_t a = axes.size(); a-- > 0;) {
      if (++index[a] < axes[a].size()) break;
      index[a] = 0;
    }
  }
  return plan;
}

std::vector<VariedKey> varied_keys(const SweepPlan& plan, const std::vector<json>& resolved_points) {
  std::vector<std::string> keys;
  std::vector<std::int64_t> axes;
  bool activation_swept = false;
  std::int64_t activation_axis = -1;
  for (std::size_t i = 0; i < plan.swept_keys.size(); ++i) {
    const std::string& k = plan.swept_keys[i];
    const std::int64_t axis = plan.swept_axes[i];
    if (k == "activation" || k == "activation.name") {
      activation_swept = true;
      activation_axis = axis;
      if (std::find(keys.begin(), keys.end(), "activation.name") == keys.end()) {
        keys.push_back("activation.name");
        axes.push_back(axis);
      }
    } else if (std::find(keys.begin(), keys.end(), k) == keys.end()) {
      keys.push_back(k);
      axes.push_back(axis);
    }
  }
  if (activation_swept) {
    // Every activation parameter that is absent somewhere or not the same everywhere.
    for (const auto& name : activation_param_names()) {
      const std::string key = "activation." + name;
      if (std::find(keys.begin(), keys.end(), key) != keys.end()) continue;
      const json first = get_dotted(resolved_points.front(), key);
      bool present = false;
      bool differs = false;
      for (const auto& rp : resolved_points) {
        const json v = get_dotted(rp, key);
        present = present || !v.is_null();
        differs = differs || v != first;
      }
      if (present && differs) {
        keys.push_back(key);
        axes.push_back(activation_axis);
      }
    }
  }
  std::vector<VariedKey> out;
  for (std::size_t i = 0; i < keys.size(); ++i) out.push_back({keys[i], dataset_name(keys[i]), axes[i]});
  return out;
}

}  // namespace selfnorm::io
