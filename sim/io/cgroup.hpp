// The memory limit of this process's control group: under Slurm (--mem, --mem-per-cpu), in a
// container or a systemd slice, a process is killed when its group passes the limit, however much
// memory the machine has free. The run's memory check uses the smaller of the machine's available
// memory and the room left under this limit.
//
// cgroup v2: /proc/self/cgroup has the line "0::/path"; the limit is memory.max ("max": none) in
// /sys/fs/cgroup/path and in each folder above it, the use is memory.current. cgroup v1: the line
// "N:...memory...:/path"; the limit is memory.limit_in_bytes (about 2^63: none) under
// /sys/fs/cgroup/memory/path and above, the use memory.usage_in_bytes.
#pragma once

#include <cstddef>
#include <filesystem>
#include <optional>
#include <string>

namespace selfnorm::io {

struct CgroupMemory {
  std::size_t limit = 0;  // the tightest limit on the group and the groups above it, in bytes
  std::size_t usage = 0;  // what the group uses now (its processes' memory and page cache)
  std::string file;       // where the limit was read, for messages

  // Bytes the group can still take before it reaches its limit.
  std::size_t room() const { return usage < limit ? limit - usage : 0; }
};

// The limit that applies to a process whose /proc/self/cgroup reads `self_cgroup`, with the
// cgroup file systems mounted under `root` (normally /sys/fs/cgroup). nullopt where no limit is
// set or none can be read: then only the machine's memory counts.
std::optional<CgroupMemory> cgroup_memory(const std::string& self_cgroup,
                                          const std::filesystem::path& root = "/sys/fs/cgroup");

// The same for this process, reading /proc/self/cgroup.
std::optional<CgroupMemory> own_cgroup_memory();

}  // namespace selfnorm::io
