#include "io/config.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <utility>

#include "core/engine.hpp"
#include "io/sweep.hpp"

namespace selfnorm::io {

using json = nlohmann::ordered_json;

namespace {

std::string join_path(const std::string& path, std::string_view key) {
  return path.empty() ? std::string(key) : path + "." + std::string(key);
}

std::string index_path(const std::string& path, std::size_t i) { return path + "[" + std::to_string(i) + "]"; }

// "an integer", "a string", ... for messages.
std::string describe_type(const json& j) {
  switch (j.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "an integer";
    case json::value_t::number_float: return "a number";
    case json::value_t::object: return "an object";
    case json::value_t::array: return "a list";
    default: return "an unsupported value";
  }
}

std::string show(const json& j) {
  std::string s = j.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

// "a string \"x\"", "an integer 5", "null": what a value is, for "got ..." in messages.
std::string got(const json& j) { return j.is_null() ? std::string("null") : describe_type(j) + " " + show(j); }

// The length of the well-formed UTF-8 sequence that starts at text[i] (1 to 4), or 0 if none does
// (RFC 3629: no overlong forms, no surrogates, nothing beyond U+10FFFF).
std::size_t utf8_length(std::string_view text, std::size_t i) {
  const auto byte = [&](std::size_t k) -> unsigned {
    return i + k < text.size() ? static_cast<unsigned char>(text[i + k]) : 0;
  };
  const auto follows = [&](std::size_t k, unsigned lo = 0x80, unsigned hi = 0xBF) {
    return byte(k) >= lo && byte(k) <= hi;
  };
  const unsigned lead = byte(0);
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return follows(1) ? 2 : 0;
  if (lead >= 0xE0 && lead <= 0xEF) {
    return follows(1, lead == 0xE0 ? 0xA0 : 0x80, lead == 0xED ? 0x9F : 0xBF) && follows(2) ? 3 : 0;
  }
  if (lead >= 0xF0 && lead <= 0xF4) {
    return follows(1, lead == 0xF0 ? 0x90 : 0x80, lead == 0xF4 ? 0x8F : 0xBF) && follows(2) && follows(3) ? 4 : 0;
  }
  return 0;
}

std::string format_number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t sub = prev[j - 1] + (std::tolower(static_cast<unsigned char>(a[i - 1])) == std::tolower(static_cast<unsigned char>(b[j - 1])) ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, sub});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

// "'a'" for the nearest candidate, or "'a' or 'b'" when the word is part of several (init.variance:
// weight_variance or bias_variance); "" if none is plausibly meant.
std::string suggest_keys(std::string_view word, const std::vector<std::string>& candidates) {
  std::vector<std::string> containing;
  if (word.size() >= 3) {
    for (const auto& c : candidates) {
      if (c.find(word) != std::string::npos) containing.push_back(c);
    }
  }
  if (containing.size() >= 2) {
    std::string out;
    for (std::size_t i = 0; i < containing.size(); ++i) {
      out += (i == 0 ? "'" : (i + 1 == containing.size() ? " or '" : ", '")) + containing[i] + "'";
    }
    return out;
  }
  const std::string near = nearest_key(word, candidates);
  return near.empty() ? near : "'" + near + "'";
}

// Collects issues while walking a config; every accessor records a problem and returns a
// fallback instead of throwing, so one pass finds everything.
class Checker {
 public:
  std::vector<ConfigIssue> issues;

  void fail(const std::string& path, std::string message) { issues.push_back({path, std::move(message)}); }

  // True if j is an object; records an issue otherwise, naming the section's keys and, for a
  // scalar given where a section belongs, the section that was probably meant (`key` set to it).
  bool object(const json& j, const std::string& path, const std::vector<std::string>& keys,
              const std::string& key_for_scalar = {}) {
    if (j.is_object()) return true;
    std::string msg = "must be an object {...} with keys " + list_names(keys) + ", got " + got(j);
    if (!key_for_scalar.empty() && (j.is_string() || j.is_number())) {
      msg += "; write {\"" + key_for_scalar + "\": " + show(j) + "}";
    }
    fail(path, msg);
    return false;
  }

  // Records every key of obj not in `allowed`, with where it belongs (`place`, "" if it cannot
  // tell) or else the nearest valid key.
  void known_keys(const json& obj, const std::string& path, const std::vector<std::string>& allowed,
                  const std::function<std::string(const std::string&, const json&)>& place = {}) {
    for (const auto& [key, value] : obj.items()) {
      if (std::find(allowed.begin(), allowed.end(), key) != allowed.end()) continue;
      std::string msg = "unknown key";
      const std::string there = place ? place(key, value) : std::string();
      const std::string near = there.empty() ? suggest_keys(key, allowed) : std::string();
      if (!there.empty()) msg += "; " + there;
      if (!near.empty()) msg += "; did you mean " + near + "?";
      msg += allowed.empty() ? " (this section takes no keys)" : " (valid keys: " + list_names(allowed) + ")";
      fail(join_path(path, key), msg);
    }
  }

  // For a string where a number belongs: how to write it instead ("" if it is not a number).
  static std::string quoted_number_hint(const json& v) {
    if (!v.is_string()) return {};
    const std::string& s = v.get_ref<const std::string&>();
    char* end = nullptr;
    const double d = std::strtod(s.c_str(), &end);
    if (s.empty() || end != s.c_str() + s.size()) return {};
    if (!std::isfinite(d)) return "; JSON has no NaN or Infinity, and every parameter must be finite";
    return "; write the number without quotes";
  }

  // A finite number; `ok` tests the range and `requirement` says it in words.
  double number(const json& obj, std::string_view key, const std::string& path, double fallback,
                const std::function<bool(double)>& ok = {}, std::string_view requirement = {}) {
    const std::string p = join_path(path, key);
    if (!obj.is_object() || !obj.contains(key)) return fallback;
    const json& v = obj.at(std::string(key));
    if (!v.is_number()) {
      fail(p, "must be a number" + suffix(requirement) + ", got " + got(v) +
                  quoted_number_hint(v));
      return fallback;
    }
    const double d = v.get<double>();
    if (!std::isfinite(d)) {
      fail(p, "must be a finite number, got " + show(v));
      return fallback;
    }
    if (ok && !ok(d)) {
      fail(p, "must be " + std::string(requirement) + ", got " + show(v));
      return fallback;
    }
    return d;
  }

  // An integer (a number with an integral value is accepted, e.g. 64.0 from a linspace).
  std::int64_t integer(const json& obj, std::string_view key, const std::string& path, std::int64_t fallback,
                       std::int64_t min_value, std::int64_t max_value) {
    const std::string p = join_path(path, key);
    if (!obj.is_object() || !obj.contains(key)) return fallback;
    return integer_value(obj.at(std::string(key)), p, fallback, min_value, max_value);
  }

  std::int64_t integer_value(const json& v, const std::string& p, std::int64_t fallback, std::int64_t min_value,
                             std::int64_t max_value) {
    const std::string range = range_text(min_value, max_value);
    if (!v.is_number()) {
      fail(p, "must be an integer " + range + ", got " + got(v) + quoted_number_hint(v));
      return fallback;
    }
    const double d = v.get<double>();
    if (!std::isfinite(d) || d != std::floor(d)) {
      fail(p, "must be an integer " + range + ", got " + show(v));
      return fallback;
    }
    if (d < static_cast<double>(min_value)) {
      fail(p, "must be an integer " + range + ", got " + show(v));
      return fallback;
    }
    // Compared exactly: a double cannot tell 2^63 - 1 (the int64 maximum) from 2^63, and an
    // unsigned JSON integer may exceed every int64.
    const bool too_large = v.is_number_unsigned() ? v.get<std::uint64_t>() > static_cast<std::uint64_t>(max_value)
                                                  : (d >= 0x1p63 || d > static_cast<double>(max_value));
    if (too_large) {
      fail(p, "must be at most " + std::to_string(max_value) + ", got " + show(v));
      return fallback;
    }
    return v.is_number_float() ? static_cast<std::int64_t>(d) : v.get<std::int64_t>();
  }

  bool boolean(const json& obj, std::string_view key, const std::string& path, bool fallback) {
    const std::string p = join_path(path, key);
    if (!obj.is_object() || !obj.contains(key)) return fallback;
    const json& v = obj.at(std::string(key));
    if (!v.is_boolean()) {
      fail(p, "must be true or false, got " + got(v));
      return fallback;
    }
    return v.get<bool>();
  }

  std::string string(const json& obj, std::string_view key, const std::string& path, const std::string& fallback) {
    const std::string p = join_path(path, key);
    if (!obj.is_object() || !obj.contains(key)) return fallback;
    const json& v = obj.at(std::string(key));
    if (!v.is_string()) {
      fail(p, "must be a string, got " + got(v));
      return fallback;
    }
    return v.get<std::string>();
  }

  // One of `choices`, as a string. `synonyms` maps names used elsewhere (other libraries' names)
  // to the choice to suggest; they are not accepted.
  std::string choice(const json& obj, std::string_view key, const std::string& path, const std::string& fallback,
                     const std::vector<std::string>& choices,
                     const std::vector<std::pair<std::string, std::string>>& synonyms = {}) {
    const std::string p = join_path(path, key);
    if (!obj.is_object() || !obj.contains(key)) return fallback;
    const json& v = obj.at(std::string(key));
    if (!v.is_string()) {
      fail(p, "must be one of " + list_names(choices) + ", got " + got(v));
      return fallback;
    }
    const std::string s = v.get<std::string>();
    if (std::find(choices.begin(), choices.end(), s) != choices.end()) return s;
    std::string msg = "unknown value '" + s + "'";
    std::string near = nearest_key(s, choices);
    std::string lowered = s;
    std::transform(lowered.begin(), lowered.end(), lowered.begin(), [](unsigned char ch) { return std::tolower(ch); });
    for (const auto& [other, ours] : synonyms) {
      if (lowered == other) near = ours;
    }
    if (!near.empty()) msg += "; did you mean '" + near + "'?";
    fail(p, msg + " (valid: " + list_names(choices) + ")");
    return fallback;
  }

 private:
  static std::string suffix(std::string_view requirement) {
    return requirement.empty() ? "" : " " + std::string(requirement);
  }
  // Ranges whose upper end is only a sanity limit are shown as ">= lo".
  static std::string range_text(std::int64_t lo, std::int64_t hi) {
    if (hi >= kSanityLimit) return ">= " + std::to_string(lo);
    return "in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  }
  static constexpr std::int64_t kSanityLimit = 100000;
};

constexpr std::int64_t kMaxWidth = std::int64_t(1) << 24;
constexpr std::int64_t kMaxDepth = 100000;
constexpr std::int64_t kMaxCount = std::int64_t(1) << 40;

const std::vector<std::string> kTopKeys = {"name",  "description", "seed",    "precision",     "network",
                                           "activation", "init",   "input",   "alpha_dropout", "monte_carlo",
                                           "output", "sweep", "device", "cuda"};
const std::vector<std::string> kNetworkKeys = {"depth", "width", "widths"};
const std::vector<std::string> kInitKeys = {"name", "weight_mean", "weight_variance", "bias_mean", "bias_variance"};
const std::vector<std::string> kInputKeys = {"distribution", "mean", "variance"};
const std::vector<std::string> kDropoutKeys = {"keep_probability", "fixed_point_mean", "fixed_point_variance"};
const std::vector<std::string> kMonteCarloKeys = {"trials", "batch", "weight_gradients"};
const std::vector<std::string> kOutputKeys = {"per_trial"};
const std::vector<std::string> kDevices = {"cpu", "cuda"};
const std::vector<std::string> kCudaKeys = {"tf32"};
const std::vector<std::string> kPrecisions = {"float32", "float64"};
const std::vector<std::string> kInits = {"lecun_normal", "lecun_uniform",  "he_normal",
                                         "glorot_normal", "orthogonal",    "truncated_normal"};
const std::vector<std::string> kInputs = {"normal", "uniform"};
const std::vector<std::pair<std::string, std::string>> kInputSynonyms = {
    {"gaussian", "normal"}, {"gauss", "normal"}, {"randn", "normal"}, {"rand", "uniform"}};
// Other libraries' names for our initialisers (PyTorch's kaiming_*/xavier_*, Keras' he_*/glorot_*).
const std::vector<std::pair<std::string, std::string>> kInitSynonyms = {
    {"kaiming", "he_normal"},         {"kaiming_normal", "he_normal"},  {"kaiming_normal_", "he_normal"},
    {"he", "he_normal"},              {"xavier", "glorot_normal"},      {"xavier_normal", "glorot_normal"},
    {"xavier_normal_", "glorot_normal"}, {"glorot", "glorot_normal"},   {"lecun", "lecun_normal"},
    {"selu", "lecun_normal"},         {"trunc_normal", "truncated_normal"}, {"trunc_normal_", "truncated_normal"},
    {"orthogonal_", "orthogonal"}};
// A config is at most 6 levels deep (sweep.grid.<key>.linspace[...]); far deeper nesting is not a
// config, and would exhaust the stack of the recursive JSON copy and dump.
constexpr int kMaxNesting = 32;
// Most layers (summed over the points) one experiment may have: its specs stay in memory.
constexpr std::size_t kMaxTotalLayers = 20'000'000;

// For a key of a section written at the top level, plainly ("depth") or dotted ("network.depth"):
// where it belongs, and how to write it there; "" for any other key.
std::string section_of_top_key(const std::string& key, const json& value) {
  const std::vector<std::pair<std::string, const std::vector<std::string>*>> sections = {
      {"network", &kNetworkKeys},         {"init", &kInitKeys},     {"input", &kInputKeys},
      {"alpha_dropout", &kDropoutKeys},   {"monte_carlo", &kMonteCarloKeys},
      {"output", &kOutputKeys},           {"cuda", &kCudaKeys}};
  auto write = [&](const std::string& section, const std::string& field) {
    return "write {\"" + section + "\": {\"" + field + "\": " + show(value) + "}}";
  };
  const std::size_t dot = key.find('.');
  // "activation.alpha": the activation's parameter, written with the name it needs (below).
  if (dot != std::string::npos && key.substr(0, dot) == "activation") return section_of_top_key(key.substr(dot + 1), value);
  if (dot != std::string::npos && key.find('.', dot + 1) == std::string::npos &&
      std::find(kTopKeys.begin(), kTopKeys.end(), key.substr(0, dot)) != kTopKeys.end()) {
    return "a config nests its sections (dotted keys are for \"sweep\"): " +
           write(key.substr(0, dot), key.substr(dot + 1));
  }
  for (const auto& [section, keys] : sections) {
    if (std::find(keys->begin(), keys->end(), key) != keys->end()) {
      return "'" + key + "' belongs in \"" + section + "\": " + write(section, key);
    }
  }
  // An activation's parameter: shown with the default activation where it has one (alpha, lambda).
  const ActivationInfo* owner = nullptr;
  for (const auto& info : activation_catalog()) {
    const bool has =
        std::any_of(info.params.begin(), info.params.end(), [&](const ParamInfo& p) { return p.name == key; });
    if (has && (!owner || info.name == "selu")) owner = &info;
  }
  if (!owner) return {};
  return "'" + key + "' is a parameter of the activation: write {\"activation\": {\"name\": \"" +
         std::string(owner->name) + "\", \"" + key + "\": " + show(value) + "}}";
}

std::vector<std::string> activation_names() {
  std::vector<std::string> names;
  for (const auto& info : activation_catalog()) {
    names.emplace_back(info.name);
    for (auto alias : info.aliases) names.emplace_back(alias);
  }
  return names;
}

NetworkSpec parse_network(const json& root, Checker& c) {
  NetworkSpec net;
  const std::string path = "network";
  const json empty = json::object();
  const json& j = root.contains(path) ? root.at(path) : empty;
  if (!c.object(j, path, kNetworkKeys)) return {std::vector<std::int64_t>(65, 512)};
  c.known_keys(j, path, kNetworkKeys);
  const bool has_depth = j.contains("depth");
  const std::int64_t depth = c.integer(j, "depth", path, 64, 1, kMaxDepth);
  if (j.contains("widths")) {
    const json& w = j.at("widths");
    if (j.contains("width")) {
      c.fail(join_path(path, "width"), "give either 'width' (all layers) or 'widths' (per layer), not both");
    }
    if (!w.is_array() || w.size() < 2) {
      c.fail(join_path(path, "widths"),
             "must be a list of at least 2 integers [n_0, n_1, ..., n_L] (input width first), got " +
                 got(w));
      return {std::vector<std::int64_t>(static_cast<std::size_t>(depth + 1), 512)};
    }
    if (w.size() - 1 > static_cast<std::size_t>(kMaxDepth)) {
      c.fail(join_path(path, "widths"), "has " + std::to_string(w.size()) + " entries, a depth of " +
                                            std::to_string(w.size() - 1) + "; the largest depth is " +
                                            std::to_string(kMaxDepth));
      return {std::vector<std::int64_t>(2, 512)};
    }
    for (std::size_t i = 0; i < w.size(); ++i) {
      net.widths.push_back(c.integer_value(w[i], index_path(join_path(path, "widths"), i), 1, 1, kMaxWidth));
    }
    if (has_depth && static_cast<std::int64_t>(w.size()) != depth + 1) {
      c.fail(join_path(path, "widths"), "has " + std::to_string(w.size()) + " entries but depth is " +
                                            std::to_string(depth) + "; widths lists the input width and then one "
                                            "width per layer, so it needs depth + 1 = " +
                                            std::to_string(depth + 1) + " entries");
    }
    return net;
  }
  const std::int64_t width = c.integer(j, "width", path, 512, 1, kMaxWidth);
  net.widths.assign(static_cast<std::size_t>(depth + 1), width);
  return net;
}

Activation parse_activation(const json& j, const std::string& path, Checker& c) {
  json obj = j;
  if (j.is_string()) obj = json{{"name", j}};
  if (!obj.is_object()) {
    c.fail(path, "must be an activation name such as \"selu\" or an object {\"name\": \"elu\", \"alpha\": 0.5}, got " +
                     got(j));
    return Selu{};
  }
  if (!obj.contains("name")) {
    c.fail(join_path(path, "name"), "missing; choose one of " + list_names(activation_names()));
    // The name may be there all the same: misspelt, or as a key holding the parameters.
    std::vector<std::string> keys = {"name"};
    keys.insert(keys.end(), activation_param_names().begin(), activation_param_names().end());
    for (const auto& [key, value] : obj.items()) {
      if (std::find(keys.begin(), keys.end(), key) != keys.end()) continue;
      if (find_activation(key)) {
        json written{{"name", key}};
        if (value.is_object()) written.update(value);
        c.fail(join_path(path, key), "unknown key; the activation's name goes in \"name\": write " + show(written));
        continue;
      }
      const std::string near = nearest_key(key, keys);
      c.fail(join_path(path, key), "unknown key" + (near.empty() ? std::string() : "; did you mean '" + near + "'?") +
                                       " (an activation object holds \"name\" and the activation's parameters)");
    }
    return Selu{};
  }
  const std::string name = c.choice(obj, "name", path, "", activation_names());
  const ActivationInfo* info = find_activation(name);
  if (!info) return Selu{};
  std::vector<std::string> allowed = {"name"};
  for (const auto& p : info->params) allowed.emplace_back(p.name);
  // Parameters of another activation get a specific message.
  for (const auto& [key, value] : obj.items()) {
    if (std::find(allowed.begin(), allowed.end(), key) != allowed.end()) continue;
    std::string msg = "is not a parameter of " + std::string(info->name);
    if (info->params.empty()) {
      msg += ", which has none";
    } else {
      std::vector<std::string> params(allowed.begin() + 1, allowed.end());
      const std::string near = nearest_key(key, params);
      if (!near.empty()) msg += "; did you mean '" + near + "'?";
      msg += " (its parameters: " + list_names(params) + ")";
    }
    c.fail(join_path(path, key), msg);
  }
  std::vector<double> values;
  const std::size_t before = c.issues.size();
  for (const auto& p : info->params) values.push_back(c.number(obj, p.name, path, p.default_value));
  if (c.issues.size() != before) return Selu{};
  for (const auto& problem : check_activation_params(info->name, values)) {
    // (Not a structured binding: clang 14 cannot capture one in a lambda.)
    const std::string& param = problem.first;
    const auto at = std::find_if(info->params.begin(), info->params.end(),
                                 [&](const ParamInfo& pi) { return pi.name == param; });
    c.fail(join_path(path, param),
           problem.second + ", got " + format_number(values[static_cast<std::size_t>(at - info->params.begin())]));
  }
  try {
    return make_activation(info->name, values);
  } catch (const std::invalid_argument&) {
    return Selu{};  // already reported
  }
}

InitSpec parse_init(const json& root, Checker& c) {
  InitSpec init;
  const std::string path = "init";
  if (!root.contains(path)) return init;
  const json& j = root.at(path);
  if (!c.object(j, path, kInitKeys, j.is_string() ? "name" : "weight_variance")) return init;
  c.known_keys(j, path, kInitKeys);
  const std::string name = c.choice(j, "name", path, "lecun_normal", kInits, kInitSynonyms);
  init.kind = static_cast<InitKind>(std::find(kInits.begin(), kInits.end(), name) - kInits.begin());
  init.weight_mean = c.number(j, "weight_mean", path, 0.0);
  init.weight_variance = c.number(j, "weight_variance", path, 1.0, [](double v) { return v > 0; }, "> 0");
  init.bias_mean = c.number(j, "bias_mean", path, 0.0);
  init.bias_variance = c.number(j, "bias_variance", path, 0.0, [](double v) { return v >= 0; }, ">= 0");
  return init;
}

InputSpec parse_input(const json& root, Checker& c) {
  InputSpec in;
  const std::string path = "input";
  if (!root.contains(path)) return in;
  const json& j = root.at(path);
  if (!c.object(j, path, kInputKeys, j.is_string() ? "distribution" : "")) return in;
  c.known_keys(j, path, kInputKeys);
  in.distribution = c.choice(j, "distribution", path, "normal", kInputs, kInputSynonyms) == "uniform" ? InputDistribution::uniform
                                                                                       : InputDistribution::normal;
  in.mean = c.number(j, "mean", path, 0.0);
  in.variance = c.number(j, "variance", path, 1.0, [](double v) { return v >= 0; }, ">= 0");
  return in;
}

AlphaDropoutSpec parse_dropout(const json& root, const Activation& act, const std::string& act_path, Checker& c) {
  AlphaDropoutSpec d;
  const std::string path = "alpha_dropout";
  if (!root.contains(path)) return d;
  const json& j = root.at(path);
  if (!c.object(j, path, kDropoutKeys, "keep_probability")) return d;
  c.known_keys(j, path, kDropoutKeys);
  d.keep_probability = c.number(j, "keep_probability", path, 1.0, [](double v) { return v > 0 && v <= 1; },
                                "in (0, 1] (the probability of KEEPING a unit, the paper's q)");
  d.fixed_point_mean = c.number(j, "fixed_point_mean", path, 0.0);
  d.fixed_point_variance =
      c.number(j, "fixed_point_variance", path, 1.0, [](double v) { return v > 0; }, "> 0");
  double saturation;
  if (d.enabled() && !dropout_saturation(act, saturation)) {
    c.fail(join_path(path, "keep_probability"),
           "alpha dropout sets dropped units to f(-inf), which " + std::string(activation_name(act)) + " (" +
               act_path + ") does not have; use selu, elu, celu or another activation that saturates");
  }
  return d;
}

MonteCarloSpec parse_monte_carlo(const json& root, Checker& c) {
  MonteCarloSpec mc;
  const std::string path = "monte_carlo";
  if (!root.contains(path)) return mc;
  const json& j = root.at(path);
  if (!c.object(j, path, kMonteCarloKeys)) return mc;
  c.known_keys(j, path, kMonteCarloKeys);
  mc.trials = c.integer(j, "trials", path, mc.trials, 1, kMaxCount);
  mc.batch = c.integer(j, "batch", path, mc.batch, 1, kMaxCount);
  mc.weight_gradients = c.boolean(j, "weight_gradients", path, false);
  return mc;
}

OutputSpec parse_output(const json& root, Checker& c) {
  OutputSpec out;
  const std::string path = "output";
  if (!root.contains(path)) return out;
  const json& j = root.at(path);
  if (!c.object(j, path, kOutputKeys)) return out;
  c.known_keys(j, path, kOutputKeys);
  out.per_trial = c.boolean(j, "per_trial", path, false);
  return out;
}

// The top-level "device" and "cuda" keys. Other programs' names for the devices are suggested.
DeviceOptions parse_device(const json& root, Checker& c) {
  DeviceOptions d;
  const std::string device = c.choice(root, "device", "", "cpu", kDevices,
                                      {{"gpu", "cuda"}, {"nvidia", "cuda"}, {"cuda:0", "cuda"}, {"host", "cpu"}});
  d.device = device == "cuda" ? Device::cuda : Device::cpu;
  const std::string path = "cuda";
  if (!root.contains(path)) return d;
  const json& j = root.at(path);
  if (!c.object(j, path, kCudaKeys, j.is_boolean() ? "tf32" : "")) return d;
  c.known_keys(j, path, kCudaKeys);
  d.tf32 = c.boolean(j, "tf32", path, false);
  return d;
}

// The hash of a resolved config: what changes the statistics. The device and its options count
// only on the GPU, so that a CPU result keeps the hash it had before devices existed.
std::string experiment_hash(const json& resolved, const DeviceOptions& device) {
  json hashed = resolved;
  for (const char* k : {"name", "description", "output"}) hashed.erase(k);
  if (device.device == Device::cpu) {
    hashed.erase("device");
    hashed.erase("cuda");
  }
  return hash_hex(hashed.dump());
}

// Parses one point's config (no sweep section; "activation" is a single activation).
PointSpec parse_point(const json& root, const std::string& activation_path, Checker& c) {
  PointSpec spec;
  const std::string precision = c.choice(root, "precision", "", "float32", kPrecisions);
  spec.precision = precision == "float64" ? Precision::float64 : Precision::float32;
  spec.network = parse_network(root, c);
  if (root.contains("activation")) spec.activation = parse_activation(root.at("activation"), activation_path, c);
  spec.init = parse_init(root, c);
  spec.input = parse_input(root, c);
  spec.alpha_dropout = parse_dropout(root, spec.activation, activation_path, c);
  spec.monte_carlo = parse_monte_carlo(root, c);
  return spec;
}

// "line 3, column 14" of the character at 0-based `index` of `text` (UTF-8: columns count
// characters, as editors do, not bytes).
std::string line_column(std::string_view text, std::size_t index) {
  std::size_t line = 1, col = 1;
  for (std::size_t i = 0; i < index && i < text.size(); ++i) {
    const auto byte = static_cast<unsigned char>(text[i]);
    if (text[i] == '\n') {
      ++line;
      col = 1;
    } else if (byte < 0x80 || byte > 0xBF) {  // not a continuation byte
      ++col;
    }
  }
  return "line " + std::to_string(line) + ", column " + std::to_string(col);
}

// The bare word around `index` (letters, digits, sign, dot), and where it starts.
std::pair<std::string, std::size_t> word_at(std::string_view text, std::size_t index) {
  auto part = [](char ch) { return std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '+' || ch == '.'; };
  if (index >= text.size()) return {"", index};
  std::size_t b = index, e = index;
  while (b > 0 && part(text[b - 1])) --b;
  while (e < text.size() && part(text[e])) ++e;
  return {std::string(text.substr(b, e - b)), b};
}

// Where the token that ends at `index` starts: a string's opening quote, a word's first character.
std::size_t token_start(std::string_view text, std::size_t index) {
  if (text[index] != '"') return word_at(text, index).second;
  for (std::size_t i = index; i-- > 0;) {
    if (text[i] != '"') continue;
    std::size_t backslashes = 0;
    while (backslashes < i && text[i - 1 - backslashes] == '\\') ++backslashes;
    if (backslashes % 2 == 0) return i;
  }
  return index;
}

// Thrown from the parser callback to stop at absurd nesting.
struct TooDeep {
  std::string path;
};

// Parses JSON text, rejecting duplicate keys and absurd nesting; issues carry line and column,
// and the key they belong to where it is known.
// Where `number` first stands as a number token of `text`, outside its strings; npos if nowhere.
// The parser stops at the first number it cannot hold, and that is the first such token.
std::size_t find_number_token(std::string_view text, std::string_view number) {
  const auto part_of_number = [](char ch) { return std::isdigit(static_cast<unsigned char>(ch)) || ch == '.' ||
                                                   ch == 'e' || ch == 'E' || ch == '+' || ch == '-'; };
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char ch = text[i];
    if (in_string) {
      if (ch == '\\') {
        ++i;
      } else if (ch == '"') {
        in_string = false;
      }
    } else if (ch == '"') {
      in_string = true;
    } else if (text.compare(i, number.size(), number) == 0 && (i == 0 || !part_of_number(text[i - 1])) &&
               (i + number.size() == text.size() || !part_of_number(text[i + number.size()]))) {
      return i;
    }
  }
  return std::string_view::npos;
}

// Why `text` is not JSON text at all (another encoding, a binary file), or "" if it is UTF-8.
std::string encoding_problem(std::string_view text) {
  if (text.starts_with(kHdf5Signature)) {
    return "this is an HDF5 file (a selfnorm result file?), not a JSON config; give the JSON config instead (a "
           "result file keeps the config it was run from in its attribute \"config\")";
  }
  if (text.substr(0, 2) == "\xff\xfe" || text.substr(0, 2) == "\xfe\xff") {
    return "the file is UTF-16 text (it starts with a UTF-16 byte order mark); save it as UTF-8";
  }
  const std::size_t bad = find_invalid_utf8(text);
  if (bad != std::string_view::npos) {
    char byte[8];
    std::snprintf(byte, sizeof byte, "0x%02X", static_cast<unsigned char>(text[bad]));
    return std::string("byte ") + byte + " at " + line_column(text, bad) + " is not UTF-8 (the file may be Latin-1 "
           "or Windows-1252 text); re-save the file as UTF-8";
  }
  if (const std::size_t nul = text.find('\0'); nul != std::string_view::npos) {
    return "a NUL byte at " + line_column(text, nul) + ": the file is not UTF-8 text (UTF-16 without a byte order "
           "mark, or not a text file at all?); save the config as UTF-8";
  }
  return {};
}

std::optional<json> parse_text(std::string_view text, Checker& c) {
  if (const std::string problem = encoding_problem(text); !problem.empty()) {
    c.fail("", problem);
    return std::nullopt;
  }
  if (text.find_first_not_of(" \t\r\n") == std::string_view::npos) {
    c.fail("", "the file is empty (a config is a JSON object); write {} to run every default, or see "
               "configs/README.md");
    return std::nullopt;
  }
  // Keys seen in each open object, and the path of keys that leads to it.
  std::vector<std::set<std::string>> seen;
  std::vector<std::string> path;
  std::vector<std::string> dup;
  auto where = [&] {
    std::string w;
    for (const auto& p : path) {
      if (!p.empty()) w += (w.empty() ? "" : ".") + p;
    }
    return w;
  };
  json::parser_callback_t cb = [&](int depth, json::parse_event_t event, json& parsed) {
    if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
        depth >= kMaxNesting) {
      throw TooDeep{where()};
    }
    if (event == json::parse_event_t::object_start) {
      seen.emplace_back();
      path.emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      if (!seen.empty()) seen.pop_back();
      if (!path.empty()) path.pop_back();
    } else if (event == json::parse_event_t::key && !seen.empty()) {
      const std::string key = parsed.get<std::string>();
      path.back() = key;
      if (!seen.back().insert(key).second) dup.push_back(where());
    }
    return true;
  };
  try {
    json doc = json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/true, /*ignore_comments=*/false);
    for (const auto& d : dup) {
      c.fail(d, "duplicate key: it appears twice in the same object, and only the last value would count; "
                "remove one");
    }
    return doc;
  } catch (const TooDeep& e) {
    c.fail(e.path, "nested more than " + std::to_string(kMaxNesting) + " levels deep (a config needs at most 6, "
                   "as in sweep.grid.<key>.linspace); see configs/README.md for the layout");
    return std::nullopt;
  } catch (const json::parse_error& e) {
    // e.byte counts from 1 and points at the last character read.
    const std::size_t index = std::min<std::size_t>(e.byte, text.size() + 1) - (e.byte > 0 ? 1 : 0);
    const auto [word, word_start] = word_at(text, std::min(index, text.size() - 1));
    std::string lowered = word;
    std::transform(lowered.begin(), lowered.end(), lowered.begin(), [](unsigned char ch) { return std::tolower(ch); });
    if (!lowered.empty() && (lowered[0] == '-' || lowered[0] == '+')) lowered.erase(0, 1);
    if (lowered == "nan" || lowered == "inf" || lowered == "infinity") {
      c.fail(where(), word + " at " + line_column(text, word_start) + " is not a number (JSON has no NaN or "
                      "Infinity, and every parameter must be finite); write a finite number such as 1.5");
      return std::nullopt;
    }
    std::string what = e.what();
    const auto pos = what.find("syntax error");
    if (pos != std::string::npos) what = what.substr(pos);
    // The usual slips from JavaScript or Python, spelled out.
    std::string hint;
    const std::size_t before = index == 0 ? std::string_view::npos : text.find_last_not_of(" \t\r\n", index - 1);
    if (index < text.size() && (text[index] == '}' || text[index] == ']') && before != std::string_view::npos &&
        text[before] == ',') {
      hint = "; a comma before '" + std::string(1, text[index]) + "' is not allowed in JSON: remove it";
    } else if (index < text.size() && text[index] == '/') {
      hint = "; JSON has no comments: remove it, or put the note in \"description\"";
    } else if (index < text.size() && text[index] == '\'') {
      hint = "; JSON strings and keys take double quotes \"...\", not single quotes";
    } else if (what.find("invalid literal") != std::string::npos &&
               (lowered == "true" || lowered == "false" || lowered == "none" || lowered == "null")) {
      hint = std::string("; JSON writes true, false and null in lower case") +
             (lowered == "none" ? " (None is null)" : "");
    } else if (what.find("; expected '}'") != std::string::npos || what.find("; expected ']'") != std::string::npos) {
      // A value where the object or list should go on or end: the comma after the one before is missing.
      const std::size_t start = token_start(text, std::min(index, text.size() - 1));
      const std::size_t end = start == 0 ? std::string_view::npos : text.find_last_not_of(" \t\r\n", start - 1);
      if (std::string_view("\"-0123456789tfn{[").find(text[start]) != std::string_view::npos &&
          end != std::string_view::npos && std::string_view(",:[{").find(text[end]) == std::string_view::npos) {
        const auto line = std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(end), '\n') + 1;
        hint = text.substr(end, start - end).find('\n') == std::string_view::npos
                   ? "; is a comma missing before it?"
                   : "; is a comma missing at the end of line " + std::to_string(line) + "?";
      }
    }
    c.fail("", "malformed JSON at " + line_column(text, index) + ": " + what + hint);
    return std::nullopt;
  } catch (const json::out_of_range& e) {
    // Number overflow ("1e400"): name the key and the place of the number.
    std::string what = e.what();
    const auto q0 = what.find('\'');
    const auto q1 = q0 == std::string::npos ? q0 : what.find('\'', q0 + 1);
    if (q1 != std::string::npos) {
      const std::string number = what.substr(q0 + 1, q1 - q0 - 1);
      const auto at = find_number_token(text, number);
      c.fail(where(), "the number " + number + (at == std::string_view::npos ? "" : " at " + line_column(text, at)) +
                          " is out of range (beyond the largest double, about 1.8e308); write a finite number "
                          "such as 1.5");
    } else {
      const auto pos = what.find("] ");
      if (pos != std::string::npos) what = what.substr(pos + 2);
      c.fail("", "unusable JSON: " + what + " (numbers must be finite and fit in a double)");
    }
    return std::nullopt;
  }
}

// "sweep.grid.<key>" or "sweep.zip.<key>": where the config's (valid) sweep section sets `key`.
std::string sweep_path(const json& root, const std::string& key) {
  const json& sweep = root.at("sweep");
  return std::string("sweep.") + (sweep.contains("grid") && sweep.at("grid").contains(key) ? "grid." : "zip.") + key;
}

// The top-level sections that the keys of the config's sweep section name ("activation" for
// activation.alfa), whether the keys are valid or not.
std::set<std::string> swept_sections(const json& root) {
  std::set<std::string> sections;
  if (!root.contains("sweep") || !root.at("sweep").is_object()) return sections;
  for (const auto& [form, keys] : root.at("sweep").items()) {
    if (!keys.is_object()) continue;
    for (const auto& [key, values] : keys.items()) sections.insert(key.substr(0, key.find('.')));
  }
  return sections;
}

}  // namespace

ConfigError::ConfigError(std::string source, std::vector<ConfigIssue> issues)
    : std::runtime_error("config error"), source_(printable(source)), issues_(std::move(issues)) {
  message_ = source_ + ": " + std::to_string(issues_.size()) + " problem" + (issues_.size() == 1 ? "" : "s") +
             " in the config";
  for (auto& i : issues_) {
    i.path = printable(i.path);
    i.message = printable(i.message);
    message_ += "\n  " + (i.path.empty() ? std::string() : i.path + ": ") + i.message;
  }
}

std::size_t find_invalid_utf8(std::string_view text) {
  for (std::size_t i = 0; i < text.size();) {
    const std::size_t n = utf8_length(text, i);
    if (n == 0) return i;
    i += n;
  }
  return std::string_view::npos;
}

std::string printable(std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i < text.size();) {
    const std::size_t n = utf8_length(text, i);
    const auto byte = static_cast<unsigned char>(text[i]);
    if (n == 0 || (n == 1 && (byte < 0x20 || byte == 0x7f) && byte != '\n' && byte != '\t')) {
      char escaped[5];
      std::snprintf(escaped, sizeof escaped, "\\x%02X", byte);
      out += escaped;
      ++i;
    } else {
      out.append(text, i, n);
      i += n;
    }
  }
  return out;
}

std::string list_names(const std::vector<std::string>& names) {
  std::string out;
  for (std::size_t i = 0; i < names.size(); ++i) out += (i ? ", " : "") + names[i];
  return out;
}

std::string nearest_key(std::string_view word, const std::vector<std::string>& candidates) {
  std::string best;
  std::size_t best_d = std::numeric_limits<std::size_t>::max();
  for (const auto& c : candidates) {
    const std::size_t d = edit_distance(word, c);
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  const std::size_t limit = std::max<std::size_t>(2, word.size() / 3);
  // A candidate that contains the word (or the reverse) is a likely abbreviation.
  const bool contained = !best.empty() && word.size() >= 3 &&
                         (best.find(word) != std::string::npos || std::string(word).find(best) != std::string::npos);
  return (best_d <= limit || contained) ? best : std::string();
}

json activation_json(const Activation& activation) {
  json act{{"name", std::string(activation_name(activation))}};
  const ActivationInfo* info = find_activation(activation_name(activation));
  const auto values = activation_values(activation);
  for (std::size_t i = 0; i < values.size(); ++i) act[std::string(info->params[i].name)] = values[i];
  return act;
}

json to_json(const PointSpec& spec) {
  json j;
  j["precision"] = std::string(to_string(spec.precision));
  const auto& w = spec.network.widths;
  const bool uniform = std::all_of(w.begin(), w.end(), [&](std::int64_t v) { return v == w.front(); });
  j["network"] = uniform ? json{{"depth", spec.network.depth()}, {"width", w.front()}}
                         : json{{"depth", spec.network.depth()}, {"widths", w}};
  j["activation"] = activation_json(spec.activation);
  j["init"] = {{"name", std::string(to_string(spec.init.kind))},
               {"weight_mean", spec.init.weight_mean},
               {"weight_variance", spec.init.weight_variance},
               {"bias_mean", spec.init.bias_mean},
               {"bias_variance", spec.init.bias_variance}};
  j["input"] = {{"distribution", std::string(to_string(spec.input.distribution))},
                {"mean", spec.input.mean},
                {"variance", spec.input.variance}};
  j["alpha_dropout"] = {{"keep_probability", spec.alpha_dropout.keep_probability},
                        {"fixed_point_mean", spec.alpha_dropout.fixed_point_mean},
                        {"fixed_point_variance", spec.alpha_dropout.fixed_point_variance}};
  j["monte_carlo"] = {{"trials", spec.monte_carlo.trials},
                      {"batch", spec.monte_carlo.batch},
                      {"weight_gradients", spec.monte_carlo.weight_gradients}};
  return j;
}

std::string config_differences(const json& there, const json& here, std::size_t most) {
  std::vector<std::string> found;
  // Top-level keys that name or place the results rather than set what is computed.
  const auto unhashed = [](const std::string& path, const std::string& key) {
    return path.empty() && (key == "name" || key == "description" || key == "output");
  };
  // Objects and lists of the same length are compared entry by entry, anything else as a whole.
  std::function<void(const json&, const json&, const std::string&)> compare = [&](const json& a, const json& b,
                                                                                   const std::string& path) {
    if (a == b) return;
    if (a.is_object() && b.is_object()) {
      for (const auto& [key, value] : b.items()) {
        if (!unhashed(path, key)) compare(a.contains(key) ? a.at(key) : json(), value, join_path(path, key));
      }
      for (const auto& [key, value] : a.items()) {
        if (!b.contains(key) && !unhashed(path, key)) compare(value, json(), join_path(path, key));
      }
    } else if (a.is_array() && b.is_array() && a.size() == b.size()) {
      for (std::size_t i = 0; i < a.size(); ++i) compare(a[i], b[i], index_path(path, i));
    } else {
      found.push_back(path + " " + (a.is_null() ? "absent" : show(a)) + " in the file, " +
                      (b.is_null() ? "absent" : show(b)) + " here");
    }
  };
  compare(there, here, "");
  std::string out;
  for (std::size_t i = 0; i < found.size() && i < most; ++i) out += (i ? "; " : "") + found[i];
  if (found.size() > most) out += "; and " + std::to_string(found.size() - most) + " more";
  return out;
}

std::string hash_hex(std::string_view text) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char ch : text) {
    h ^= ch;
    h *= 0x100000001b3ULL;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

Experiment parse_experiment(std::string_view text, const std::string& source, const std::string& default_name) {
  Checker c;
  const std::optional<json> parsed = parse_text(text, c);
  if (!parsed) throw ConfigError(source, c.issues);
  const json& root = *parsed;
  if (!root.is_object()) {
    c.fail("", "the config must be a JSON object {...} whose keys are sections such as \"network\" and "
               "\"activation\", got " + got(root) + "; write {} to run every default");
    throw ConfigError(source, c.issues);
  }
  c.known_keys(root, "", kTopKeys, section_of_top_key);

  Experiment ex;
  ex.name = c.string(root, "name", "", default_name);
  // The name becomes results/<name>.h5, results/<name>/shard-K-of-N.h5 and the Slurm job's name.
  const bool control = std::any_of(ex.name.begin(), ex.name.end(), [](char ch) {
    return static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f;
  });
  if (ex.name.empty() || ex.name.size() > 200 || ex.name.front() == '.' || control ||
      ex.name.find_first_of("/\\") != std::string::npos || find_invalid_utf8(ex.name) != std::string::npos) {
    const std::string rule = "a file-name-safe string (1 to 200 characters of UTF-8 text, no '/', '\\' or control "
                             "characters, not starting with '.'), since it names results/<name>.h5";
    if (root.contains("name")) {
      c.fail("name", "must be " + rule + "; got " + show(json(ex.name)));
    } else {
      // Not written in the config: the file's name stood in for it (a file name need not be UTF-8).
      c.fail("name", "missing; the name taken from the file name instead, \"" + printable(ex.name) + "\", is not " +
                         rule + "; add \"name\": \"...\" to the config");
    }
  }
  const std::string description = c.string(root, "description", "", "");
  ex.seed = static_cast<std::uint64_t>(c.integer(root, "seed", "", 0, 0, std::numeric_limits<std::int64_t>::max()));
  ex.output = parse_output(root, c);
  ex.device = parse_device(root, c);

  // The points: the sweep section (or a list of activations) varies keys of the base config.
  json base = root;
  for (const char* k : {"name", "description", "seed", "output", "sweep", "device", "cuda"}) base.erase(k);
  // A sweep of activation.alpha with no activation given sweeps the default activation.
  if (!base.contains("activation")) base["activation"] = "selu";
  const std::size_t before_sweep = c.issues.size();
  SweepPlan plan = plan_sweep(root, c.issues);
  // A sweep with problems of its own: the base config is checked all the same, without the sweep,
  // and its problems are reported too, except in the sections the sweep names (it may set there what
  // the base lacks).
  std::set<std::string> unchecked;
  if (c.issues.size() != before_sweep || plan.points.empty()) {
    json unswept = root;
    unswept.erase("sweep");
    std::vector<ConfigIssue> ignored;  // the activation list's, already reported
    plan = plan_sweep(unswept, ignored);
    if (plan.points.empty()) throw ConfigError(source, c.issues);
    unchecked = swept_sections(root);
  }

  // Each point is validated as a whole config. A problem found at every point belongs to the base
  // config and is reported once, plainly; one found at some points names the first of them.
  struct Found {
    ConfigIssue issue;
    std::size_t count = 0;
    std::size_t first_point = 0;
  };
  std::vector<Found> found;
  std::vector<json> resolved_points;
  std::size_t total_layers = 0;
  for (std::size_t p = 0; p < plan.points.size(); ++p) {
    json point = base;
    Checker pc;
    for (const auto& [key, value] : plan.points[p].overrides) set_dotted(point, key, value);
    const std::string act_path = plan.points[p].activation_path.empty() ? "activation"
                                                                         : plan.points[p].activation_path;
    ConfigPoint cp;
    cp.index = static_cast<std::int64_t>(p);
    cp.spec = parse_point(point, act_path, pc);
    // Every point keeps its widths: bound their total so a deep sweep cannot exhaust memory here.
    total_layers += cp.spec.network.widths.size();
    if (total_layers > kMaxTotalLayers) {
      c.fail("sweep", "its points have more than " + std::to_string(kMaxTotalLayers) + " layers in all (" +
                          std::to_string(plan.points.size()) + " points, " + std::to_string(cp.spec.network.depth()) +
                          " layers at point " + std::to_string(p) + "), more than this program holds in memory; "
                          "split the sweep into several configs");
      throw ConfigError(source, c.issues);
    }
    for (const auto& issue : pc.issues) {
      if (unchecked.count(issue.path.substr(0, issue.path.find_first_of(".[")))) continue;
      auto it = std::find_if(found.begin(), found.end(), [&](const Found& f) {
        return f.issue.path == issue.path && f.issue.message == issue.message;
      });
      if (it == found.end()) {
        found.push_back({issue, 1, p});
      } else {
        ++it->count;
      }
    }
    if (!pc.issues.empty()) continue;
    cp.resolved = to_json(cp.spec);
    resolved_points.push_back(cp.resolved);
    ex.points.push_back(std::move(cp));
  }
  const std::size_t list_size = plan.activation_list ? root.at("activation").size() : 1;
  for (const auto& f : found) {
    ConfigIssue issue = f.issue;
    // An issue of a list entry (activation[1].alpha) can be found only at the points of that entry;
    // as a sweep key, its path is activation.alpha.
    const bool from_list = plan.activation_list && issue.path.rfind("activation[", 0) == 0;
    const std::size_t close = issue.path.find(']');
    const std::string key_path = from_list ? "activation" + issue.path.substr(close + 1) : issue.path;
    if (f.count < plan.points.size() / (from_list ? list_size : 1)) {
      issue.message += " [at sweep point " + std::to_string(f.first_point) + ": " + plan.points[f.first_point].label;
      if (f.count > 1) issue.message += ", and " + std::to_string(f.count - 1) + " more";
      issue.message += "]";
    } else {
      // Found at every point, but made by the sweep: it sets the key, or one the message names.
      for (const auto& key : plan.swept_keys) {
        if (from_list && key == "activation") continue;  // the list itself
        const std::string last = key.substr(key.rfind('.') + 1);
        if (key_path != key && issue.message.find("'" + last + "'") == std::string::npos) continue;
        if (from_list) {
          const json& entry = root.at("activation").at(std::stoul(issue.path.substr(11, close - 11)));
          issue.message += " [" + sweep_path(root, key) + " sets it for every activation of the list, " +
                           format_value(entry.is_object() ? entry.value("name", json("?")) : entry) + " (" +
                           issue.path.substr(0, close + 1) + ") among them]";
        } else {
          issue.message += " [every sweep point sets " + key + "]";
        }
        break;
      }
    }
    c.issues.push_back(issue);
  }
  // Two points that resolve to the same config: an activation under two names ("silu" and
  // "swish", "elu" and {"name": "elu"}), which plan_sweep's check of what each axis lists misses.
  if (c.issues.empty()) {
    std::map<std::string, std::size_t> first;  // by hash_hex of the resolved config
    for (std::size_t p = 0; p < resolved_points.size(); ++p) {
      const auto [it, inserted] = first.emplace(hash_hex(resolved_points[p].dump()), p);
      if (inserted || resolved_points[it->second] != resolved_points[p]) continue;
      c.fail(plan.activation_list ? "activation" : "sweep",
             "sweep points " + std::to_string(it->second) + " (" + plan.points[it->second].label + ") and " +
                 std::to_string(p) + " (" + plan.points[p].label + ") are the same point, written two ways; list "
                 "each once (monte_carlo.trials repeats a point's measurement)");
      break;
    }
  }
  if (!c.issues.empty()) throw ConfigError(source, c.issues);

  // Keys whose resolved value differs between points become result datasets.
  ex.varied = varied_keys(plan, resolved_points);
  for (auto& point : ex.points) {
    for (const auto& v : ex.varied) point.varied_values.push_back(get_dotted(point.resolved, v.key));
  }
  ex.grid_shape = plan.grid_shape;

  ex.resolved = resolved_points.front();
  ex.resolved["name"] = ex.name;
  if (!description.empty()) ex.resolved["description"] = description;
  ex.resolved["seed"] = ex.seed;
  ex.resolved["device"] = std::string(to_string(ex.device.device));
  ex.resolved["cuda"] = {{"tf32", ex.device.tf32}};
  ex.resolved["output"] = {{"per_trial", ex.output.per_trial}};
  if (!plan.resolved_sweep.is_null()) ex.resolved["sweep"] = plan.resolved_sweep;
  if (plan.activation_list) {
    // Each entry of the list with its defaults filled in (entries are valid: every point parsed).
    json list = json::array();
    for (const auto& entry : root.at("activation")) {
      Checker ignored;
      list.push_back(activation_json(parse_activation(entry, "activation", ignored)));
    }
    ex.resolved["activation"] = list;
  }
  ex.hash = experiment_hash(ex.resolved, ex.device);
  return ex;
}

Experiment load_experiment(const std::filesystem::path& file) {
  // Configs are a few KiB; a cap keeps a mistaken path (/dev/zero, a result file) from filling memory.
  constexpr std::size_t kMaxConfigBytes = std::size_t(16) << 20;
  std::error_code ec;
  if (std::filesystem::is_directory(file, ec)) {
    throw FileError(file.string() + ": is a folder, not a config file; give the path of a JSON config such as "
                    "configs/default.json");
  }
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    const bool exists = std::filesystem::exists(file, ec);
    throw FileError(file.string() + ": cannot read the config (" +
                    (exists ? std::string("permission denied or not a file") : std::string("no such file")) +
                    "); check the path");
  }
  std::string text;
  char buffer[65536];
  while (in.read(buffer, sizeof buffer) || in.gcount() > 0) {
    text.append(buffer, static_cast<std::size_t>(in.gcount()));
    if (text.size() > kMaxConfigBytes) {
      throw FileError(file.string() + ": is larger than " + std::to_string(kMaxConfigBytes >> 20) +
                      " MiB, far more than any config (a few KiB); is it the right file?");
    }
  }
  if (in.bad()) throw FileError(file.string() + ": cannot read the config (read error)");
  return parse_experiment(text, file.string(), file.stem().string());
}

Experiment with_seed(const Experiment& experiment, std::uint64_t seed) {
  Experiment ex = experiment;
  ex.seed = seed;
  ex.resolved["seed"] = seed;
  ex.hash = experiment_hash(ex.resolved, ex.device);
  return ex;
}

Experiment with_device(const Experiment& experiment, const DeviceOptions& device) {
  Experiment ex = experiment;
  ex.device = device;
  ex.resolved["device"] = std::string(to_string(device.device));
  ex.resolved["cuda"] = {{"tf32", device.tf32}};
  ex.hash = experiment_hash(ex.resolved, ex.device);
  return ex;
}

std::string_view to_string(Device d) { return d == Device::cuda ? "cuda" : "cpu"; }

}  // namespace selfnorm::io
