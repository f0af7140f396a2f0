// selfnorm: Monte Carlo and mean-field signal propagation in deep dense networks.
#include <CLI/CLI.hpp>

#include <cstdlib>
#include <iostream>
#include <new>

#include "cli/commands.hpp"
#include "cli/environment.hpp"
#include "cli/errors.hpp"
#include "io/config.hpp"
#include "io/hdf5.hpp"
#include "io/lock.hpp"

int main(int argc, char** argv) {
  using namespace selfnorm::cli;
  // OMP_NUM_THREADS= (set but empty, as `OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK` leaves it outside
  // Slurm) means unset to selfnorm; LLVM's OpenMP runtime instead aborts on it at its first
  // parallel region (kmp_settings.cpp: total > 0). It reads the variable then, so drop it now.
  if (const char* v = std::getenv("OMP_NUM_THREADS"); v && *v == '\0') ::unsetenv("OMP_NUM_THREADS");
  std::string command_line;
  for (int i = 0; i < argc; ++i) command_line += (i ? " " : "") + std::string(argv[i]);

  CLI::App app{"selfnorm: Monte Carlo and mean-field signal propagation in deep dense networks"};
  app.require_subcommand(1);
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return "error: " + std::string(e.what()) + "\nRun `selfnorm --help` or `selfnorm COMMAND --help` for the options.\n";
  });
  app.set_version_flag("--version", version_line());

  RunArgs run;
  run.command_line = command_line;
  auto* run_cmd = app.add_subcommand("run", "Run an experiment config and write an HDF5 result file");
  run_cmd->add_option("config", run.config, "experiment config (JSON)")->required();
  run_cmd->add_option("-o,--output", run.output, "result file (default: results/<name>.h5)");
  run_cmd->add_option("--threads", run.threads, "threads (default: OMP_NUM_THREADS, SLURM_CPUS_PER_TASK or all)");
  run_cmd->add_option("--seed", run.seed, "override the config's seed");
  run_cmd->add_option("--parallel", run.parallel, "how threads share work: auto, trials or samples (same results)");
  run_cmd->add_option("--shard", run.shard,
                      "run shard K of N only (K/N, 0-based), or slurm/N to take K from SLURM_ARRAY_TASK_ID");
  run_cmd->add_flag("--quiet", run.quiet, "no progress and no summary");
  run_cmd->add_flag("--overwrite", run.overwrite, "replace an existing result file");
  run_cmd->add_flag("--allow-large-memory", run.allow_large_memory,
                    "run even if the memory estimate exceeds the memory available (MemAvailable)");

  std::string config;
  std::optional<int> threads;
  auto* validate_cmd = app.add_subcommand("validate", "Check a config and print its work and memory estimate");
  validate_cmd->add_option("config", config, "experiment config (JSON)")->required();
  validate_cmd->add_option("--threads", threads, "threads the estimate assumes");
  bool validate_json = false;
  validate_cmd->add_flag("--json", validate_json, "print the summary as JSON");

  std::vector<std::string> shard_files;
  std::string merge_output;
  bool merge_overwrite = false;
  auto* merge_cmd = app.add_subcommand("merge", "Merge the shard files of a sharded run into one result file");
  merge_cmd->add_option("-o,--output", merge_output, "merged result file")->required();
  merge_cmd->add_option("shards", shard_files, "shard files (results/<name>/shard-K-of-N.h5)")->required();
  merge_cmd->add_flag("--overwrite", merge_overwrite, "replace an existing result file");

  std::string shard_count;
  std::string status_folder;
  bool missing_only = false;
  auto* status_cmd = app.add_subcommand("status", "List the complete, partial and missing shards of a sharded run");
  status_cmd->add_option("config", config, "experiment config (JSON)")->required();
  status_cmd->add_option("--shards", shard_count, "number of shards N the run was split into")->required();
  status_cmd->add_option("--dir", status_folder, "folder of the shard files (default results/<name>)");
  status_cmd->add_flag("--missing", missing_only, "print only the incomplete shards, in sbatch --array= form");

  auto* print_cmd = app.add_subcommand("print-config", "Print a config with every default filled in");
  print_cmd->add_option("config", config, "experiment config (JSON)")->required();

  bool as_json = false;
  auto* act_cmd = app.add_subcommand("activations", "List the activations, their parameters and defaults");
  act_cmd->add_flag("--json", as_json, "as JSON");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every malformed command line exits 2, like a bad config.
    return app.exit(e) == 0 ? 0 : 2;
  }

  try {
    if (*run_cmd) return run_command(run);
    if (*validate_cmd) return validate_command(config, threads, validate_json);
    if (*merge_cmd) return merge_command(shard_files, merge_output, merge_overwrite, command_line);
    if (*status_cmd) return status_command(config, shard_count, status_folder, missing_only);
    if (*print_cmd) return print_config_command(config);
    if (*act_cmd) return activations_command(as_json);
  } catch (const selfnorm::io::ConfigError& e) {
    std::cerr << "error: " << e.what() << std::endl;
    return 2;
  } catch (const selfnorm::io::FileError& e) {
    std::cerr << "error: " << e.what() << std::endl;
    return 2;
  } catch (const UsageError& e) {
    std::cerr << "error: " << e.what() << std::endl;
    return 2;
  } catch (const selfnorm::io::LockedError& e) {
    std::cerr << "error: " << e.what() << std::endl;
    return 3;
  } catch (const std::bad_alloc&) {
    std::cerr << "error: out of memory (the operating system refused an allocation); `selfnorm validate CONFIG` "
                 "estimates what a run needs"
              << std::endl;
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
