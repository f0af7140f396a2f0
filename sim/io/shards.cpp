#include "io/shards.hpp"

#include <algorithm>
#include <map>
#include <set>
#include <stdexcept>

#include "io/hdf5.hpp"

namespace selfnorm::io {

namespace fs = std::filesystem;

std::vector<std::int64_t> shard_points(std::int64_t point_count, const std::optional<ShardInfo>& shard) {
  std::vector<std::int64_t> points;
  const std::int64_t k = shard ? shard->index : 0;
  const std::int64_t n = shard ? shard->count : 1;
  for (std::int64_t p = k; p < point_count; p += n) points.push_back(p);
  return points;
}

std::string array_spec(const std::vector<std::int64_t>& indices) {
  std::vector<std::int64_t> v = indices;
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  std::string out;
  for (std::size_t i = 0; i < v.size();) {
    std::size_t j = i;
    while (j + 1 < v.size() && v[j + 1] == v[j] + 1) ++j;
    if (!out.empty()) out += ",";
    out += std::to_string(v[i]);
    if (j > i) out += "-" + std::to_string(v[j]);
    i = j + 1;
  }
  return out;
}

fs::path shard_path(const fs::path& folder, std::int64_t k, std::int64_t n) {
  return folder / ("shard-" + std::to_string(k) + "-of-" + std::to_string(n) + ".h5");
}

Checkpoint::Checkpoint(const fs::path& output) : folder_(output.string() + ".partial") {}

bool Checkpoint::exists() const {
  std::error_code ec;
  return fs::is_directory(folder_, ec);
}

std::vector<PointRecord> Checkpoint::load(const Experiment& experiment, const std::optional<ShardInfo>& shard,
                                          std::vector<FileHeader>* headers) const {
  std::vector<PointRecord> records;
  if (!exists()) return records;
  const auto mine = shard_points(static_cast<std::int64_t>(experiment.points.size()), shard);
  for (const auto& entry : fs::directory_iterator(folder_)) {
    const std::string name = entry.path().filename().string();
    // Temporary files of a write that was interrupted are incomplete by construction.
    if (name.rfind("point-", 0) != 0 || entry.path().extension() != ".h5") continue;
    // Checkpoints are named point-<index>.h5 and hold that point alone; a renamed or copied file
    // ("point-3 (copy).h5") would give a point twice.
    const std::string digits = name.substr(6, name.size() - 6 - 3);
    if (digits.empty() || digits.size() > 18 ||
        !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      throw std::runtime_error("the checkpoint folder " + folder_.string() + " holds " + name + ", which is not a "
                               "checkpoint selfnorm writes (point-<index>.h5); remove it and run again");
    }
    const std::int64_t index = std::stoll(digits);
    FileHeader header;
    std::vector<PointRecord> found;
    try {
      found = read_records(entry.path(), &header);
    } catch (const std::exception& e) {
      throw std::runtime_error("checkpoint " + entry.path().string() + " cannot be read (" + e.what() +
                               "); remove it and run again to recompute that point");
    }
    if (header.config_hash != experiment.hash) {
      throw OtherRunCheckpoint("the checkpoint folder " + folder_.string() + " holds points of another experiment "
                               "(config hash " + header.config_hash + ", this config " + experiment.hash +
                               "); remove the folder (run --overwrite does) or choose another output path with -o");
    }
    if (header.per_trial != experiment.output.per_trial) {
      throw OtherRunCheckpoint("the checkpoint folder " + folder_.string() + " holds points of this experiment "
                               "computed with " + per_trial_setting(header.per_trial) + ", and this config has " +
                               per_trial_setting(experiment.output.per_trial) + "; finish the run with " +
                               per_trial_setting(header.per_trial) + ", or remove the folder to start again (run "
                               "--overwrite does)");
    }
    if (found.size() != 1 || found.front().index != index) {
      throw std::runtime_error("checkpoint " + entry.path().string() + " does not hold point " + std::to_string(index) +
                               " alone, as its name says (a renamed or altered file); remove it and run again to "
                               "recompute that point");
    }
    for (auto& r : found) {
      if (!std::binary_search(mine.begin(), mine.end(), r.index)) {
        throw OtherRunCheckpoint("the checkpoint folder " + folder_.string() + " holds point " +
                                 std::to_string(r.index) + ", which is not in this shard; remove the folder or "
                                 "choose another output path with -o");
      }
      records.push_back(std::move(r));
    }
    if (headers) headers->push_back(std::move(header));
  }
  std::sort(records.begin(), records.end(), [](const PointRecord& a, const PointRecord& b) { return a.index < b.index; });
  return records;
}

void Checkpoint::save(const Experiment& experiment, const PointRecord& record, const Provenance& provenance,
                      const std::optional<ShardInfo>& shard) const {
  std::error_code ec;
  fs::create_directories(folder_, ec);
  if (ec) throw WriteError(folder_, ec.value(), "create the checkpoint folder");
  write_results(folder_ / ("point-" + std::to_string(record.index) + ".h5"), experiment, {record}, provenance, shard);
}

void Checkpoint::remove() const {
  std::error_code ec;
  fs::remove_all(folder_, ec);
}

int Checkpoint::remove_stale_temporaries() const {
  int removed = 0;
  std::error_code ec;
  for (fs::directory_iterator it(folder_, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.rfind(".point-", 0) != 0 || name.find(".tmp-") == std::string::npos) continue;
    std::error_code rm;
    if (fs::remove(it->path(), rm)) ++removed;
  }
  return removed;
}

void merge_shards(const std::vector<fs::path>& shards, const fs::path& output, const Provenance& provenance) {
  if (shards.empty()) throw std::runtime_error("merge needs at least one shard file");
  struct Shard {
    fs::path path;
    FileHeader header;
  };
  std::vector<Shard> files;
  for (const auto& path : shards) {
    FileHeader h;
    try {
      h = read_header(path);
    } catch (const std::exception& e) {
      throw std::runtime_error(std::string(e.what()) + "; merge takes the shard files written by "
                               "'selfnorm run CONFIG --shard K/N'");
    }
    if (!h.shard) {
      throw std::runtime_error(path.string() + " is a complete result, not a shard (it has no shard_index); merge "
                               "takes the files of 'selfnorm run CONFIG --shard K/N'");
    }
    files.push_back({path, h});
  }
  const FileHeader& first = files.front().header;
  std::map<std::int64_t, fs::path> by_index;
  for (const auto& f : files) {
    if (f.header.config_hash != first.config_hash) {
      throw std::runtime_error("foreign shard: " + f.path.string() + " has config hash " + f.header.config_hash +
                               " but " + files.front().path.string() + " has " + first.config_hash +
                               "; all shards must come from the same config and seed");
    }
    if (f.header.per_trial != first.per_trial) {
      const auto& [with, without] = f.header.per_trial ? std::pair(f.path, files.front().path)
                                                       : std::pair(files.front().path, f.path);
      throw std::runtime_error("shards differ in output.per_trial: " + with.string() + " holds per-trial values and " +
                               without.string() + " does not; run every shard with the same output.per_trial "
                               "(--overwrite replaces a shard)");
    }
    if (f.header.shard->count != first.shard->count) {
      throw std::runtime_error("shard counts differ: " + f.path.string() + " is one of " +
                               std::to_string(f.header.shard->count) + " shards, " + files.front().path.string() +
                               " one of " + std::to_string(first.shard->count));
    }
    const auto [it, inserted] = by_index.emplace(f.header.shard->index, f.path);
    if (!inserted) {
      throw std::runtime_error("duplicate shard " + std::to_string(f.header.shard->index) + ": " + it->second.string() +
                               " and " + f.path.string() + "; give each shard once");
    }
  }
  const std::int64_t n = first.shard->count;
  std::vector<std::int64_t> missing;
  for (std::int64_t k = 0; k < n; ++k) {
    if (!by_index.count(k)) missing.push_back(k);
  }
  if (!missing.empty()) {
    throw std::runtime_error("missing " + std::to_string(missing.size()) + " of " + std::to_string(n) +
                             " shards: " + array_spec(missing) + " (run each with 'selfnorm run CONFIG --shard K/" +
                             std::to_string(n) + "', or on Slurm resubmit them with submit.py CONFIG --shards " +
                             std::to_string(n) + " --only " + array_spec(missing) + ")");
  }

  const Experiment experiment = parse_experiment(first.config, files.front().path.string(), "merged");
  if (experiment.hash != first.config_hash) {
    throw std::runtime_error(files.front().path.string() + ": its config does not reproduce its config hash (" +
                             first.config_hash + " vs " + experiment.hash + "); was the file edited?");
  }
  std::vector<PointRecord> records;
  for (const auto& [k, path] : by_index) {
    auto part = read_records(path);
    const auto expected = shard_points(static_cast<std::int64_t>(experiment.points.size()), ShardInfo{k, n});
    std::vector<std::int64_t> got;
    for (const auto& r : part) got.push_back(r.index);
    if (got != expected) {
      throw std::runtime_error(path.string() + " does not hold the points of shard " + std::to_string(k) + " of " +
                               std::to_string(n) + " (an incomplete or altered file)");
    }
    for (auto& r : part) records.push_back(std::move(r));
  }
  std::sort(records.begin(), records.end(), [](const PointRecord& a, const PointRecord& b) { return a.index < b.index; });
  // The merged file says how its statistics were computed: the shards' device, programs, kernels
  // and threads, not the merge's (host, time and command line stay the merge's). Shards that ran
  // differently are all named, and their thread counts, if they differ, give -1.
  Provenance merged = provenance;
  merged.device = first.device;
  merged.gpu_name = first.gpu_name;
  merged.program_version = first.program_version;
  merged.git_commit = first.git_commit;
  merged.gemm_backend = first.gemm_backend;
  merged.threads = first.threads;
  std::vector<FileHeader> headers;
  for (const auto& f : files) headers.push_back(f.header);
  name_earlier(merged, headers);
  write_results(output, experiment, records, merged);
}

}  // namespace selfnorm::io
