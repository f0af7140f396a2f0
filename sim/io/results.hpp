// Result files: self-describing HDF5, one row per configuration point.
//
// Layout (schema "selfnorm.results", see results/README.md for the full description):
//   /point [P], /layer [L], /trial [T]        dimension scales (netCDF-4 coordinates)
//   /<varied key> [P]                          e.g. activation, alpha, lambda, depth
//   /<statistic> [P, L] and /<statistic>_sem   mean over trials and its standard error
//   /<statistic>_per_trial [P, T, L]           when output.per_trial is set
//   /nonfinite_count, /grad_nonfinite_count [P, L], /first_nonfinite_layer [P]
//   /point_config [P]                          each point's resolved config as JSON
//   /point_matmul [P]                          how the point's products were computed
//   root attributes: schema, schema_version, config, config_hash, seed, provenance (with the device,
//                    and on a GPU its name and the device time), grid shape
// Layers beyond a point's depth hold NaN (statistics) or -1 (counts).
//
// The file follows the netCDF-4 and CF conventions, so xarray.open_dataset(path,
// engine="h5netcdf") reads it without project code: every dataset has long_name and (unless it
// holds strings) units; the datasets over [point] name the varied keys in a CF `coordinates`
// attribute, so those become coordinates on `point`; padding is declared by `_FillValue`.
//
// Versions: 1, the first; 2 adds the netCDF/CF metadata (`Conventions`, `coordinates`,
// `_FillValue`, units on every numeric dataset) and the sweep's axes (`grid_axes`, `grid_axis`).
// The datasets and their values are the same in both, so this version reads both.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/engine.hpp"
#include "io/config.hpp"

namespace selfnorm::io {

inline constexpr const char* kSchemaName = "selfnorm.results";
inline constexpr std::int64_t kSchemaVersion = 2;
// The oldest version read_records reads.
inline constexpr std::int64_t kOldestReadableSchemaVersion = 1;

// A file that could not be written: what() names the path, the operating system's reason and a
// remedy ("no space left on device ...; free some space ..."). Nothing is left under the final
// name when a result write fails.
class WriteError : public std::runtime_error {
 public:
  // `action` says what failed ("write", "create the lock file"); `error_code` is the errno, 0 if unknown.
  WriteError(const std::filesystem::path& path, int error_code, const std::string& action,
             const std::string& detail = {});
  int error_code() const { return error_code_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  int error_code_ = 0;
};

// Where and how a result was produced.
struct Provenance {
  std::string program_version;
  std::string git_commit;
  std::string compiler;
  std::string build_type;
  std::string gemm_backend;
  std::string host;
  std::string created_utc;  // ISO 8601, e.g. 2026-11-23T23:24:09Z
  std::string command_line;
  std::int64_t threads = 1;
  std::string device = "cpu";      // "cpu" or "cuda"
  std::string gpu_name;            // on "cuda": the GPU, its compute capability and CUDA versions
  double gpu_seconds = -1.0;       // on "cuda": device time of the points this process computed
  double gpu_gemm_seconds = -1.0;  // of which inside cuBLAS GEMMs
};

// Which share of the points a file holds: shard `index` of `count` (points p with p % count == index).
struct ShardInfo {
  std::int64_t index = 0;
  std::int64_t count = 1;
};

// One point's statistics as stored in a file.
struct PointRecord {
  std::int64_t index = 0;
  int depth = 0;
  std::int64_t trials = 0;
  bool has_weight_gradients = false;
  std::string matmul;  // PointResult::matmul; empty in files written before it was recorded
  std::array<std::vector<double>, kStatCount> mean;       // [layer - 1]
  std::array<std::vector<double>, kStatCount> sem;        // [layer - 1]
  std::array<std::vector<double>, kStatCount> per_trial;  // [t * depth + layer - 1], or empty
  std::vector<std::int64_t> nonfinite_count;              // [layer - 1], summed over trials
  std::vector<std::int64_t> grad_nonfinite_count;
  int first_nonfinite_layer = 0;
  // Mean-field predictions by dataset name: per layer ("theory_activation_var", [layer - 1]) and
  // per point ("theory_xi_q").
  std::vector<std::pair<std::string, std::vector<double>>> theory_layers;
  std::vector<std::pair<std::string, double>> theory_point;
};

// The record of point `index` from its engine result; per-trial values are kept if asked for.
PointRecord make_record(std::int64_t index, const PointResult& result, bool keep_per_trial);

// Adds the infinite-width predictions for `spec` to `record`: theory_<statistic> per layer, and
// the depth scales theory_q_star, theory_chi_star, theory_xi_q, theory_xi_c per point (NaN where
// undefined: non-uniform widths, weight or bias means, alpha dropout, or no fixed point).
void add_predictions(PointRecord& record, const PointSpec& spec);

// Writes `records` (any subset of the experiment's points, in increasing index order) to `path`
// atomically: to a temporary name in the same folder, flushed to disk, then renamed. An existing
// file at `path` is replaced only by the rename, so it stays intact if anything fails.
void write_results(const std::filesystem::path& path, const Experiment& experiment,
                   const std::vector<PointRecord>& records, const Provenance& provenance,
                   const std::optional<ShardInfo>& shard = std::nullopt);

// Removes the temporary files that interrupted writes of `output` left in its folder
// (".<name>.tmp-*"); returns how many. Call it only while holding the output's lock
// (io/lock.hpp), which guarantees that no other process is writing them.
int remove_stale_temporaries(const std::filesystem::path& output);

// What a result file says about itself.
struct FileHeader {
  std::string schema;
  std::int64_t schema_version = 0;
  std::string config;       // resolved config JSON
  std::string config_hash;
  std::int64_t point_total = 0;  // points in the whole experiment
  std::optional<ShardInfo> shard;
  std::string device = "cpu";  // the provenance attribute "device" ("cpu" in files older than it)
  std::string gpu_name;        // and "gpu_name", where present
  std::string gemm_backend;    // the provenance attributes "gemm_backend" and "threads"
  std::int64_t threads = -1;
  std::string program_version;  // and "program_version" and "git_commit"
  std::string git_commit;
  bool per_trial = false;      // holds <statistic>_per_trial datasets (output.per_trial)
};

// "output.per_trial true": a file's or a config's setting, for messages about files written with
// the other one (the setting is not part of the config hash).
std::string per_trial_setting(bool per_trial);

// `provenance` also names the programs, kernels and threads of `earlier`, the files whose points it
// takes (shards being merged, the checkpoints of a run resumed): each of program_version,
// git_commit and gemm_backend lists every distinct value, "; "-separated, the provenance's own
// first, and thread counts that differ give -1.
void name_earlier(Provenance& provenance, const std::vector<FileHeader>& earlier);

// Reads the header; throws h5::Error or std::runtime_error if `path` is not a selfnorm result.
FileHeader read_header(const std::filesystem::path& path);

// Reads every point record of a result file of a schema version from kOldestReadableSchemaVersion
// to kSchemaVersion; throws std::runtime_error for another version. The file's header goes to
// `header`, if given (it is read once either way).
std::vector<PointRecord> read_records(const std::filesystem::path& path, FileHeader* header = nullptr);

}  // namespace selfnorm::io
