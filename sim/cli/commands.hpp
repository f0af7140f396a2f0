// The subcommands of the selfnorm executable.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace selfnorm::cli {

struct RunArgs {
  std::string config;
  std::string output;                 // empty: results/<name>.h5
  std::optional<int> threads;
  std::optional<std::uint64_t> seed;
  std::string parallel = "auto";      // auto | trials | samples
  bool quiet = false;
  bool overwrite = false;
  std::string command_line;
};

int run_command(const RunArgs& args);
int validate_command(const std::string& config, std::optional<int> threads);
int print_config_command(const std::string& config);
int activations_command(bool json);

}  // namespace selfnorm::cli
