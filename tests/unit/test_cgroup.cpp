// The control group's memory limit, read from fake cgroup trees laid out as the kernel does.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <string>

#include "io/cgroup.hpp"
#include "test_helpers.hpp"

using namespace selfnorm;
using namespace selfnorm::io;
namespace fs = std::filesystem;

namespace {

void write(const fs::path& file, const std::string& text) {
  fs::create_directories(file.parent_path());
  std::ofstream(file) << text << "\n";
}

}  // namespace

TEST_CASE("cgroup v2: the tightest memory.max along the group's path, and the group's own use", "[cgroup]") {
  test::TempDir dir;
  const fs::path root = dir.path;
  write(root / "memory.max", "max");
  write(root / "system.slice/memory.max", "8589934592");                  // 8 GiB on the slice
  write(root / "system.slice/slurmstepd.scope/memory.max", "max");
  write(root / "system.slice/slurmstepd.scope/job_7/memory.max", "2147483648");  // --mem=2G
  write(root / "system.slice/slurmstepd.scope/job_7/step_0/memory.max", "max");
  write(root / "system.slice/slurmstepd.scope/job_7/step_0/memory.current", "104857600");
  const std::string self = "0::/system.slice/slurmstepd.scope/job_7/step_0\n";

  const auto m = cgroup_memory(self, root);
  REQUIRE(m);
  CHECK(m->limit == 2147483648u);
  CHECK(m->usage == 104857600u);
  CHECK(m->room() == 2147483648u - 104857600u);
  CHECK(m->file == (root / "system.slice/slurmstepd.scope/job_7/memory.max").string());

  SECTION("a tighter limit higher up wins") {
    write(root / "system.slice/memory.max", "1073741824");
    const auto tighter = cgroup_memory(self, root);
    REQUIRE(tighter);
    CHECK(tighter->limit == 1073741824u);
    CHECK(tighter->usage == 104857600u);
  }
  SECTION("no limit anywhere: none") {
    write(root / "system.slice/memory.max", "max");
    write(root / "system.slice/slurmstepd.scope/job_7/memory.max", "max");
    CHECK_FALSE(cgroup_memory(self, root));
  }
  SECTION("a group at the root of its namespace ('0::/') reads the root's files") {
    write(root / "memory.max", "536870912");
    write(root / "memory.current", "1000");
    const auto top = cgroup_memory("0::/\n", root);
    REQUIRE(top);
    CHECK(top->limit == 536870912u);
    CHECK(top->usage == 1000u);
  }
}

TEST_CASE("cgroup v2 on a hybrid system is mounted under unified/", "[cgroup]") {
  test::TempDir dir;
  write(dir.path / "unified/user.slice/memory.max", "3221225472");
  write(dir.path / "unified/user.slice/memory.current", "0");
  const auto m = cgroup_memory("1:name=systemd:/user.slice\n0::/user.slice\n", dir.path);
  REQUIRE(m);
  CHECK(m->limit == 3221225472u);
}

TEST_CASE("cgroup v1: memory.limit_in_bytes of the memory hierarchy; 2^63 means no limit", "[cgroup]") {
  test::TempDir dir;
  const fs::path mem = dir.path / "memory";
  write(mem / "memory.limit_in_bytes", "9223372036854771712");
  write(mem / "slurm/uid_0/job_12/memory.limit_in_bytes", "4294967296");
  write(mem / "slurm/uid_0/job_12/step_batch/memory.limit_in_bytes", "9223372036854771712");
  write(mem / "slurm/uid_0/job_12/step_batch/memory.usage_in_bytes", "5000000000");
  const std::string self = "12:pids:/slurm/uid_0/job_12/step_batch\n"
                           "4:cpuacct,memory:/slurm/uid_0/job_12/step_batch\n"
                           "0::/\n";
  const auto m = cgroup_memory(self, dir.path);
  REQUIRE(m);
  CHECK(m->limit == 4294967296u);
  CHECK(m->usage == 5000000000u);
  CHECK(m->room() == 0u);  // over its limit already: no room, never a wrapped-around huge number

  write(mem / "slurm/uid_0/job_12/memory.limit_in_bytes", "9223372036854771712");
  CHECK_FALSE(cgroup_memory(self, dir.path));
}

TEST_CASE("cgroup: unreadable or odd files count as no limit", "[cgroup]") {
  test::TempDir dir;
  CHECK_FALSE(cgroup_memory("", dir.path));                    // no /proc/self/cgroup lines
  CHECK_FALSE(cgroup_memory("0::/a/b\n", dir.path));            // no files at all
  write(dir.path / "a/memory.max", "lots");
  CHECK_FALSE(cgroup_memory("0::/a/b\n", dir.path));
  write(dir.path / "a/memory.max", "99999999999999999999999");  // beyond 64 bits
  CHECK_FALSE(cgroup_memory("0::/a/b\n", dir.path));
  write(dir.path / "a/memory.max", "1048576");                  // the limit of a parent still counts
  const auto m = cgroup_memory("0::/a/b\n", dir.path);
  REQUIRE(m);
  CHECK(m->limit == 1048576u);
  CHECK(m->usage == 0u);  // b's memory.current is missing
}
