#include "cli/units.hpp"

#include <charconv>
#include <cmath>
#include <cstdio>

namespace selfnorm::cli {

std::string format_number(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

std::string format_shortest(double v) {
  char buf[32];  // the longest shortest form of a double, -2.2250738585072014e-308, has 24
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  return ec == std::errc() ? std::string(buf, end) : format_number("%.17g", v);
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  if (seconds < 60) return format_number(seconds < 10 ? "%.1f s" : "%.0f s", seconds);
  const auto s = static_cast<long>(seconds + 0.5);
  char buf[64];
  if (s < 3600) {
    std::snprintf(buf, sizeof buf, "%ld min %02ld s", s / 60, s % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%ld h %02ld min", s / 3600, (s % 3600) / 60);
  }
  return buf;
}

std::string format_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB"};
  int u = 0;
  while (bytes >= 1024 && u < 7) {
    bytes /= 1024;
    ++u;
  }
  return format_number(bytes < 10 ? "%.1f " : "%.0f ", bytes) + units[u];
}

}  // namespace selfnorm::cli
