#include "io/cgroup.hpp"

#include <cstdint>
#include <fstream>
#include <sstream>

namespace selfnorm::io {
namespace {

namespace fs = std::filesystem;

// Limits at or above this are "no limit" (cgroup v1 writes 2^63 rounded down to a page).
constexpr std::uint64_t kUnlimited = std::uint64_t{1} << 62;

// The first line of `file` as a byte count; nullopt if unreadable, "max" or not a number.
std::optional<std::uint64_t> read_bytes(const fs::path& file) {
  std::ifstream in(file);
  std::string text;
  if (!in || !std::getline(in, text)) return std::nullopt;
  if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  try {
    return std::stoull(text);
  } catch (const std::exception&) {
    return std::nullopt;  // beyond 64 bits: no limit that matters
  }
}

// The tightest limit in `limit_name` on `group` and every folder above it, up to `base`.
std::optional<CgroupMemory> tightest(const fs::path& base, const std::string& group, const char* limit_name,
                                     const char* usage_name) {
  const fs::path relative = fs::path(group).lexically_normal().relative_path();
  const fs::path own = relative.empty() ? base : base / relative;
  std::optional<CgroupMemory> best;
  for (fs::path at = own;; at = at.parent_path()) {
    if (const auto limit = read_bytes(at / limit_name); limit && *limit < kUnlimited) {
      if (!best || *limit < best->limit) best = CgroupMemory{static_cast<std::size_t>(*limit), 0, (at / limit_name).string()};
    }
    if (at == base || at.parent_path() == at) break;
  }
  if (!best) return std::nullopt;
  // The use of the group itself: its limit's holder may be a parent, whose use includes others'.
  const auto usage = read_bytes(own / usage_name);
  best->usage = usage ? static_cast<std::size_t>(*usage) : 0;
  return best;
}

}  // namespace

std::optional<CgroupMemory> cgroup_memory(const std::string& self_cgroup, const fs::path& root) {
  std::istringstream lines(self_cgroup);
  std::string line;
  std::optional<std::string> v2_group, v1_group;
  while (std::getline(lines, line)) {
    // "hierarchy-ID:controller-list:path"; the path may itself hold ':'.
    const auto first = line.find(':');
    const auto second = first == std::string::npos ? std::string::npos : line.find(':', first + 1);
    if (second == std::string::npos) continue;
    const std::string id = line.substr(0, first);
    const std::string controllers = line.substr(first + 1, second - first - 1);
    const std::string path = line.substr(second + 1);
    if (id == "0" && controllers.empty()) {
      v2_group = path;
    } else {
      std::istringstream list(controllers);
      for (std::string c; std::getline(list, c, ',');) {
        if (c == "memory") v1_group = path;
      }
    }
  }
  if (v1_group) {
    if (auto m = tightest(root / "memory", *v1_group, "memory.limit_in_bytes", "memory.usage_in_bytes")) return m;
  }
  if (v2_group) {
    // Mounted at root itself (pure v2), or under root/unified (hybrid systems).
    for (const fs::path& base : {root, root / "unified"}) {
      if (auto m = tightest(base, *v2_group, "memory.max", "memory.current")) return m;
    }
  }
  return std::nullopt;
}

std::optional<CgroupMemory> own_cgroup_memory() {
  std::ifstream in("/proc/self/cgroup");
  if (!in) return std::nullopt;
  std::ostringstream text;
  text << in.rdbuf();
  return cgroup_memory(text.str());
}

}  // namespace selfnorm::io
