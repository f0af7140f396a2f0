#include "cli/environment.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <string>

#include "cli/errors.hpp"
#include "core/amx.hpp"
#include "core/gemm.hpp"
#include "core/parallel.hpp"
#include "selfnorm_git_commit.hpp"  // generated at build time (sim/cli/CMakeLists.txt)

namespace selfnorm::cli {
namespace {

std::optional<int> positive_env(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const long n = std::strtol(v, &end, 10);
  // OMP_NUM_THREADS may be a list ("4,2") for nested parallelism; the first entry counts.
  if (errno != 0 || end == v || (*end != '\0' && *end != ',') || n < 1 || n > 4096) {
    throw UsageError(std::string(name) + "='" + v + "' is not a thread count; set it to a positive integer or unset it");
  }
  return static_cast<int>(n);
}

std::string compiler() {
#if defined(__clang__)
  return std::string("clang++ ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("g++ ") + __VERSION__;
#else
  return "unknown compiler";
#endif
}

}  // namespace

ThreadChoice choose_threads(std::optional<int> requested) {
  if (requested) {
    if (*requested < 1 || *requested > 4096) {
      throw UsageError("--threads " + std::to_string(*requested) + " is not valid; give a thread count from 1 to 4096");
    }
    return {*requested, "--threads"};
  }
  if (auto n = positive_env("OMP_NUM_THREADS")) return {*n, "OMP_NUM_THREADS"};
  if (auto n = positive_env("SLURM_CPUS_PER_TASK")) return {*n, "SLURM_CPUS_PER_TASK"};
  return {available_processors(), "all processors"};
}

std::optional<MachineMemory> machine_memory() {
  std::ifstream in("/proc/meminfo");
  if (!in) return std::nullopt;
  MachineMemory m;
  bool total = false, available = false;
  std::string key, unit;
  unsigned long long value = 0;
  // Lines read "MemTotal:       24634084 kB".
  while (in >> key >> value) {
    std::getline(in, unit);
    const bool kib = unit.find("kB") != std::string::npos;
    const auto bytes = static_cast<std::size_t>(value) * (kib ? 1024 : 1);
    if (key == "MemTotal:") {
      m.total = bytes;
      total = true;
    } else if (key == "MemAvailable:") {
      m.available = bytes;
      available = true;
    }
  }
  if (!total || !available) return std::nullopt;
  m.cgroup = io::own_cgroup_memory();
  return m;
}

std::string version_line() {
#if defined(SELFNORM_HAVE_CUDA)
  const std::string cuda = ", CUDA backend for architectures " SELFNORM_CUDA_ARCHITECTURES;
#else
  const std::string cuda = ", no CUDA backend";
#endif
  return std::string("selfnorm ") + SELFNORM_VERSION + " (git " + SELFNORM_GIT_COMMIT + ", " + compiler() + ", " +
         SELFNORM_BUILD_TYPE + ", " + std::string(gemm_backend()) + " GEMM" + (amx::built() ? " and AMX bf16x6" : "") +
         cuda + ")";
}

std::string host_name() {
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) != 0) host[0] = '\0';
  return host;
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

io::Provenance current_provenance(int threads, const std::string& command_line) {
  io::Provenance p;
  p.program_version = SELFNORM_VERSION;
  p.git_commit = SELFNORM_GIT_COMMIT;
  p.compiler = compiler();
  p.build_type = SELFNORM_BUILD_TYPE;
  p.gemm_backend = std::string(gemm_backend());
  p.host = host_name();
  p.created_utc = utc_now();
  p.command_line = command_line;
  p.threads = threads;
  return p;
}

}  // namespace selfnorm::cli
