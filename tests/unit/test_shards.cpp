// Shard files: merging gives the unsharded result bit for bit, and bad sets of shards are refused.
#include <catch2/catch.hpp>

#include <filesystem>
#include <random>

#include "core/engine.hpp"
#include "io/hdf5.hpp"
#include "io/results.hpp"
#include "io/shards.hpp"
#include "test_helpers.hpp"

using namespace selfnorm;
using namespace selfnorm::io;
namespace fs = std::filesystem;

namespace {

using test::TempDir;

const char* kConfig = R"({"name": "m", "seed": 4, "network": {"depth": 3, "width": 8},
  "monte_carlo": {"trials": 2, "batch": 9},
  "sweep": {"grid": {"activation.alpha": [1.5, 1.6, 1.7], "activation.lambda": [1.0, 1.1]}}})";

PointRecord compute(const Experiment& ex, std::int64_t p, bool per_trial = false) {
  const auto& point = ex.points[static_cast<std::size_t>(p)];
  return make_record(p, simulate_point(point.spec, {ex.seed, static_cast<std::uint64_t>(p)}, {1}), per_trial);
}

// Writes shard k of n of `ex` into `dir`, with per-trial values or without; returns its path.
fs::path write_shard(const Experiment& ex, const fs::path& dir, std::int64_t k, std::int64_t n,
                     bool per_trial = false, const Provenance& provenance = Provenance{}) {
  std::vector<PointRecord> records;
  for (auto p : shard_points(static_cast<std::int64_t>(ex.points.size()), ShardInfo{k, n})) {
    records.push_back(compute(ex, p, per_trial));
  }
  const fs::path path = shard_path(dir, k, n);
  write_results(path, ex, records, provenance, ShardInfo{k, n});
  return path;
}

}  // namespace

TEST_CASE("merged shards equal the unsharded run bit for bit", "[shards]") {
  TempDir dir;
  const Experiment ex = parse_experiment(kConfig, "m.json", "m");
  std::vector<PointRecord> all;
  for (std::int64_t p = 0; p < 6; ++p) all.push_back(compute(ex, p));
  write_results(dir.path / "whole.h5", ex, all, Provenance{});
  const std::vector<fs::path> shards = {write_shard(ex, dir.path, 2, 4), write_shard(ex, dir.path, 0, 4),
                                        write_shard(ex, dir.path, 3, 4), write_shard(ex, dir.path, 1, 4)};
  merge_shards(shards, dir.path / "merged.h5", Provenance{});
  h5::Id a = h5::open_file(dir.path / "whole.h5");
  h5::Id b = h5::open_file(dir.path / "merged.h5");
  for (const auto& info : stat_catalog()) {
    if (info.stat == Stat::grad_weight_msq) continue;
    const std::string name(info.name);
    CHECK(h5::read_doubles(a, name) == h5::read_doubles(b, name));
    CHECK(h5::read_doubles(a, name + "_sem") == h5::read_doubles(b, name + "_sem"));
  }
  CHECK(h5::read_ints(b, "point") == std::vector<std::int64_t>{0, 1, 2, 3, 4, 5});
  CHECK(h5::read_doubles(a, "alpha") == h5::read_doubles(b, "alpha"));
  CHECK(h5::read_int_array_attribute(b, "grid_shape") == std::vector<std::int64_t>{3, 2});
  CHECK(!h5::has_attribute(b, "shard_index"));
}

TEST_CASE("merge refuses missing, duplicate, foreign and non-shard files", "[shards][errors]") {
  TempDir dir;
  const Experiment ex = parse_experiment(kConfig, "m.json", "m");
  const fs::path s0 = write_shard(ex, dir.path, 0, 3);
  const fs::path s1 = write_shard(ex, dir.path, 1, 3);
  const fs::path s2 = write_shard(ex, dir.path, 2, 3);
  const fs::path out = dir.path / "out.h5";
  CHECK_THROWS_WITH(merge_shards({s0, s2}, out, Provenance{}),
                    "missing 1 of 3 shards: 1 (run each with 'selfnorm run CONFIG --shard K/3', or on Slurm "
                    "resubmit them with submit.py CONFIG --shards 3 --only 1)");
  CHECK_THROWS_WITH(merge_shards({s0, s1, s1, s2}, out, Provenance{}),
                    "duplicate shard 1: " + s1.string() + " and " + s1.string() + "; give each shard once");
  // The same sweep with another seed is another experiment.
  TempDir other;
  const Experiment foreign = with_seed(ex, 5);
  const fs::path f1 = write_shard(foreign, other.path, 1, 3);
  CHECK_THROWS_WITH(merge_shards({s0, f1, s2}, out, Provenance{}),
                    "foreign shard: " + f1.string() + " has config hash " + foreign.hash + " but " + s0.string() +
                        " has " + ex.hash + "; all shards must come from the same config and seed");
  // The same experiment with per-trial values in one shard only (output.per_trial changed between
  // the shards' runs; it is not part of the config hash): the merged file would have NaN rows.
  TempDir with_trials;
  const fs::path t1 = write_shard(ex, with_trials.path, 1, 3, true);
  CHECK_THROWS_WITH(merge_shards({s0, t1, s2}, out, Provenance{}),
                    "shards differ in output.per_trial: " + t1.string() + " holds per-trial values and " +
                        s0.string() + " does not; run every shard with the same output.per_trial (--overwrite "
                        "replaces a shard)");
  // A complete (unsharded) result is not a shard.
  write_results(dir.path / "whole.h5", ex, {compute(ex, 0)}, Provenance{});
  CHECK_THROWS_WITH(merge_shards({dir.path / "whole.h5"}, out, Provenance{}),
                    Catch::Contains("is a complete result, not a shard"));
  CHECK(!fs::exists(out));
}

TEST_CASE("checkpoints are read back only for their own experiment and shard", "[shards]") {
  TempDir dir;
  const Experiment ex = parse_experiment(kConfig, "m.json", "m");
  const fs::path out = dir.path / "run.h5";
  const Checkpoint checkpoint(out);
  CHECK(!checkpoint.exists());
  CHECK(checkpoint.load(ex, std::nullopt).empty());
  checkpoint.save(ex, compute(ex, 4), Provenance{}, std::nullopt);
  checkpoint.save(ex, compute(ex, 1), Provenance{}, std::nullopt);
  const auto back = checkpoint.load(ex, std::nullopt);
  REQUIRE(back.size() == 2);
  CHECK(back[0].index == 1);  // sorted by point
  CHECK(back[1].mean[0] == compute(ex, 4).mean[0]);
  CHECK_THROWS_WITH(checkpoint.load(with_seed(ex, 9), std::nullopt), Catch::Contains("holds points of another experiment"));
  CHECK_THROWS_WITH(checkpoint.load(ex, ShardInfo{0, 2}), Catch::Contains("holds point 1, which is not in this shard"));
  checkpoint.remove();
  CHECK(!checkpoint.exists());
}

TEST_CASE("a merged file names every program, kernel and thread count its shards were computed with",
          "[shards]") {
  TempDir dir;
  const Experiment ex = parse_experiment(kConfig, "m.json", "m");
  auto made_by = [](const std::string& version, const std::string& commit, const std::string& backend, int threads) {
    Provenance p;
    p.program_version = version;
    p.git_commit = commit;
    p.gemm_backend = backend;
    p.threads = threads;
    return p;
  };
  const std::vector<fs::path> shards = {
      write_shard(ex, dir.path, 0, 3, false, made_by("0.1.0", "aaa", "avx512", 2)),
      write_shard(ex, dir.path, 1, 3, false, made_by("0.1.0", "bbb", "avx512, amx-bf16x6 for float32", 2)),
      write_shard(ex, dir.path, 2, 3, false, made_by("0.1.0", "aaa", "avx512", 4))};
  Provenance merging = made_by("0.2.0", "ccc", "portable", 1);
  merging.host = "merger";
  merge_shards(shards, dir.path / "merged.h5", merging);
  h5::Id f = h5::open_file(dir.path / "merged.h5");
  CHECK(h5::read_string_attribute(f, "program_version") == "0.1.0");
  CHECK(h5::read_string_attribute(f, "git_commit") == "aaa; bbb");  // the merge's own ccc computed nothing
  CHECK(h5::read_string_attribute(f, "gemm_backend") == "avx512; avx512, amx-bf16x6 for float32");
  CHECK(h5::read_int_attribute(f, "threads") == -1);
  CHECK(h5::read_string_attribute(f, "host") == "merger");
}

TEST_CASE("name_earlier lists each distinct value once, lists included", "[shards]") {
  Provenance p;
  p.program_version = "0.2.0";
  p.git_commit = "ccc";
  p.gemm_backend = "avx512";
  p.threads = 2;
  FileHeader a;
  a.program_version = "0.2.0";
  a.git_commit = "aaa; ccc";  // itself a resumed or merged file's
  a.gemm_backend = "avx512";
  a.threads = 2;
  FileHeader old;  // a file written before these attributes: nothing to name
  old.threads = 2;
  name_earlier(p, {a, old});
  CHECK(p.program_version == "0.2.0");
  CHECK(p.git_commit == "ccc; aaa");
  CHECK(p.gemm_backend == "avx512");
  CHECK(p.threads == 2);
  FileHeader b = a;
  b.threads = 8;
  name_earlier(p, {b});
  CHECK(p.threads == -1);
}
