// libFuzzer target for the config parser (io::parse_experiment), built with -DSELFNORM_FUZZ=ON by
// clang with AddressSanitizer and UndefinedBehaviorSanitizer.
//
// Whatever the input, the parser must either accept it, or refuse it with a ConfigError that holds
// at least one issue, each with a non-empty message, all of it UTF-8. Any other exception, a crash, a sanitizer
// report, a leak or an abort here is a finding. An accepted config must also hold what the rest of
// the program relies on: at least one point, a resolved config that parses back to the same
// experiment (result files and merges depend on it), and a memory estimate that can be made.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "core/engine.hpp"
#include "io/config.hpp"

namespace {

// A violated invariant: abort, which libFuzzer reports with the input that did it.
void require(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace selfnorm;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const io::Experiment ex = io::parse_experiment(text, "fuzz.json", "fuzz");
    require(!ex.points.empty());
    require(static_cast<std::int64_t>(ex.points.size()) <= io::kMaxPoints);
    require(ex.hash.size() == 16);
    // The round trip doubles the cost of large sweeps, which are slow enough under the sanitizers.
    if (ex.points.size() <= 1000) {
      const io::Experiment again = io::parse_experiment(ex.resolved.dump(), "resolved.json", "other");
      require(again.hash == ex.hash && again.points.size() == ex.points.size());
    }
    std::size_t checked = 0;
    for (const auto& point : ex.points) {
      const WorkEstimate e = estimate_work(point.spec, RunOptions{4});
      require(e.gemm_flop >= 0 && e.buffer_bytes > 0);
      if (++checked == 64) break;
    }
  } catch (const io::ConfigError& e) {
    require(!e.issues().empty());
    for (const auto& issue : e.issues()) require(!issue.message.empty());
    // Messages are printable whatever bytes the input holds: validate --json writes them as JSON.
    require(io::find_invalid_utf8(e.what()) == std::string_view::npos);
  }
  return 0;
}
