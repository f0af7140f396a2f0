// The output lock and the write errors: one writer per output path, a lock left by a killed run
// is free, temporary files of interrupted writes are recognised, and a failed write names its
// path and cause and leaves nothing behind.
#include <catch2/catch.hpp>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "io/config.hpp"
#include "io/lock.hpp"
#include "io/results.hpp"
#include "io/shards.hpp"
#include "test_helpers.hpp"

using namespace selfnorm;
using namespace selfnorm::io;
namespace fs = std::filesystem;

namespace {

using test::TempDir;

std::size_t entries(const fs::path& folder) {
  return static_cast<std::size_t>(std::distance(fs::directory_iterator(folder), fs::directory_iterator()));
}

}  // namespace

TEST_CASE("one lock per output path, and the second run names the first", "[lock]") {
  TempDir dir;
  const fs::path out = dir.path / "x.h5";
  {
    const OutputLock first(out, "pid: 11\nhost: here\nstarted: 2026-01-01T00:00:00Z\ncommand: selfnorm run a.json\n");
    CHECK(fs::exists(lock_path(out)));
    // flock locks belong to an open file: a second open in this same process conflicts too.
    try {
      const OutputLock second(out, "pid: 12\n");
      FAIL("the second lock was granted");
    } catch (const LockedError& e) {
      CHECK(std::string(e.what()) ==
            out.string() + " is being written by another selfnorm run (pid 11, host here, started "
                           "2026-01-01T00:00:00Z, command selfnorm run a.json); wait for it to finish, or write "
                           "elsewhere with -o");
    }
    const auto holder = lock_holder(out);
    REQUIRE(holder);
    CHECK(holder->find("pid 11") == 0);
    // Another output path is independent.
    const OutputLock other(dir.path / "y.h5", "pid: 13\n");
  }
  // Released and removed: nothing left, and nobody holds it.
  CHECK(!fs::exists(lock_path(out)));
  CHECK(!lock_holder(out));
  CHECK(entries(dir.path) == 0);
}

TEST_CASE("a lock file left by a killed run is free and gets the new holder", "[lock]") {
  TempDir dir;
  const fs::path out = dir.path / "x.h5";
  // What a run killed by SIGKILL leaves: the file, its old content, and no lock (the kernel
  // released it with the process).
  std::ofstream(lock_path(out)) << "pid: 999999\nhost: gone\nstarted: 2020-01-01T00:00:00Z\ncommand: killed\n";
  CHECK(!lock_holder(out));
  {
    const OutputLock lock(out, "pid: 5\n");
    std::ifstream in(lock_path(out));
    const std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK(content == "pid: 5\n");
  }
  CHECK(!fs::exists(lock_path(out)));
}

TEST_CASE("a lock in a folder that cannot hold it is a WriteError naming the lock file", "[lock]") {
  TempDir dir;
  const fs::path out = dir.path / "missing" / "x.h5";
  try {
    const OutputLock lock(out, "pid: 1\n");
    FAIL("a lock was created in a missing folder");
  } catch (const WriteError& e) {
    CHECK(e.error_code() == ENOENT);
    CHECK(std::string(e.what()).rfind(lock_path(out).string() + ": cannot create the lock file: ", 0) == 0);
  }
}

TEST_CASE("temporary files of interrupted writes are removed, and only those", "[lock][results]") {
  TempDir dir;
  const fs::path out = dir.path / "x.h5";
  for (const char* name : {".x.h5.tmp-123-456", ".x.h5.tmp-7-8", "x.h5", ".y.h5.tmp-1-2", "x.h5.tmp-1-2"}) {
    std::ofstream(dir.path / name) << "half";
  }
  CHECK(remove_stale_temporaries(out) == 2);
  CHECK(entries(dir.path) == 3);
  CHECK(fs::exists(dir.path / "x.h5"));
  CHECK(fs::exists(dir.path / ".y.h5.tmp-1-2"));  // another output's: not ours to touch

  const Checkpoint checkpoint(out);
  fs::create_directories(checkpoint.folder());
  for (const char* name : {".point-3.h5.tmp-1-2", "point-2.h5", ".point-4.h5.tmp-9-9"}) {
    std::ofstream(checkpoint.folder() / name) << "half";
  }
  CHECK(checkpoint.remove_stale_temporaries() == 2);
  CHECK(entries(checkpoint.folder()) == 1);
}

TEST_CASE("a failed result write names the final path and its cause, and leaves nothing", "[results][errors]") {
  TempDir dir;
  const Experiment ex = parse_experiment(R"({"network": {"depth": 2, "width": 4}, "monte_carlo": {"trials": 1,
                                           "batch": 3}})", "x.json", "x");
  const PointResult r = simulate_point(ex.points[0].spec, {0, 0}, {1});
  const std::vector<PointRecord> records = {make_record(0, r, false)};
  const fs::path out = dir.path / "gone" / "x.h5";
  try {
    write_results(out, ex, records, Provenance{});
    FAIL("the write succeeded in a missing folder");
  } catch (const WriteError& e) {
    CHECK(e.error_code() == ENOENT);
    CHECK(e.path() == out);
    CHECK(std::string(e.what()) == out.string() + ": cannot create the new file: the folder does not exist (or was "
                                                  "removed during the run); create it, or write elsewhere with -o");
  }
  CHECK(entries(dir.path) == 0);
}
