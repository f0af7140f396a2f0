// Splitting an experiment's points into shards, checkpointing finished points, and merging
// shard files back into one result.
//
// Shard k of n holds the points p with p % n == k (round-robin, so every shard gets a mix of
// cheap and expensive points of a grid). A point's seed is derived from (seed, p), so its result
// never depends on the split.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "io/config.hpp"
#include "io/results.hpp"

namespace selfnorm::io {

// The points of shard `shard` (all points without one), in increasing order.
std::vector<std::int64_t> shard_points(std::int64_t point_count, const std::optional<ShardInfo>& shard);

// "0,2-4,7": indices in the compact form sbatch --array= takes.
std::string array_spec(const std::vector<std::int64_t>& indices);

// The default result path of shard k of n: results/<name>/shard-<k>-of-<n>.h5.
std::filesystem::path shard_path(const std::filesystem::path& folder, std::int64_t k, std::int64_t n);

// A checkpoint folder that holds points of another experiment (config hash), another output
// setting (output.per_trial) or another split into shards: not this run's to resume, and
// `run --overwrite` may remove it.
class OtherRunCheckpoint : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The finished points of a run that has not completed, kept next to its output as
// <output>.partial/point-<index>.h5, each a complete result file with one point written
// atomically. Re-running the same command reads them back and skips those points.
class Checkpoint {
 public:
  explicit Checkpoint(const std::filesystem::path& output);
  const std::filesystem::path& folder() const { return folder_; }
  bool exists() const;
  // The records saved for this experiment and shard. Throws OtherRunCheckpoint naming the folder
  // if it holds another experiment's points (a different config hash) or another shard's, and
  // std::runtime_error for a checkpoint that cannot be read.
  // The header of each file read goes to `headers`, if given.
  std::vector<PointRecord> load(const Experiment& experiment, const std::optional<ShardInfo>& shard,
                                std::vector<FileHeader>* headers = nullptr) const;
  // Saves one finished point (creating the folder if needed). Throws WriteError if it cannot.
  void save(const Experiment& experiment, const PointRecord& record, const Provenance& provenance,
            const std::optional<ShardInfo>& shard) const;
  // Removes the folder once the final result is written.
  void remove() const;
  // Removes the temporary files of checkpoint writes that were interrupted (".point-*.tmp-*");
  // returns how many. Only while holding the output's lock (io/lock.hpp).
  int remove_stale_temporaries() const;

 private:
  std::filesystem::path folder_;
};

// Merges complete shard files into `output`. Refuses, with a message naming the files, shards
// of another experiment (config hash), duplicates, files that are not shards, and missing
// shards (listed in sbatch --array form). The statistics are copied bit for bit.
void merge_shards(const std::vector<std::filesystem::path>& shards, const std::filesystem::path& output,
                  const Provenance& provenance);

}  // namespace selfnorm::io
