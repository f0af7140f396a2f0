// What the command line shows: progress on stderr, summary tables and listings on stdout.
#pragma once

#include <chrono>
#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include "cli/units.hpp"
#include "io/config.hpp"
#include "io/results.hpp"

namespace selfnorm::cli {

// Progress of a run on stderr: points and trials done, work rate and ETA. Silent for the first
// second; on a terminal one line rewritten in place, otherwise (a Slurm log) a line every 10 s.
class ProgressDisplay {
 public:
  ProgressDisplay(bool enabled, std::int64_t points, double total_flop);
  // A point starts: its position among the points this run computes, label, trials and cost.
  void start_point(std::int64_t ordinal, const std::string& label, std::int64_t trials, double flop);
  // Inside the current point: layer passes done out of the total (2 per layer and trial).
  void update(std::int64_t done, std::int64_t total);
  void finish_point();
  // Clears the progress line.
  void finish();
  double elapsed_seconds() const;

 private:
  void show(bool force);

  bool enabled_;
  bool tty_;
  std::int64_t points_;
  double total_flop_;
  double done_flop_ = 0.0;
  double point_flop_ = 0.0;
  double point_fraction_ = 0.0;
  std::int64_t ordinal_ = 0;
  std::int64_t trials_ = 0;
  std::string label_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_shown_;
  bool shown_ = false;
};

// A short label for point `p`: its varied values ("selu", "alpha=1.6, lambda=1.05"), or "".
std::string point_label(const io::Experiment& experiment, std::int64_t p);

// Per-layer summary tables (activation mean and variance, gradient mean square) for the records.
void print_summary(std::ostream& out, const io::Experiment& experiment, const std::vector<io::PointRecord>& records);

// The activations with their formulas, parameters and defaults.
void print_activations(std::ostream& out);

}  // namespace selfnorm::cli
