// The subcommands of the selfnorm executable.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace selfnorm::cli {

struct RunArgs {
  std::string config;
  std::string output;                 // empty: results/<name>.h5
  std::optional<int> threads;
  std::optional<std::string> seed;    // an integer from 0 to 2^63 - 1, checked by run_command
  std::string parallel = "auto";      // auto | trials | samples
  std::string matmul = "auto";        // auto | fma | bf16x6: how the float32 products are computed
  std::string shard;                  // "K/N", "slurm/N" or empty
  bool quiet = false;
  bool overwrite = false;
  bool allow_large_memory = false;    // run even if the estimate exceeds MemAvailable or the cgroup's limit
  std::optional<std::string> device;  // cpu | cuda: overrides the config's "device"
  bool tf32 = false;                  // TF32 GEMMs on the GPU (the config's cuda.tf32)
  std::string command_line;
};

int run_command(const RunArgs& args);
int validate_command(const std::string& config, std::optional<int> threads, bool json);
int merge_command(const std::vector<std::string>& shards, const std::string& output, bool overwrite,
                  const std::string& command_line);
// `device`, `tf32`: as given to the runs (--device, --tf32), which change the config hash on the GPU.
int status_command(const std::string& config, const std::string& shards, const std::string& folder, bool missing_only,
                   const std::optional<std::string>& device = std::nullopt, bool tf32 = false);
int print_config_command(const std::string& config);
int activations_command(bool json);

}  // namespace selfnorm::cli
