#include "cli/commands.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "cli/display.hpp"
#include "cli/environment.hpp"
#include "cli/errors.hpp"
#include "core/engine.hpp"
#include "io/config.hpp"
#include "io/results.hpp"

namespace selfnorm::cli {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

namespace {

ParallelMode parse_parallel(const std::string& s) {
  if (s == "auto") return ParallelMode::automatic;
  if (s == "trials") return ParallelMode::trials;
  if (s == "samples") return ParallelMode::samples;
  throw UsageError("--parallel " + s + " is not valid; use auto, trials or samples");
}

// Checks before any work that results can be written into `path`'s folder.
void check_output_path(const fs::path& path, bool overwrite) {
  const fs::path folder = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  std::error_code ec;
  if (!fs::is_directory(folder, ec)) {
    throw UsageError("output folder " + folder.string() + " does not exist; create it or choose another path with -o");
  }
  if (fs::exists(path, ec) && !overwrite) {
    throw UsageError(path.string() + " already exists; pass --overwrite to replace it (the old file stays intact "
                     "until the new one is complete) or choose another path with -o");
  }
  if (fs::is_directory(path, ec)) throw UsageError(path.string() + " is a folder; -o needs a file name ending in .h5");
  if (::access(folder.c_str(), W_OK) != 0) {
    throw UsageError("output folder " + folder.string() + " is not writable; choose another path with -o");
  }
}

}  // namespace

int run_command(const RunArgs& args) {
  io::Experiment ex = io::load_experiment(args.config);
  if (args.seed) ex = io::with_seed(ex, *args.seed);
  const ThreadChoice threads = choose_threads(args.threads);
  RunOptions options;
  options.threads = threads.threads;
  options.parallel = parse_parallel(args.parallel);
  const fs::path out = args.output.empty() ? fs::path("results") / (ex.name + ".h5") : fs::path(args.output);
  check_output_path(out, args.overwrite);

  double total_flop = 0.0;
  std::size_t peak_bytes = 0;
  std::vector<double> point_flop;
  for (const auto& point : ex.points) {
    const WorkEstimate e = estimate_work(point.spec, options);
    point_flop.push_back(e.gemm_flop);
    total_flop += e.gemm_flop;
    peak_bytes = std::max(peak_bytes, e.buffer_bytes);
  }
  if (!args.quiet) {
    std::cerr << "selfnorm: " << ex.name << ": " << ex.points.size() << " point" << (ex.points.size() == 1 ? "" : "s")
              << ", " << total_flop * 1e-9 << " GFLOP, buffers " << format_bytes(static_cast<double>(peak_bytes))
              << ", " << threads.threads << " thread" << (threads.threads == 1 ? "" : "s") << " ("
              << threads.source << ")" << std::endl;
  }

  ProgressDisplay progress(!args.quiet, static_cast<std::int64_t>(ex.points.size()), total_flop);
  std::vector<io::PointRecord> records;
  for (const auto& point : ex.points) {
    progress.start_point(point.index, point_label(ex, point.index), point.spec.monte_carlo.trials,
                         point_flop[static_cast<std::size_t>(point.index)]);
    const PointResult result = simulate_point(
        point.spec, StreamSeed{ex.seed, static_cast<std::uint64_t>(point.index)}, options,
        [&](std::int64_t done, std::int64_t total) { progress.update(done, total); });
    progress.finish_point();
    records.push_back(io::make_record(point.index, result, ex.output.per_trial));
  }
  progress.finish();
  const double seconds = progress.elapsed_seconds();
  io::write_results(out, ex, records, current_provenance(threads.threads, args.command_line));
  if (!args.quiet) {
    print_summary(std::cout, ex, records);
    std::cout << "\nwrote " << out.string() << " (" << records.size() << " point" << (records.size() == 1 ? "" : "s")
              << ", " << format_duration(seconds) << " on " << threads.threads << " thread"
              << (threads.threads == 1 ? "" : "s") << ", " << total_flop * 1e-9 / std::max(seconds, 1e-9)
              << " GFLOP/s)" << std::endl;
  }
  return 0;
}

int validate_command(const std::string& config, std::optional<int> requested_threads) {
  const io::Experiment ex = io::load_experiment(config);
  const ThreadChoice threads = choose_threads(requested_threads);
  RunOptions options;
  options.threads = threads.threads;
  double total_flop = 0.0;
  std::size_t peak_bytes = 0;
  for (const auto& point : ex.points) {
    const WorkEstimate e = estimate_work(point.spec, options);
    total_flop += e.gemm_flop;
    peak_bytes = std::max(peak_bytes, e.buffer_bytes);
  }
  std::cout << config << ": valid\n";
  std::cout << "  experiment   " << ex.name << " (config hash " << ex.hash << ", seed " << ex.seed << ")\n";
  std::cout << "  points       " << ex.points.size();
  if (!ex.grid_shape.empty()) {
    std::cout << " (grid";
    for (auto n : ex.grid_shape) std::cout << " " << n;
    std::cout << ")";
  }
  std::cout << "\n";
  if (!ex.varied.empty()) {
    std::cout << "  varied       ";
    for (std::size_t k = 0; k < ex.varied.size(); ++k) std::cout << (k ? ", " : "") << ex.varied[k].key;
    std::cout << "\n";
  }
  std::cout << "  work         " << total_flop * 1e-9 << " GFLOP of matrix products\n";
  std::cout << "  memory       " << format_bytes(static_cast<double>(peak_bytes)) << " of engine buffers at the "
            << "largest point with " << threads.threads << " thread" << (threads.threads == 1 ? "" : "s") << "\n";
  return 0;
}

int print_config_command(const std::string& config) {
  const io::Experiment ex = io::load_experiment(config);
  std::cout << ex.resolved.dump(2) << std::endl;
  return 0;
}

int activations_command(bool as_json) {
  if (!as_json) {
    print_activations(std::cout);
    return 0;
  }
  json list = json::array();
  for (const auto& info : activation_catalog()) {
    json params = json::object();
    for (const auto& p : info.params) params[std::string(p.name)] = p.default_value;
    json aliases = json::array();
    for (auto a : info.aliases) aliases.push_back(std::string(a));
    list.push_back({{"name", std::string(info.name)}, {"formula", std::string(info.formula)}, {"parameters", params},
                    {"aliases", aliases}});
  }
  std::cout << list.dump(2) << std::endl;
  return 0;
}

}  // namespace selfnorm::cli
