// Experiment configs: JSON in, validated PointSpecs out.
//
// Validation is strict and reports every problem at once. Each problem names its place as a
// dotted path ("network.width", "activation[2].alpha"), what is wrong, and what would work.
// The schema is documented in configs/README.md; the keys are the field names of core/spec.hpp
// (InitSpec::kind is the key init.name).
#pragma once

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/spec.hpp"

namespace selfnorm::io {

// Most points one experiment may have (each is validated and kept in memory before a run), and so
// the most shards that make sense.
inline constexpr std::int64_t kMaxPoints = 100'000;

// One problem found in a config.
struct ConfigIssue {
  std::string path;     // dotted JSON path, "" for the document itself
  std::string message;  // what is wrong and what would work
};

// A config that cannot be used; what() lists every issue, one per line. The source and the issues
// are kept printable (see printable()), so a message never carries bytes that are not UTF-8.
class ConfigError : public std::runtime_error {
 public:
  ConfigError(std::string source, std::vector<ConfigIssue> issues);
  const char* what() const noexcept override { return message_.c_str(); }
  const std::vector<ConfigIssue>& issues() const { return issues_; }
  const std::string& source() const { return source_; }

 private:
  std::string source_;
  std::vector<ConfigIssue> issues_;
  std::string message_;
};

// A file that cannot be read.
class FileError : public std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Where the matrix work runs.
enum class Device { cpu, cuda };

// How an experiment is computed: the config's "device" and "cuda" keys, which the command line's
// --device and --tf32 override. On the CPU the CUDA options change nothing.
struct DeviceOptions {
  Device device = Device::cpu;
  bool tf32 = false;  // cuda.tf32: float32 GEMMs on TF32 tensor cores (10-bit mantissa inputs)
};

std::string_view to_string(Device d);

// What a run writes besides the statistics.
struct OutputSpec {
  bool per_trial = false;  // also write [point, trial, layer] datasets
};

// One configuration point of an experiment.
struct ConfigPoint {
  std::int64_t index = 0;
  PointSpec spec;
  nlohmann::ordered_json resolved;  // this point's complete config, without the sweep section
  // The value of each varied key at this point, in Experiment::varied order.
  std::vector<nlohmann::ordered_json> varied_values;
};

// A key that takes different values across the points.
struct VariedKey {
  std::string key;      // dotted config path, e.g. "activation.alpha"
  std::string dataset;  // root dataset name in the result file, e.g. "alpha"
  std::int64_t axis = -1;  // the sweep axis it varies along (index into Experiment::grid_shape)
};

// A validated experiment: its points in order.
struct Experiment {
  std::string name;
  std::uint64_t seed = 0;
  DeviceOptions device;
  OutputSpec output;
  nlohmann::ordered_json resolved;  // the whole config with every default filled in
  // 16 hex digits over everything that affects the statistics: the device and its options count
  // only on the GPU, so that CPU results keep their hash.
  std::string hash;
  std::vector<VariedKey> varied;
  std::vector<std::int64_t> grid_shape;  // shape of a grid sweep over the varied keys, else empty
  std::vector<ConfigPoint> points;
};

// Parses and validates a config. `source` names it in messages (a file name).
// `default_name` is used when the config has no "name". Throws ConfigError.
Experiment parse_experiment(std::string_view text, const std::string& source, const std::string& default_name);

// Reads and validates a config file. Throws FileError or ConfigError.
Experiment load_experiment(const std::filesystem::path& file);

// The same experiment with a different seed (the command line's --seed).
Experiment with_seed(const Experiment& experiment, std::uint64_t seed);

// The same experiment on another device (the command line's --device and --tf32).
Experiment with_device(const Experiment& experiment, const DeviceOptions& device);

// The index of the first byte of `text` that is not part of well-formed UTF-8, or npos if none.
std::size_t find_invalid_utf8(std::string_view text);

// The 8 bytes an HDF5 file starts with, such as a result file.
inline constexpr std::string_view kHdf5Signature{"\x89HDF\r\n\x1a\n", 8};

// `text` fit for a message and for JSON: each byte that is not part of well-formed UTF-8, and each
// control character other than newline and tab, written as \xHH.
std::string printable(std::string_view text);

// "a, b, c": names for a message.
std::string list_names(const std::vector<std::string>& names);

// The nearest of `candidates` to `word` by edit distance, or "" if none is plausibly meant.
std::string nearest_key(std::string_view word, const std::vector<std::string>& candidates);

// The JSON of an activation with all its parameters.
nlohmann::ordered_json activation_json(const Activation& activation);

// The JSON of one point's spec, with every default filled in (the inverse of parsing).
nlohmann::ordered_json to_json(const PointSpec& spec);

// How the resolved config `here` differs from `there` (a result file's), key by key, for a message:
// "seed 0 in the file, 5 here; network.depth 4 in the file, 8 here". The keys that change nothing
// computed (name, description, output) are left out; at most `most` keys are named.
std::string config_differences(const nlohmann::ordered_json& there, const nlohmann::ordered_json& here,
                               std::size_t most = 3);

// A 64-bit FNV-1a hash of `text` as 16 hex digits.
std::string hash_hex(std::string_view text);

}  // namespace selfnorm::io
