#include "cli/display.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <sstream>

#include "io/shards.hpp"
#include "io/sweep.hpp"

namespace selfnorm::cli {

using json = nlohmann::ordered_json;

namespace {

// "0.9979±0.0027": the mean with as many decimals as its standard error warrants (2 significant
// digits of the error); scientific notation for very small or large values.
std::string with_error(double mean, double sem) {
  if (std::isnan(mean)) return "nan";
  if (std::isinf(mean)) return mean > 0 ? "inf" : "-inf";
  if (mean == 0.0 && !(sem > 0)) return "0";
  const double mag = std::abs(mean);
  const bool known = sem > 0 && std::isfinite(sem);
  char buf[64];
  if (known) {
    const int decimals = 1 - static_cast<int>(std::floor(std::log10(sem)));
    // Fixed notation while it stays short: moderate values, or small ones consistent with 0.
    if (decimals <= 8 && mag < 1e5 && (mag >= 1e-3 || mag < 10 * sem)) {
      const int shown = std::max(decimals, 0);
      // A mean that rounds to zero at these decimals prints as 0, not -0.0000.
      const double rounded = mag < 0.5 * std::pow(10.0, -shown) ? 0.0 : mean;
      std::snprintf(buf, sizeof buf, "%.*f±%.*f", shown, rounded, shown, sem);
    } else {
      std::snprintf(buf, sizeof buf, "%.3e±%.1e", mean, sem);
    }
    return buf;
  }
  if (mag >= 1e5 || mag < 1e-3) {
    std::snprintf(buf, sizeof buf, "%.3e", mean);
    return buf;
  }
  return format_number("%.4g", mean);
}

// Display width of a UTF-8 string (the ± sign is two bytes, one column).
std::size_t columns(const std::string& s) {
  std::size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::string pad_left(const std::string& s, std::size_t width) {
  const std::size_t c = columns(s);
  return c >= width ? s : std::string(width - c, ' ') + s;
}

std::string pad_right(const std::string& s, std::size_t width) {
  const std::size_t c = columns(s);
  return c >= width ? s : s + std::string(width - c, ' ');
}

std::vector<int> summary_layers(int depth) {
  std::vector<int> layers;
  for (int l = 1; l < depth; l *= 2) layers.push_back(l);
  layers.push_back(depth);
  return layers;
}

// True if `value` is the default of parameter `key` ("activation.alpha") for the point's activation.
bool is_default_parameter(const json& resolved, const std::string& key, const json& value) {
  const ActivationInfo* info = find_activation(resolved.at("activation").at("name").get<std::string>());
  if (!info || !value.is_number()) return false;
  const std::string param = key.substr(std::string("activation.").size());
  for (const auto& p : info->params) {
    if (p.name == param) return value.get<double>() == p.default_value;
  }
  return false;
}

// Notes on what went non-finite at a point, and what that means for its statistics.
void print_blowup_notes(std::ostream& out, const std::string& label, const io::PointRecord& r) {
  const int first = r.first_nonfinite_layer;
  if (first > 0) {
    // The statistics of a layer are NaN exactly where it holds inf/NaN entries. A layer after the
    // first can be finite again: relu maps an overflowed -inf preactivation to an exact 0.
    int blown = 0;
    for (int l = first; l <= r.depth; ++l) blown += r.nonfinite_count[static_cast<std::size_t>(l - 1)] > 0 ? 1 : 0;
    const int after = r.depth - first + 1;
    out << "\nnote: " << label << " blew up: the first inf/NaN activation is at layer " << first << " ("
        << r.nonfinite_count[static_cast<std::size_t>(first - 1)] << " entries there, see nonfinite_count in the "
        << "file); its statistics are NaN at the " << blown << " of layers " << first << " to " << r.depth
        << " that hold inf/NaN entries";
    if (blown < after) {
      out << " (the other " << after - blown << " are finite: an activation can map every overflowed entry of a "
          << "layer to a finite value, as relu maps -inf to 0, and the next layer starts afresh)";
    }
    out << ", and its gradient statistics are NaN at every layer (the backward pass runs through the blown-up "
        << "layers); the statistics of layers 1 to " << first - 1 << " are unaffected\n";
  } else {
    int top = 0;  // the backward pass starts at the last layer: the highest layer is where it blew up
    for (int l = r.depth; l >= 1 && top == 0; --l) {
      if (r.grad_nonfinite_count[static_cast<std::size_t>(l - 1)] > 0) top = l;
    }
    if (top > 0) {
      out << "\nnote: " << label << ": the gradient blew up going backwards: dL/dh has inf/NaN entries from layer "
          << top << " down (see grad_nonfinite_count in the file); the gradient statistics there are NaN\n";
    }
  }
  // Statistics beyond the range of a double while every entry is finite (float64 entries above
  // ~1e154 have squares above 1.8e308).
  constexpr int kForward = static_cast<int>(Stat::grad_activation_msq);
  std::vector<std::int64_t> overflowing;
  for (int l = 1; l <= r.depth; ++l) {
    const auto at = static_cast<std::size_t>(l - 1);
    if (r.nonfinite_count[at] > 0) break;
    bool overflow = false;
    for (int s = 0; s < kStatCount; ++s) {
      const bool gradient = s >= kForward;
      if (gradient && (first > 0 || r.grad_nonfinite_count[at] > 0)) continue;
      if (r.mean[s].size() > at && !std::isfinite(r.mean[s][at]) &&
          !(s == static_cast<int>(Stat::grad_weight_msq) && !r.has_weight_gradients)) {
        overflow = true;
      }
    }
    if (overflow) overflowing.push_back(l);
  }
  if (!overflowing.empty()) {
    out << "\nnote: " << label << ": at layers " << io::array_spec(overflowing) << " some statistics exceed the "
        << "range of a double although every entry is finite (sums of squares pass 1.8e308); they read inf or nan\n";
  }
}

// float32 runs flush numbers below 1.2e-38 to zero (the engine's FTZ/DAZ, core/parallel.cpp): a
// product of an entry near 1e-36 with a weight of 0.03 is already lost. A mean square below 1e-60
// (entries under 1e-30 in size) is within reach of that, so the layers' statistics may be biased
// low or exactly 0, which no non-finite count shows.
constexpr double kFloat32FlushReach = 1e-60;

void print_precision_notes(std::ostream& out, const std::string& label, const io::PointRecord& r,
                           Precision precision) {
  if (precision != Precision::float32) return;
  std::vector<std::int64_t> forward, backward;
  for (int l = 1; l <= r.depth; ++l) {
    const auto at = static_cast<std::size_t>(l - 1);
    auto small = [&](Stat s) {
      const auto& v = r.mean[static_cast<int>(s)];
      return v.size() > at && v[at] < kFloat32FlushReach;  // NaN (a blow-up) is not small
    };
    if (small(Stat::activation_msq)) forward.push_back(l);
    if (small(Stat::grad_activation_msq) || small(Stat::grad_preactivation_msq)) backward.push_back(l);
  }
  auto note = [&](const std::vector<std::int64_t>& layers, const char* what, const char* stats) {
    if (layers.empty()) return;
    out << "\nnote: " << label << ": at layers " << io::array_spec(layers) << " the " << what << " are below 1e-30 "
        << "in size (" << stats << " under 1e-60): float32 flushes numbers below 1.2e-38 to zero, so these "
        << "statistics may be biased low or 0; run the point in float64 (\"precision\": \"float64\") to follow "
        << "signals this small\n";
  };
  note(forward, "activations", "activation_msq");
  note(backward, "gradients", "their mean squares");
}

}  // namespace

ProgressDisplay::ProgressDisplay(bool enabled, std::int64_t points, double total_flop)
    : enabled_(enabled),
      tty_(isatty(STDERR_FILENO) != 0),
      points_(points),
      total_flop_(total_flop),
      start_(std::chrono::steady_clock::now()),
      last_shown_(start_) {}

void ProgressDisplay::start_point(std::int64_t ordinal, const std::string& label, std::int64_t trials, double flop) {
  ordinal_ = ordinal;
  label_ = label;
  trials_ = trials;
  point_flop_ = flop;
  point_fraction_ = 0.0;
  show(false);
}

void ProgressDisplay::update(std::int64_t done, std::int64_t total) {
  point_fraction_ = total > 0 ? static_cast<double>(done) / static_cast<double>(total) : 1.0;
  show(false);
}

void ProgressDisplay::finish_point() {
  done_flop_ += point_flop_;
  point_flop_ = 0.0;
  point_fraction_ = 0.0;
}

double ProgressDisplay::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void ProgressDisplay::show(bool force) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  if (elapsed < 1.0 && !force) return;
  const auto interval = tty_ ? std::chrono::milliseconds(200) : std::chrono::seconds(10);
  if (shown_ && now - last_shown_ < interval && !force) return;
  last_shown_ = now;
  shown_ = true;
  const double done = done_flop_ + point_fraction_ * point_flop_;
  const double rate = done / std::max(elapsed, 1e-9);
  const double eta = rate > 0 ? (total_flop_ - done) / rate : 0.0;
  const auto trials_done = static_cast<std::int64_t>(point_fraction_ * static_cast<double>(trials_) + 1e-9);
  std::ostringstream line;
  line << "point " << (ordinal_ + 1) << "/" << points_;
  if (!label_.empty()) line << " (" << label_ << ")";
  line << "  trials " << trials_done << "/" << trials_ << "  " << format_number("%.0f%%", 100.0 * done / std::max(total_flop_, 1.0))
       << "  " << format_number("%.1f", rate * 1e-9) << " GFLOP/s  elapsed " << format_duration(elapsed) << "  ETA "
       << format_duration(eta);
  if (tty_) {
    std::cerr << "\r\033[K" << line.str() << std::flush;
  } else {
    std::cerr << line.str() << std::endl;
  }
}

void ProgressDisplay::finish() {
  if (enabled_ && shown_ && tty_) std::cerr << "\r\033[K" << std::flush;
}

std::string point_label(const io::Experiment& experiment, std::int64_t p) {
  const auto& point = experiment.points[static_cast<std::size_t>(p)];
  std::string label;
  for (std::size_t k = 0; k < experiment.varied.size(); ++k) {
    const json& v = point.varied_values[k];
    if (v.is_null()) continue;
    if (!label.empty()) label += ", ";
    const std::string& key = experiment.varied[k].key;
    if (key == "activation.name") {
      label += v.get<std::string>();
    } else if (key.rfind("activation.", 0) == 0 && is_default_parameter(point.resolved, key, v)) {
      if (!label.empty() && label.size() >= 2) label.resize(label.size() - 2);
      continue;
    } else {
      label += experiment.varied[k].dataset + "=" + io::format_value(v);
    }
  }
  return label;
}

void print_summary(std::ostream& out, const io::Experiment& experiment, const std::vector<io::PointRecord>& records) {
  if (records.empty()) return;
  int depth = 0;
  for (const auto& r : records) depth = std::max(depth, r.depth);
  const std::vector<int> layers = summary_layers(depth);
  std::vector<std::string> labels;
  std::size_t label_width = 5;
  for (const auto& r : records) {
    std::string label = point_label(experiment, r.index);
    if (label.empty()) label = "point " + std::to_string(r.index);
    label_width = std::max(label_width, columns(label));
    labels.push_back(label);
  }
  // The points' trials: one count, or the range where a sweep varies monte_carlo.trials.
  std::int64_t fewest = records.front().trials;
  std::int64_t most = fewest;
  for (const auto& r : records) {
    fewest = std::min(fewest, r.trials);
    most = std::max(most, r.trials);
  }
  const std::string trials = fewest == most ? std::to_string(fewest) + (fewest == 1 ? " trial" : " trials")
                                            : "each point's trials (" + std::to_string(fewest) + "-" +
                                                  std::to_string(most) + ")";
  const Stat stats[] = {Stat::activation_mean, Stat::activation_var, Stat::grad_activation_msq};
  for (Stat s : stats) {
    const auto& info = stat_catalog()[static_cast<int>(s)];
    out << "\n" << info.name << " by layer: " << info.long_name << ", mean ± standard error over " << trials
        << "\n";
    std::vector<std::vector<std::string>> cells(records.size());
    std::vector<std::size_t> width(layers.size());
    for (std::size_t c = 0; c < layers.size(); ++c) width[c] = std::to_string(layers[c]).size();
    for (std::size_t p = 0; p < records.size(); ++p) {
      for (std::size_t c = 0; c < layers.size(); ++c) {
        const int l = layers[c];
        const auto& r = records[p];
        std::string cell = l <= r.depth ? with_error(r.mean[static_cast<int>(s)][static_cast<std::size_t>(l - 1)],
                                                     r.sem[static_cast<int>(s)][static_cast<std::size_t>(l - 1)])
                                        : "";
        width[c] = std::max(width[c], columns(cell));
        cells[p].push_back(cell);
      }
    }
    out << pad_right("layer", label_width);
    for (std::size_t c = 0; c < layers.size(); ++c) out << "  " << pad_left(std::to_string(layers[c]), width[c]);
    out << "\n";
    for (std::size_t p = 0; p < records.size(); ++p) {
      out << pad_right(labels[p], label_width);
      for (std::size_t c = 0; c < layers.size(); ++c) out << "  " << pad_left(cells[p][c], width[c]);
      out << "\n";
    }
  }
  for (std::size_t p = 0; p < records.size(); ++p) {
    print_blowup_notes(out, labels[p], records[p]);
    print_precision_notes(out, labels[p], records[p],
                          experiment.points[static_cast<std::size_t>(records[p].index)].spec.precision);
  }
}

void print_activations(std::ostream& out) {
  for (const auto& info : activation_catalog()) {
    out << info.name;
    if (!info.aliases.empty()) {
      out << " (also";
      for (auto a : info.aliases) out << " " << a;
      out << ")";
    }
    out << ": " << info.formula << "\n";
    for (const auto& p : info.params) {
      out << "    " << pad_right(std::string(p.name), 16) << "default " << pad_right(format_shortest(p.default_value), 22)
          << p.meaning << "\n";
    }
  }
}

}  // namespace selfnorm::cli
