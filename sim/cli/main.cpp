// selfnorm: Monte Carlo and mean-field signal propagation in deep dense networks.
#include <CLI/CLI.hpp>

#include <cstdlib>
#include <iostream>
#include <new>

#include "cli/commands.hpp"
#include "cli/device.hpp"
#include "cli/environment.hpp"
#include "cli/errors.hpp"
#include "cli/theory_command.hpp"
#include "io/config.hpp"
#include "io/hdf5.hpp"
#include "io/lock.hpp"

namespace {

// The (sub)command being parsed when parsing stopped: the deepest one that was given.
const CLI::App& innermost(const CLI::App& app) {
  const std::vector<CLI::App*> given = app.get_subcommands();
  return given.empty() ? app : innermost(*given.front());
}

// CLI11's message, made to name the word at fault and what would work where it does not.
std::string command_line_problem(const CLI::App& top, const CLI::Error& e) {
  const CLI::App& at = innermost(top);
  std::string where;  // "theory " for `selfnorm theory ...`, empty at the top
  for (const CLI::App* a = &at; a->get_parent(); a = a->get_parent()) where = a->get_name() + " " + where;
  const std::string command = "selfnorm " + where.substr(0, where.empty() ? 0 : where.size() - 1);
  const std::vector<std::string> extras = top.remaining(true);
  std::vector<std::string> commands;
  for (const CLI::App* sub : at.get_subcommands({})) commands.push_back(sub->get_name());
  if (dynamic_cast<const CLI::RequiredError*>(&e) && !commands.empty() && at.get_subcommands().empty()) {
    if (!extras.empty() && extras.front().rfind("-", 0) != 0) {
      std::string msg = "unknown " + where + "command '" + extras.front() + "'";
      const std::string near = selfnorm::io::nearest_key(extras.front(), commands);
      if (!near.empty()) msg += "; did you mean '" + near + "'?";
      return msg + " (the " + where + "commands: " + selfnorm::io::list_names(commands) + ")";
    }
    return std::string(e.what()) + ": one of " + selfnorm::io::list_names(commands);
  }
  if (dynamic_cast<const CLI::ExtrasError*>(&e) && !extras.empty()) {
    std::vector<std::string> options;
    for (const CLI::Option* o : at.get_options()) {
      for (const auto& l : o->get_lnames()) options.push_back("--" + l);
    }
    const std::string& word = extras.front();
    if (word.size() > 1 && word.front() == '-') {
      std::string msg = "unknown option " + word + " for " + command;
      const std::string near = selfnorm::io::nearest_key(word.substr(0, word.find('=')), options);
      if (!near.empty()) msg += "; did you mean " + near + "?";
      return msg;
    }
    return "unexpected argument '" + word + "' for " + command;
  }
  if (const std::string what = e.what(); what.find(" was given a disallowed flag override") != std::string::npos) {
    // "overwrite was given a disallowed flag override"
    const std::string flag = "--" + what.substr(0, what.find(' '));
    return flag + " is a flag and takes no value: give " + flag + " alone, or leave it out";
  }
  if (const std::string what = e.what(); dynamic_cast<const CLI::ArgumentMismatch*>(&e) &&
                                          what.ends_with(" missing") && what.find(": 1 required ") != std::string::npos) {
    // "--nu: 1 required FLOAT missing", for `--nu=` or a last `--nu`
    const std::string option = what.substr(0, what.find(": 1 required "));
    const std::string type = what.substr(option.size() + 13, what.size() - option.size() - 13 - 8);
    return option + " needs a value" + (type == "INT" || type == "UINT" || type == "FLOAT" ? "; give a number" : "");
  }
  if (dynamic_cast<const CLI::ConversionError*>(&e)) {
    // "Could not convert: --threads = two"
    const std::string what = e.what();
    const std::string prefix = "Could not convert: ";
    const auto eq = what.find(" = ");
    if (what.rfind(prefix, 0) == 0 && eq != std::string::npos) {
      return what.substr(prefix.size(), eq - prefix.size()) + " '" + what.substr(eq + 3) + "' is not a number";
    }
  }
  return e.what();
}

// Refuses an empty value, which CLI11 would read as 0 for a number and as "not given" for an
// optional one.
CLI::Validator non_empty(const std::string& what) {
  return CLI::Validator(
      [what](std::string& value) { return value.empty() ? "empty value; give " + what : std::string(); }, "");
}

// Gives every option of `app` and its subcommands that takes a number the non_empty check.
void refuse_empty_numbers(CLI::App& app) {
  for (CLI::Option* option : app.get_options()) {
    const std::string type = option->get_type_name();
    if (type == "INT" || type == "UINT" || type == "FLOAT") option->check(non_empty("a number"));
  }
  for (CLI::App* sub : app.get_subcommands({})) refuse_empty_numbers(*sub);
}

}  // namespace

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
  // A flag is given or not: `--overwrite=2` or `--quiet=false` is refused, not read as a value.
  app.option_defaults()->disable_flag_override();
  app.failure_message([](const CLI::App* top, const CLI::Error& e) {
    return "error: " + selfnorm::io::printable(command_line_problem(*top, e)) +
           "\nRun `selfnorm --help` or `selfnorm COMMAND --help` for the options.\n";
  });
  app.set_version_flag("--version", version_line());

  // An empty -o would otherwise mean "the default path" without saying so.
  const CLI::Validator result_file(
      [](std::string& path) { return path.empty() ? std::string("an empty path; give a file name ending in .h5") : ""; },
      "FILE.h5");

  RunArgs run;
  run.command_line = command_line;
  auto* run_cmd = app.add_subcommand("run", "Run an experiment config and write an HDF5 result file");
  run_cmd->add_option("config", run.config, "experiment config (JSON)")->required();
  run_cmd->add_option("-o,--output", run.output, "result file (default: results/<name>.h5)")->check(result_file);
  run_cmd->add_option("--threads", run.threads, "threads (default: OMP_NUM_THREADS, SLURM_CPUS_PER_TASK or all)");
  run_cmd->add_option("--seed", run.seed, "override the config's seed");
  run_cmd->add_option("--parallel", run.parallel, "how threads share work: auto, trials or samples (same results)");
  run_cmd->add_option("--matmul", run.matmul,
                      "float32 products: auto (bf16x6 where the CPU has AMX-BF16 and the batch is 256 or more, else "
                      "fma), fma (vector FMA) or "
                      "bf16x6 (matrix units, six bfloat16 products per float32 product; as accurate as fma)");
  run_cmd->add_option("--shard", run.shard,
                      "run shard K of N only (K/N, 0-based), or slurm/N to take K from SLURM_ARRAY_TASK_ID")
      ->check(non_empty("K/N or slurm/N"));
  run_cmd->add_flag("--quiet", run.quiet, "no progress and no summary");
  run_cmd->add_flag("--overwrite", run.overwrite, "replace an existing result file");
  run_cmd->add_flag("--allow-large-memory", run.allow_large_memory,
                    "run even if the memory estimate exceeds the memory available (MemAvailable, or the "
                    "control group's limit)");
  run_cmd->add_option("--device", run.device,
                      std::string("compute on cpu or cuda (an NVIDIA GPU), overriding the config's \"device\"") +
                          (has_cuda_backend() ? "" : "; this build has no CUDA backend"));
  run_cmd->add_flag("--tf32", run.tf32, "with --device cuda: float32 GEMMs on TF32 tensor cores (faster, ~1e-3 "
                                        "relative error in each product; the config's cuda.tf32)");

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
  merge_cmd->add_option("-o,--output", merge_output, "merged result file")->required()->check(result_file);
  merge_cmd->add_option("shards", shard_files, "shard files (results/<name>/shard-K-of-N.h5)")->required();
  merge_cmd->add_flag("--overwrite", merge_overwrite, "replace an existing result file");

  std::string shard_count;
  std::string status_folder;
  bool missing_only = false;
  auto* status_cmd = app.add_subcommand("status", "List the complete, partial and missing shards of a sharded run");
  status_cmd->add_option("config", config, "experiment config (JSON)")->required();
  status_cmd->add_option("--shards", shard_count, "number of shards N the run was split into")->required();
  status_cmd->add_option("--dir", status_folder, "folder of the shard files (default results/<name>)")
      ->check(non_empty("a folder"));
  status_cmd->add_flag("--missing", missing_only,
                       "print only the incomplete shards that are not being written now, in sbatch --array= form "
                       "(for submit.py --only)");
  std::optional<std::string> status_device;
  bool status_tf32 = false;
  status_cmd->add_option("--device", status_device, "the --device the shards were run with (cpu or cuda)");
  status_cmd->add_flag("--tf32", status_tf32, "the shards were run with --tf32");

  auto* print_cmd = app.add_subcommand("print-config", "Print a config with every default filled in");
  print_cmd->add_option("config", config, "experiment config (JSON)")->required();

  bool as_json = false;
  auto* act_cmd = app.add_subcommand("activations", "List the activations, their parameters and defaults");
  act_cmd->add_flag("--json", as_json, "as JSON");

  TheoryArgs theory;
  auto* theory_cmd = app.add_subcommand("theory", "Mean-field theory: map, jacobian, fixed-point, solve, dropout, "
                                                  "depth-scales");
  theory_cmd->require_subcommand(1);
  auto activation_options = [&](CLI::App* c) {
    c->add_option("--activation", theory.activation, "activation (default selu)");
    c->add_option("--alpha", theory.alpha, "the activation's alpha");
    c->add_option("--lambda", theory.lambda, "selu's lambda");
    c->add_option("--param", theory.params, "any parameter as NAME=VALUE (repeatable)");
    c->add_flag("--json", theory.json, "print JSON");
  };
  auto map_options = [&](CLI::App* c) {
    c->add_option("--mu", theory.mu, "mean of the lower layer (default 0)");
    c->add_option("--omega", theory.omega, "sum of the incoming weights (default 0)");
    c->add_option("--nu", theory.nu, "variance of the lower layer (default 1)");
    c->add_option("--tau", theory.tau, "sum of the squared incoming weights (default 1)");
  };
  std::vector<CLI::App*> theory_verbs;
  auto* t_map = theory_cmd->add_subcommand("map", "(mu, nu) -> (mu~, nu~) of the SNN paper's map");
  activation_options(t_map);
  map_options(t_map);
  auto* t_jac = theory_cmd->add_subcommand("jacobian", "the map's Jacobian, eigenvalues and spectral norm");
  activation_options(t_jac);
  map_options(t_jac);
  auto* t_fp = theory_cmd->add_subcommand("fixed-point", "the map's fixed point and its stability");
  activation_options(t_fp);
  t_fp->add_option("--omega", theory.omega, "sum of the incoming weights (default 0)");
  t_fp->add_option("--tau", theory.tau, "sum of the squared incoming weights (default 1)");
  t_fp->add_option("--mu", theory.mu, "starting mean (default 0)");
  t_fp->add_option("--nu", theory.nu, "starting variance (default 1)");
  auto* t_solve = theory_cmd->add_subcommand("solve", "selu's alpha and lambda for a chosen fixed point");
  t_solve->add_option("--mean", theory.mean, "fixed-point mean (default 0)");
  t_solve->add_option("--var", theory.var, "fixed-point variance (default 1)");
  t_solve->add_option("--omega", theory.omega, "weights' sum; 0 with tau 1 is the paper's convention (default 0)");
  t_solve->add_option("--tau", theory.tau, "weights' sum of squares (default 1)");
  t_solve->add_flag("--json", theory.json, "print JSON");
  auto* t_drop = theory_cmd->add_subcommand("dropout", "alpha dropout's (a, b) for a keep probability");
  activation_options(t_drop);
  t_drop->add_option("--keep", theory.keep, "probability of keeping a unit, the paper's q (default 0.95)");
  t_drop->add_option("--mean", theory.mean, "fixed-point mean to keep (default 0)");
  t_drop->add_option("--var", theory.var, "fixed-point variance to keep (default 1)");
  auto* t_depth = theory_cmd->add_subcommand("depth-scales", "q*, chi and the depth scales xi_q, xi_c");
  activation_options(t_depth);
  t_depth->add_option("--weight-variance", theory.weight_variance, "sigma_w^2: weights ~ N(0, sigma_w^2/n)");
  t_depth->add_option("--bias-variance", theory.bias_variance, "sigma_b^2 (default 0)");
  theory_verbs = {t_map, t_jac, t_fp, t_solve, t_drop, t_depth};
  refuse_empty_numbers(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every malformed command line exits 2, like a bad config.
    return app.exit(e) == 0 ? 0 : 2;
  }

  // Every message is made printable: a file name or config need not be UTF-8.
  const auto fail = [](const std::exception& e, int status) {
    std::cerr << "error: " << selfnorm::io::printable(e.what()) << std::endl;
    return status;
  };
  try {
    if (*run_cmd) return run_command(run);
    if (*validate_cmd) return validate_command(config, threads, validate_json);
    if (*merge_cmd) return merge_command(shard_files, merge_output, merge_overwrite, command_line);
    if (*status_cmd) return status_command(config, shard_count, status_folder, missing_only, status_device, status_tf32);
    if (*print_cmd) return print_config_command(config);
    if (*act_cmd) return activations_command(as_json);
    for (auto* verb : theory_verbs) {
      if (*verb) {
        theory.verb = verb->get_name();
        return theory_command(theory);
      }
    }
  } catch (const selfnorm::io::ConfigError& e) {
    return fail(e, 2);
  } catch (const selfnorm::io::FileError& e) {
    return fail(e, 2);
  } catch (const UsageError& e) {
    return fail(e, 2);
  } catch (const selfnorm::io::LockedError& e) {
    return fail(e, 3);
  } catch (const DeviceError& e) {
    return fail(e, 4);
  } catch (const std::bad_alloc&) {
    std::cerr << "error: out of memory (the operating system refused an allocation); `selfnorm validate CONFIG` "
                 "estimates what a run needs"
              << std::endl;
    return 1;
  } catch (const std::exception& e) {
    return fail(e, 1);
  }
  return 0;
}
