// What the process learns from its environment: thread counts, host, time, build provenance.
#pragma once

#include <algorithm>
#include <cstddef>
#include <optional>
#include <string>

#include "io/cgroup.hpp"
#include "io/results.hpp"

namespace selfnorm::cli {

// Where the thread count came from, for messages.
struct ThreadChoice {
  int threads = 1;
  std::string source;  // "--threads", "OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK" or "all processors"
};

// --threads if given, else OMP_NUM_THREADS, else SLURM_CPUS_PER_TASK (Slurm never sets
// OMP_NUM_THREADS), else every processor. Throws UsageError for a malformed value.
ThreadChoice choose_threads(std::optional<int> requested);

// The memory this process can use: the machine's as /proc/meminfo reports it, in bytes, and the
// limit of its control group where one is set (Slurm's --mem, a container's limit).
struct MachineMemory {
  std::size_t total = 0;      // MemTotal
  std::size_t available = 0;  // MemAvailable: what can be allocated without swapping or evicting
  std::optional<io::CgroupMemory> cgroup;

  // What a run can allocate: MemAvailable, or less where the control group's limit is closer.
  std::size_t usable() const { return cgroup ? std::min(available, cgroup->room()) : available; }
  // True if the control group's limit, not the machine, is what bounds a run.
  bool cgroup_bound() const { return cgroup && cgroup->room() < available; }
};

// Reads /proc/meminfo and the control group's limit; nullopt where /proc/meminfo cannot be read
// (then no memory check is made).
std::optional<MachineMemory> machine_memory();

// "selfnorm 0.1.0 (git abc123, g++ 12.2.0, Release, avx512 GEMM and AMX bf16x6, no CUDA backend)".
std::string version_line();

// Provenance for a result file written now by this process.
io::Provenance current_provenance(int threads, const std::string& command_line);

// The current UTC time as ISO 8601.
std::string utc_now();

// This machine's host name, "" if it has none.
std::string host_name();

}  // namespace selfnorm::cli
