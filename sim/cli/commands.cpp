#include "cli/commands.hpp"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <limits>
#include <memory>
#include <new>
#include <set>
#include <stdexcept>

#include "cli/device.hpp"
#include "cli/display.hpp"
#include "cli/environment.hpp"
#include "cli/errors.hpp"
#include "core/engine.hpp"
#include "io/config.hpp"
#include "io/lock.hpp"
#include "io/results.hpp"
#include "io/shards.hpp"

namespace selfnorm::cli {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

namespace {

// The signal that asked the run to stop (SIGINT or SIGTERM), 0 if none.
std::atomic<int> g_stop_signal{0};
// For the handler's messages, set before it is installed: the checkpoint folder, and whether stderr
// is a terminal (where the progress line has no newline yet).
std::array<char, 4096> g_stop_folder{};
bool g_stop_newline = false;

// Writes `text` to stderr; async-signal-safe.
void say(const char* text, std::size_t size) { [[maybe_unused]] const auto n = ::write(STDERR_FILENO, text, size); }
void say(const char* text) { say(text, std::strlen(text)); }

extern "C" void on_stop_signal(int sig) {
  const int saved_errno = errno;
  int none = 0;
  const bool first = g_stop_signal.compare_exchange_strong(none, sig);
  if (g_stop_newline) say("\n");
  if (first) {
    say(sig == SIGINT ? "SIGINT: stopping after the point in progress; Ctrl-C again stops at once; finished points "
                        "are kept in "
                      : "SIGTERM: stopping after the point in progress; a second SIGTERM or Ctrl-C stops at once; "
                        "finished points are kept in ");
  } else {
    say("stopping at once: the point in progress is lost; finished points are kept in ");
  }
  say(g_stop_folder.data());
  say(first ? "\n" : "; run the same command again to resume\n");
  if (!first) {
    // Ends the process by the signal, as the default action would have.
    std::signal(sig, SIG_DFL);
    ::raise(sig);
  }
  errno = saved_errno;
}

// Catches SIGINT and SIGTERM for the lifetime of a run, so that it stops at a point boundary, and
// says so; a second signal ends the process at once. `folder` keeps the finished points.
class StopSignals {
 public:
  explicit StopSignals(const fs::path& folder) {
    g_stop_signal.store(0);
    const std::string text = folder.string();
    const std::size_t size = std::min(text.size(), g_stop_folder.size() - 1);
    std::copy_n(text.data(), size, g_stop_folder.data());
    g_stop_folder[size] = '\0';
    g_stop_newline = isatty(STDERR_FILENO) != 0;
    previous_int_ = std::signal(SIGINT, on_stop_signal);
    previous_term_ = std::signal(SIGTERM, on_stop_signal);
  }
  ~StopSignals() {
    std::signal(SIGINT, previous_int_);
    std::signal(SIGTERM, previous_term_);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  int received() const { return g_stop_signal.load(); }

 private:
  void (*previous_int_)(int) = SIG_DFL;
  void (*previous_term_)(int) = SIG_DFL;
};

ParallelMode parse_parallel(const std::string& s) {
  if (s == "auto") return ParallelMode::automatic;
  if (s == "trials") return ParallelMode::trials;
  if (s == "samples") return ParallelMode::samples;
  throw UsageError("--parallel " + s + " is not valid; use auto, trials or samples");
}

Matmul parse_matmul(const std::string& s) {
  Matmul m;
  if (s == "auto") {
    m = Matmul::automatic;
  } else if (s == "fma") {
    m = Matmul::fma;
  } else if (s == "bf16x6") {
    m = Matmul::bf16x6;
  } else {
    throw UsageError("--matmul " + s + " is not valid; use auto, fma or bf16x6");
  }
  try {
    resolve_matmul(m, PointSpec{});  // refuses bf16x6 where it cannot run, saying why
  } catch (const std::invalid_argument& e) {
    throw UsageError("--matmul " + s + ": " + e.what());
  }
  return m;
}

// A whole decimal number from 0 to `max`; anything else (a sign, a fraction, overflow) is refused.
std::int64_t parse_count(const std::string& text, const std::string& what,
                         std::int64_t max = std::numeric_limits<std::int64_t>::max(), std::int64_t min = 0) {
  std::size_t used = 0;
  long long v = -1;
  try {
    v = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (text.empty() || used != text.size() || v < min || v > max) {
    throw UsageError(what + " '" + text + "' is not valid; give an integer from " + std::to_string(min) + " to " +
                     std::to_string(max));
  }
  return v;
}

// "K/N" or "slurm/N" (K from SLURM_ARRAY_TASK_ID).
std::optional<io::ShardInfo> parse_shard(const std::string& spec) {
  if (spec.empty()) return std::nullopt;
  const auto slash = spec.find('/');
  if (slash == std::string::npos) {
    throw UsageError("--shard " + spec + " is not valid; use K/N (shard K of N, 0-based) or slurm/N");
  }
  const std::string k_text = spec.substr(0, slash);
  const std::int64_t n = parse_count(spec.substr(slash + 1), "--shard count", io::kMaxPoints);
  if (n < 1) throw UsageError("--shard " + spec + ": the number of shards must be >= 1");
  std::int64_t k;
  if (k_text == "slurm") {
    const char* id = std::getenv("SLURM_ARRAY_TASK_ID");
    if (!id || !*id) {
      throw UsageError("--shard slurm/" + std::to_string(n) + " needs SLURM_ARRAY_TASK_ID, which is set only inside "
                       "a Slurm array task; outside Slurm give the shard as K/" + std::to_string(n));
    }
    k = parse_count(id, "SLURM_ARRAY_TASK_ID");
  } else {
    k = parse_count(k_text, "--shard index");
  }
  if (k >= n) {
    throw UsageError("--shard " + spec + ": shard index " + std::to_string(k) + " is out of range; shards of " +
                     std::to_string(n) + " are numbered 0 to " + std::to_string(n - 1));
  }
  return io::ShardInfo{k, n};
}

// Checks before any work that results can be written into `path`'s folder. (Root passes every
// permission check, so the lock file that is created next is the real test of a folder.)
void check_output_folder(const fs::path& path) {
  const fs::path folder = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  std::error_code ec;
  if (!fs::exists(folder, ec)) {
    throw UsageError("output folder " + folder.string() + " does not exist; create it or choose another path with -o");
  }
  if (!fs::is_directory(folder, ec)) {
    throw UsageError("output folder " + folder.string() + " is a file, not a folder; choose another path with -o");
  }
  if (fs::is_directory(path, ec)) throw UsageError(path.string() + " is a folder; -o needs a file name ending in .h5");
  if (path.extension() != ".h5") {
    // "x.h5.partial" (a checkpoint folder's name) -> x.h5; ".h5" (no name before the suffix) -> result.h5
    const std::string stem = path.stem().string();
    const bool nameless = stem == ".h5";
    const std::string name = nameless ? "result.h5" : stem.size() > 3 && stem.ends_with(".h5") ? stem : stem + ".h5";
    throw UsageError("-o " + path.string() + ": " +
                     (nameless ? "the result file needs a name before .h5"
                               : "the result file's name must end in .h5 (selfnorm writes HDF5 files)") +
                     "; for example -o " + (path.parent_path() / name).string());
  }
  if (::access(folder.c_str(), W_OK) != 0) {
    throw UsageError("output folder " + folder.string() + " is not writable (" + std::strerror(errno) +
                     "); choose another path with -o");
  }
  // The longest name selfnorm gives a file beside the result: the result written under a temporary
  // name, ".<name>.tmp-<pid>-<n>", 20 bytes more than <name> (pids below 10^7, n below 10^6). Beyond
  // the file system's limit the run would fail at its end, with every point computed.
  const long name_max = ::pathconf(folder.c_str(), _PC_NAME_MAX);
  const std::size_t length = path.filename().string().size();
  if (name_max > 0 && length + 20 > static_cast<std::size_t>(name_max)) {
    throw UsageError("-o " + path.string() + ": the file name has " + std::to_string(length) + " bytes, and selfnorm "
                     "writes files named after it with up to 20 more (.<name>.tmp-<pid>-<n> while writing), over this "
                     "file system's limit of " + std::to_string(name_max) + "; choose a name of at most " +
                     std::to_string(name_max - 20) + " bytes");
  }
}

// Takes the lock on `out` for this process. A folder where the lock file cannot be created is a
// bad output path (exit status 2, nothing written); a lock held by another run is LockedError.
std::unique_ptr<io::OutputLock> lock_output(const fs::path& out, const std::string& command_line) {
  const std::string holder = "pid: " + std::to_string(::getpid()) + "\nhost: " + host_name() +
                             "\nstarted: " + utc_now() + "\ncommand: " + command_line + "\n";
  try {
    return std::make_unique<io::OutputLock>(out, holder);
  } catch (const io::WriteError& e) {
    const fs::path folder = out.parent_path().empty() ? fs::path(".") : out.parent_path();
    std::string why = std::strerror(e.error_code());
    // Virtual file systems refuse new files as if the folder did not exist.
    if (e.error_code() == ENOENT) why += ", although the folder exists: it does not hold ordinary files, as /proc does";
    throw UsageError("cannot create files in the output folder " + folder.string() + " (" + why + "; selfnorm "
                     "creates its lock file " + io::lock_path(out).string() + " before any work); choose another "
                     "path with -o");
  }
}

std::string plural(std::int64_t n, const std::string& word) {
  return std::to_string(n) + " " + word + (n == 1 ? "" : "s");
}

// More shards than points would leave shards with nothing to compute, which merge still requires.
void check_shard_count(std::int64_t shards, const io::Experiment& ex, const std::string& what) {
  const auto points = static_cast<std::int64_t>(ex.points.size());
  if (shards > points) {
    throw UsageError(what + ": " + std::to_string(shards) + " shards is more than the " + plural(points, "point") +
                     " of " + ex.name + "; use at most " + std::to_string(points) + " shards");
  }
}

// The header of the selfnorm result at `path`; nullopt if no file is there or it is not a result.
std::optional<io::FileHeader> result_header(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::nullopt;
  try {
    return io::read_header(path);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// The header of the file at the output path, if there is one. It is replaced only if it is a
// selfnorm result (with --overwrite): a config, a damaged file or another program's file is never
// written over.
std::optional<io::FileHeader> existing_output(const fs::path& out) {
  std::error_code ec;
  if (!fs::exists(out, ec)) return std::nullopt;
  if (!fs::is_regular_file(out, ec)) {
    throw UsageError(out.string() + " exists and is not a regular file; choose another path with -o");
  }
  try {
    return io::read_header(out);
  } catch (const std::exception& e) {
    throw UsageError(out.string() + " exists and is not a selfnorm result file (" + e.what() + "); selfnorm "
                     "replaces only its own results, even with --overwrite: move the file away or choose another "
                     "path with -o");
  }
}

// True if `h` is the header of a complete result of this experiment and shard.
bool complete_for(const io::FileHeader& h, const io::Experiment& ex, const std::optional<io::ShardInfo>& shard) {
  const bool same_shard = (!h.shard && !shard) ||
                          (h.shard && shard && h.shard->index == shard->index && h.shard->count == shard->count);
  // output.per_trial is not part of the config hash (it changes what is written, not what is
  // computed), but a file without the per-trial values is not complete for a config that asks for them.
  return h.config_hash == ex.hash && same_shard && h.schema_version == io::kSchemaVersion &&
         h.per_trial == ex.output.per_trial;
}

// Points of `records` (a file's or a checkpoint's) whose products, as recorded in point_matmul,
// differ from those this run's --matmul gives them on this machine: "3 of its points were computed
// with bf16x6 products". "" if none; on the CPU only (a GPU's device is part of the config hash).
std::string other_products(const std::vector<io::PointRecord>& records, const io::Experiment& ex,
                           const RunOptions& options) {
  if (ex.device.device != io::Device::cpu) return {};
  std::int64_t count = 0;
  std::set<std::string> kinds;
  for (const auto& r : records) {
    if (r.matmul.empty()) continue;  // files written before point_matmul
    const std::string here(to_string(resolve_matmul(options.matmul, ex.points[static_cast<std::size_t>(r.index)].spec)));
    if (r.matmul != here) {
      ++count;
      kinds.insert(r.matmul);
    }
  }
  if (count == 0) return {};
  std::string names;
  for (const auto& k : kinds) names += (names.empty() ? "" : " and ") + k;
  return std::to_string(count) + " of its points " + (count == 1 ? "was" : "were") + " computed with " + names +
         " products";
}

// "shard 2 of 4", or "the whole experiment" for a file that is not a shard.
std::string split_name(const std::optional<io::ShardInfo>& shard) {
  return shard ? "shard " + std::to_string(shard->index) + " of " + std::to_string(shard->count)
               : std::string("the whole experiment");
}

// What sets the result with header `h` apart from this run of `ex` and `shard`, for a message: the
// config keys that differ ("seed 0 in the file, 5 here"), the split, or else the file layout.
std::string how_it_differs(const io::FileHeader& h, const io::Experiment& ex,
                           const std::optional<io::ShardInfo>& shard) {
  if (h.config_hash != ex.hash) {
    std::string keys;
    try {
      keys = io::config_differences(json::parse(h.config), ex.resolved);
    } catch (const json::exception&) {
      // a config attribute that is not JSON: the hashes alone tell the difference
    }
    return keys.empty() ? "config hash " + h.config_hash + " in the file, " + ex.hash + " here" : keys;
  }
  const std::string there = split_name(h.shard), here = split_name(shard);
  if (there != here) return there + " in the file, " + here + " here";
  return "schema version " + std::to_string(h.schema_version) + " in the file, " + std::to_string(io::kSchemaVersion) +
         " here";
}

// Whether `out`, which exists (header `existing`) and is not to be overwritten, is already this
// run's result: true if so (its leftover checkpoints of this config are removed); UsageError,
// saying what it holds and what would work, if it is anything else.
bool already_complete(const fs::path& out, const io::FileHeader& existing, const io::Checkpoint& checkpoint,
                      const io::Experiment& ex, const std::optional<io::ShardInfo>& shard, const RunOptions& options,
                      const RunArgs& args) {
  if (complete_for(existing, ex, shard)) {
    if (options.matmul != Matmul::automatic) {
      // An explicit --matmul asks for those products: a file computed with others is not its result.
      std::vector<io::PointRecord> done;
      try {
        done = io::read_records(out);
      } catch (const std::runtime_error& e) {
        throw UsageError(e.what());
      }
      const std::string other = other_products(done, ex, options);
      if (!other.empty()) {
        throw UsageError(out.string() + " is complete for this config, but " + other + ", where --matmul " +
                         args.matmul + " asks for " + args.matmul + "; pass --overwrite to recompute it (the old "
                         "file stays intact until the new one is complete) or choose another path with -o");
      }
    }
    // A run stopped after it wrote the file, while it removed its checkpoints, leaves some
    // behind: points of this config, all in the file. Another experiment's are left alone.
    bool own_checkpoints = false;
    if (checkpoint.exists()) {
      try {
        checkpoint.load(ex, shard);
        own_checkpoints = true;
      } catch (const std::exception&) {
      }
    }
    if (own_checkpoints) checkpoint.remove();
    if (!args.quiet) {
      std::cerr << out.string() << " is already complete for this config; nothing to do"
                << (own_checkpoints ? " (removed the checkpoints " + checkpoint.folder().string() +
                                          " a stopped run had left behind)"
                                    : std::string())
                << std::endl;
    }
    return true;
  }
  if (existing.config_hash == ex.hash && existing.per_trial != ex.output.per_trial) {
    throw UsageError(out.string() + " holds this experiment written with " +
                     io::per_trial_setting(existing.per_trial) + ", and this config has " +
                     io::per_trial_setting(ex.output.per_trial) + "; pass --overwrite to rerun it (the old file "
                     "stays intact until the new one is complete) or choose another path with -o");
  }
  if (existing.config_hash == ex.hash && existing.schema_version < io::kSchemaVersion) {
    throw UsageError(out.string() + " holds this experiment in an older file layout (schema version " +
                     std::to_string(existing.schema_version) + "); pass --overwrite to recompute it in "
                     "version " + std::to_string(io::kSchemaVersion) + " (the old file stays intact until the new "
                     "one is complete)");
  }
  throw UsageError(out.string() + " already exists and holds other results (" + how_it_differs(existing, ex, shard) +
                   "); pass --overwrite to replace it (the old file stays intact until the new one is complete) or "
                   "choose another path with -o");
}

// The points an earlier, interrupted run of this output finished, from its checkpoints (their
// headers go to `earlier`). A checkpoint of another run (another experiment, output.per_trial or
// split) is removed under --overwrite, and otherwise the user's to clear (UsageError), as is a
// damaged one. Points computed with other products than this run's: an explicit --matmul refuses
// them (removes them under --overwrite), and auto (a job requeued onto a machine of another kind)
// takes them and says so; point_matmul records each point's either way.
std::vector<io::PointRecord> resume_points(const io::Checkpoint& checkpoint, const io::Experiment& ex,
                                           const std::optional<io::ShardInfo>& shard, const RunOptions& options,
                                           const RunArgs& args, std::vector<io::FileHeader>& earlier) {
  auto start_afresh = [&](const std::string& why) {
    checkpoint.remove();
    earlier.clear();
    if (!args.quiet) {
      std::cerr << "removed the checkpoint folder " << checkpoint.folder().string() << " (--overwrite): " << why
                << std::endl;
    }
    return std::vector<io::PointRecord>{};
  };
  std::vector<io::PointRecord> records;
  try {
    records = checkpoint.load(ex, shard, &earlier);
  } catch (const io::OtherRunCheckpoint& e) {
    if (!args.overwrite) throw UsageError(e.what());
    return start_afresh("it held another run's points");
  } catch (const std::runtime_error& e) {
    throw UsageError(e.what());
  }
  if (const std::string other = other_products(records, ex, options); !other.empty()) {
    if (options.matmul != Matmul::automatic && args.overwrite) return start_afresh(other);
    if (options.matmul != Matmul::automatic) {
      throw UsageError("the checkpoint folder " + checkpoint.folder().string() + " holds points of this experiment, "
                       "but " + other + ", where --matmul " + args.matmul + " asks for " + args.matmul + "; finish "
                       "the run with the --matmul it was begun with, or remove the folder to start again (run --overwrite "
                       "does)");
    }
    if (!args.quiet) {
      std::cerr << "note: in the checkpoint folder " << checkpoint.folder().string() << ", " << other
                << ", and this run computes the rest as --matmul auto gives them here; the file's point_matmul "
                   "records each point's"
                << std::endl;
    }
  }
  return records;
}

// What a run of `points` holds in memory at its peak: the largest point's engine buffers and
// result, plus the records kept for the result file (twice: kept, then laid out for writing).
struct MemoryNeed {
  double bytes = 0.0;
  std::int64_t largest_point = 0;
  bool beyond_address_space = false;  // an estimate saturated at SIZE_MAX: the true need is larger
  std::string text() const { return (beyond_address_space ? "more than " : "about ") + format_bytes(bytes); }
};

MemoryNeed memory_need(const io::Experiment& ex, const std::vector<std::int64_t>& points, const RunOptions& options) {
  MemoryNeed need;
  double largest = -1.0;
  double records = 0.0;
  for (std::int64_t p : points) {
    const PointSpec& spec = ex.points[static_cast<std::size_t>(p)].spec;
    const std::size_t total = estimate_work(spec, options).total_bytes();
    need.beyond_address_space = need.beyond_address_space || total == std::numeric_limits<std::size_t>::max();
    const double point = static_cast<double>(total);
    if (point > largest) {
      largest = point;
      need.largest_point = p;
    }
    const double layers = static_cast<double>(spec.network.depth());
    records += layers * kStatCount * 2 * sizeof(double);
    if (ex.output.per_trial) records += static_cast<double>(spec.monte_carlo.trials) * layers * kStatCount * sizeof(double);
  }
  need.bytes = std::max(largest, 0.0) + 2.0 * records;
  return need;
}

// JSON for stdout. A string that is not UTF-8 (a file name) gets U+FFFD for its bad bytes; nlohmann
// would throw.
std::string dump(const json& j) { return j.dump(2, ' ', false, json::error_handler_t::replace); }

// A byte count for JSON: an integer, or the estimate as a number where it passes 2^64 bytes.
json byte_count(double bytes) {
  if (bytes >= 0.0 && bytes < 18446744073709551616.0) return json(static_cast<std::uint64_t>(std::ceil(bytes)));
  return json(bytes);
}

// Why `points` will not fit in this machine's memory, or "" if they do (or it cannot be told).
std::string memory_problem(const std::string& config, const io::Experiment& ex, const std::vector<std::int64_t>& points,
                           const RunOptions& options) {
  const std::optional<MachineMemory> machine = machine_memory();
  if (!machine) return {};
  const MemoryNeed need = memory_need(ex, points, options);
  const auto usable = static_cast<double>(machine->usable());
  if (need.bytes <= usable) return {};
  std::string msg = config + ": the run needs " + need.text() + " of memory (engine buffers and statistics of its "
                    "largest point";
  if (ex.points.size() > 1) msg += ", point " + std::to_string(need.largest_point);
  msg += ", with " + plural(options.threads, "thread") + "), but ";
  if (machine->cgroup_bound()) {
    const io::CgroupMemory& group = *machine->cgroup;
    msg += "this process's control group may take only " + format_bytes(usable) + " more (its memory limit is " +
           format_bytes(static_cast<double>(group.limit)) + ", " + group.file + ", with " +
           format_bytes(static_cast<double>(group.usage)) + " in use; under Slurm, --mem sets it); ";
  } else {
    msg += "this machine has " + format_bytes(usable) + " available of " +
           format_bytes(static_cast<double>(machine->total)) + " (MemAvailable and MemTotal in /proc/meminfo); ";
  }
  RunOptions one = options;
  one.threads = 1;
  const MemoryNeed single = memory_need(ex, points, one);
  if (options.threads > 1 && single.bytes <= usable) {
    msg += "--threads 1 needs only " + format_bytes(single.bytes) + "; ";
  }
  return msg + "reduce monte_carlo.batch, monte_carlo.trials or the widths, or pass --allow-large-memory to run "
               "anyway";
}

// The experiment with the command line's --device and --tf32 applied (UsageError if invalid).
io::Experiment override_device(const io::Experiment& ex, const std::optional<std::string>& device_arg, bool tf32) {
  io::DeviceOptions device = ex.device;
  if (device_arg) {
    if (*device_arg != "cpu" && *device_arg != "cuda") {
      throw UsageError("--device " + *device_arg + " is not valid; use cpu or cuda");
    }
    device.device = *device_arg == "cuda" ? io::Device::cuda : io::Device::cpu;
  }
  if (tf32) {
    if (device.device != io::Device::cuda) {
      throw UsageError("--tf32 chooses the GPU's GEMM arithmetic, but this run is on the CPU; add --device cuda or "
                       "drop --tf32");
    }
    device.tf32 = true;
  }
  return io::with_device(ex, device);
}

}  // namespace

int run_command(const RunArgs& args) {
  io::Experiment ex = io::load_experiment(args.config);
  if (args.seed) ex = io::with_seed(ex, static_cast<std::uint64_t>(parse_count(*args.seed, "--seed")));
  const ThreadChoice threads = choose_threads(args.threads);
  RunOptions options;
  options.threads = threads.threads;
  options.parallel = parse_parallel(args.parallel);
  options.matmul = parse_matmul(args.matmul);
  const std::optional<io::ShardInfo> shard = parse_shard(args.shard);
  if (shard) check_shard_count(shard->count, ex, "--shard " + args.shard);
  const auto mine = io::shard_points(static_cast<std::int64_t>(ex.points.size()), shard);

  // The device: the config's, unless --device overrides it. It enters the config hash (on the
  // GPU), so a result or checkpoint of one device is never taken for the other's.
  ex = override_device(ex, args.device, args.tf32);
  const io::DeviceOptions device = ex.device;
  const std::string device_source = args.device ? "--device " + *args.device
                                                : "\"device\": \"" + std::string(io::to_string(device.device)) +
                                                      "\" in " + args.config;
  // A device that cannot be used ends the run here, before any file exists (exit status 4).
  const std::unique_ptr<PointRunner> runner = make_runner(device, options, threads.source, device_source);

  // Refused before anything is allocated or written.
  if (options.matmul == Matmul::bf16x6 && device.device == io::Device::cpu &&
      std::none_of(mine.begin(), mine.end(), [&](std::int64_t p) {
        return ex.points[static_cast<std::size_t>(p)].spec.precision == Precision::float32;
      })) {
    throw UsageError("--matmul bf16x6: every point of this run is float64, whose products always run on the FMA "
                     "units (the tile units have no float64); leave --matmul out, or use it with a float32 config");
  }
  if (device.device == io::Device::cuda) {
    for (std::int64_t p : mine) {
      const std::string problem = runner->check(ex.points[static_cast<std::size_t>(p)].spec);
      if (!problem.empty()) {
        throw UsageError(args.config + ": point " + std::to_string(p) + " cannot run on the GPU: " + problem);
      }
    }
  } else if (!args.allow_large_memory) {
    const std::string problem = memory_problem(args.config, ex, mine, options);
    if (!problem.empty()) throw UsageError(problem);
  }

  fs::path out = args.output;
  if (out.empty()) {
    if (shard) {
      out = io::shard_path(fs::path("results") / ex.name, shard->index, shard->count);
      std::error_code ec;
      fs::create_directories(out.parent_path(), ec);
      if (ec) {
        throw UsageError("cannot create the shard folder " + out.parent_path().string() + " (" + ec.message() +
                         "); create it, or give the shard's file with -o");
      }
    } else {
      out = fs::path("results") / (ex.name + ".h5");
    }
  }
  check_output_folder(out);
  // From here on this process is the only writer of `out`, its temporary files and checkpoints.
  const std::unique_ptr<io::OutputLock> lock = lock_output(out, args.command_line);
  const io::Checkpoint checkpoint(out);
  const int stale = io::remove_stale_temporaries(out) + checkpoint.remove_stale_temporaries();
  if (stale > 0 && !args.quiet) {
    std::cerr << "removed " << plural(stale, "temporary file") << " of an interrupted write of " << out.string()
              << std::endl;
  }
  std::error_code ec;
  const std::optional<io::FileHeader> existing = existing_output(out);
  if (fs::exists(checkpoint.folder(), ec) && !checkpoint.exists()) {
    throw UsageError(checkpoint.folder().string() + " exists and is not a folder; selfnorm keeps the finished points "
                     "of an unfinished run of " + out.string() + " there: move the file away or choose another "
                     "path with -o");
  }
  if (existing && !args.overwrite && already_complete(out, *existing, checkpoint, ex, shard, options, args)) return 0;

  // Points of this shard; those finished by an earlier, interrupted run are read back.
  std::vector<io::FileHeader> earlier;  // the checkpoints' headers: the programs that computed them
  std::vector<io::PointRecord> records = resume_points(checkpoint, ex, shard, options, args, earlier);
  std::vector<std::int64_t> todo;
  for (std::int64_t p : mine) {
    const bool done = std::any_of(records.begin(), records.end(), [&](const io::PointRecord& r) { return r.index == p; });
    if (!done) todo.push_back(p);
  }

  double total_flop = 0.0;
  std::size_t peak_bytes = 0;
  for (std::int64_t p : todo) {
    const WorkEstimate e = estimate_work(ex.points[static_cast<std::size_t>(p)].spec, options);
    total_flop += e.gemm_flop;
    peak_bytes = std::max(peak_bytes, e.buffer_bytes);
  }
  if (!args.quiet) {
    std::cerr << "selfnorm: " << ex.name;
    if (shard) std::cerr << " shard " << shard->index << "/" << shard->count;
    std::cerr << ": " << plural(static_cast<std::int64_t>(mine.size()), "point");
    if (!records.empty()) {
      std::cerr << " (" << records.size() << " already done in " << checkpoint.folder().string() << ", resuming)";
    }
    std::cerr << ", " << total_flop * 1e-9 << " GFLOP to do, " << runner->start_note(static_cast<double>(peak_bytes))
              << std::endl;
  }

  io::Provenance provenance = current_provenance(threads.threads, args.command_line);
  runner->describe(provenance);
  StopSignals signals(checkpoint.folder());
  ProgressDisplay progress(!args.quiet, static_cast<std::int64_t>(todo.size()), total_flop);
  std::int64_t ordinal = 0;
  for (std::int64_t p : todo) {
    const auto& point = ex.points[static_cast<std::size_t>(p)];
    const double flop = estimate_work(point.spec, options).gemm_flop;
    progress.start_point(ordinal++, point_label(ex, p), point.spec.monte_carlo.trials, flop);
    PointResult result;
    try {
      result = runner->run(point.spec, StreamSeed{ex.seed, static_cast<std::uint64_t>(p)},
                           [&](std::int64_t done, std::int64_t total) { progress.update(done, total); });
    } catch (const std::bad_alloc&) {
      progress.finish();
      throw std::runtime_error(args.config + ": point " + std::to_string(p) + ": out of memory (the operating system "
                               "refused the engine's buffers, about " + format_bytes(static_cast<double>(
                               estimate_work(point.spec, options).total_bytes())) + "); reduce monte_carlo.batch, "
                               "monte_carlo.trials, the widths or --threads");
    } catch (const std::length_error& e) {
      progress.finish();
      throw std::runtime_error(args.config + ": point " + std::to_string(p) + ": " + e.what());
    } catch (...) {
      progress.finish();  // the error's message starts on a line of its own
      throw;
    }
    progress.finish_point();
    records.push_back(io::make_record(p, result, ex.output.per_trial));
    io::add_predictions(records.back(), point.spec);
    runner->describe(provenance);
    try {
      checkpoint.save(ex, records.back(), provenance, shard);
    } catch (const io::WriteError& e) {
      progress.finish();
      const std::size_t saved = records.size() - 1;
      if (saved == 0 && checkpoint.exists()) {
        std::error_code ignored;
        fs::remove(checkpoint.folder(), ignored);  // the folder of a failed first checkpoint, if it is empty
      }
      if (saved == 0) {
        throw std::runtime_error(std::string(e.what()) + ". The run stopped with no point saved; the same command "
                                 "starts again once the problem is fixed");
      }
      throw std::runtime_error(std::string(e.what()) + ". The run stopped: " + std::to_string(saved) + " of " +
                               std::to_string(mine.size()) + " points are saved in " + checkpoint.folder().string() +
                               ", and the same command resumes from them");
    }
    if (signals.received() && ordinal < static_cast<std::int64_t>(todo.size())) {
      progress.finish();
      const int sig = signals.received();
      std::cerr << "stopped by " << (sig == SIGINT ? "SIGINT" : "SIGTERM") << " after finishing a point: "
                << records.size() << " of " << mine.size() << " points are saved in " << checkpoint.folder().string()
                << "; run the same command again to resume";
      if (const char* task = std::getenv("SLURM_ARRAY_TASK_ID"); task && shard) {
        std::cerr << " (a Slurm array task: resubmit it with scripts/slurm/submit.py CONFIG --shards " << shard->count
                  << " --only " << shard->index << " and the first submission's options)";
      }
      std::cerr << std::endl;
      return 128 + sig;
    }
  }
  progress.finish();
  const double seconds = progress.elapsed_seconds();
  std::sort(records.begin(), records.end(),
            [](const io::PointRecord& a, const io::PointRecord& b) { return a.index < b.index; });
  io::name_earlier(provenance, earlier);  // a resumed run's file names the earlier runs' programs too
  try {
    io::write_results(out, ex, records, provenance, shard);
  } catch (const io::WriteError& e) {
    throw std::runtime_error(std::string(e.what()) + ". Every point is saved in " + checkpoint.folder().string() +
                             ", and the same command writes the result from them without computing again");
  }
  checkpoint.remove();
  if (!args.quiet) {
    print_summary(std::cout, ex, records);
    std::cout << "\nwrote " << out.string() << " (" << plural(static_cast<std::int64_t>(records.size()), "point")
              << ", " << format_duration(seconds) << " on " << runner->where();
    if (total_flop > 0) std::cout << ", " << total_flop * 1e-9 / std::max(seconds, 1e-9) << " GFLOP/s";
    std::cout << runner->timing_note() << ")" << std::endl;
  }
  return 0;
}

int merge_command(const std::vector<std::string>& shards, const std::string& output, bool overwrite,
                  const std::string& command_line) {
  const fs::path out(output);
  check_output_folder(out);
  const std::unique_ptr<io::OutputLock> lock = lock_output(out, command_line);
  io::remove_stale_temporaries(out);
  std::error_code ec;
  std::vector<fs::path> paths(shards.begin(), shards.end());
  for (const auto& p : paths) {
    if (!fs::exists(p, ec)) throw UsageError("shard file " + p.string() + " does not exist");
    if (fs::is_directory(p, ec)) {
      throw UsageError(p.string() + " is a folder; merge takes the shard files inside it, such as " +
                       (p / "shard-*-of-N.h5").string());
    }
    if (fs::exists(out, ec) && fs::equivalent(p, out, ec)) {
      throw UsageError("-o " + out.string() + " is also one of the shards to merge; write the merged result to "
                       "another file (the shards stay as they are)");
    }
  }
  if (existing_output(out) && !overwrite) {
    throw UsageError(out.string() + " already exists; pass --overwrite to replace it or choose another path with -o");
  }
  try {
    io::merge_shards(paths, out, current_provenance(1, command_line));
  } catch (const io::ConfigError&) {
    throw;
  } catch (const io::WriteError&) {
    throw;  // the output's problem, not the shards': exit status 1
  } catch (const std::runtime_error& e) {
    throw UsageError(e.what());  // a problem with the files given: the user's to fix
  }
  std::cout << "merged " << plural(static_cast<std::int64_t>(paths.size()), "shard") << " into " << out.string()
            << std::endl;
  return 0;
}

// What a result in a shard's place holds, for status: another config's result, or this config's
// result of another split.
std::string describe_other_file(const io::FileHeader& h, const io::Experiment& ex) {
  if (h.config_hash != ex.hash) return "a result of another config (" + how_it_differs(h, ex, h.shard) + ")";
  if (!h.shard) return "a complete result of this config, not a shard";
  if (h.schema_version < io::kSchemaVersion) return "this shard in an older file layout; rerun it with --overwrite";
  if (h.per_trial != ex.output.per_trial) {
    return "this shard written with " + io::per_trial_setting(h.per_trial) + "; rerun it with --overwrite";
  }
  return "shard " + std::to_string(h.shard->index) + " of " + std::to_string(h.shard->count) + " of this config";
}

// True if the file at `path` starts with the HDF5 signature: a result file, if perhaps a damaged one.
bool looks_like_hdf5(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  char head[io::kHdf5Signature.size()] = {};
  in.read(head, sizeof head);
  return std::string_view(head, static_cast<std::size_t>(in.gcount())) == io::kHdf5Signature;
}

// "3 or 4": the shard counts N of the shard-K-of-N.h5 files in `folder` other than `shards`.
std::string other_shard_counts(const fs::path& folder, std::int64_t shards) {
  std::set<std::int64_t> counts;
  std::error_code ec;
  for (fs::directory_iterator it(folder, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    long long k = 0;
    long long n = 0;
    char tail[4] = {};
    if (std::sscanf(name.c_str(), "shard-%lld-of-%lld.%3s", &k, &n, tail) == 3 && std::string(tail) == "h5" &&
        n != shards) {
      counts.insert(n);
    }
  }
  std::string out;
  std::size_t i = 0;
  for (std::int64_t n : counts) {
    out += (i == 0 ? "" : (i + 1 == counts.size() ? " or " : ", ")) + std::to_string(n);
    ++i;
  }
  return out;
}

int status_command(const std::string& config, const std::string& shards_text, const std::string& folder_arg,
                   bool missing_only, const std::optional<std::string>& device, bool tf32) {
  const io::Experiment ex = override_device(io::load_experiment(config), device, tf32);
  const std::int64_t shards = parse_count(shards_text, "--shards", io::kMaxPoints, 1);
  check_shard_count(shards, ex, "--shards " + shards_text);
  const fs::path folder = folder_arg.empty() ? fs::path("results") / ex.name : fs::path(folder_arg);
  std::error_code folder_ec;
  const bool folder_exists = fs::exists(folder, folder_ec);
  if (folder_exists && !fs::is_directory(folder, folder_ec)) {
    throw UsageError((folder_arg.empty() ? folder.string() : "--dir " + folder_arg) + " is a file, not a folder; "
                     "give the folder that holds the shard files (by default results/<name>)");
  }
  std::vector<std::int64_t> missing;
  std::vector<std::int64_t> running;  // of the missing, those being written now (their lock is held)
  std::vector<std::int64_t> blocked;  // of the missing, those whose place holds a file that is not a result
  std::int64_t complete = 0;
  std::vector<std::string> lines;
  for (std::int64_t k = 0; k < shards; ++k) {
    const io::ShardInfo shard{k, shards};
    const fs::path path = io::shard_path(folder, k, shards);
    const std::int64_t points = static_cast<std::int64_t>(io::shard_points(static_cast<std::int64_t>(ex.points.size()),
                                                                           shard).size());
    std::string state;
    std::error_code ec;
    const std::optional<io::FileHeader> header = result_header(path);
    if (header && complete_for(*header, ex, shard)) {
      state = "complete";
      ++complete;
    } else {
      missing.push_back(k);
      const io::Checkpoint checkpoint(path);
      std::int64_t done = 0;
      std::string unusable;  // why the checkpoint cannot be resumed: another config's, damaged, ...
      if (checkpoint.exists()) {
        try {
          done = static_cast<std::int64_t>(checkpoint.load(ex, shard).size());
        } catch (const std::exception& e) {
          unusable = e.what();
        }
      }
      if (const auto holder = io::lock_holder(path)) {
        running.push_back(k);
        state = "running (" + (holder->empty() ? std::string("lock held") : *holder) + ")";
        if (done > 0) state += ", " + std::to_string(done) + " of " + std::to_string(points) + " points done";
      } else if (fs::exists(path, ec) && !header) {
        // A run never writes over it, even with --overwrite: a resubmitted task would fail at once.
        blocked.push_back(k);
        state = (looks_like_hdf5(path) ? std::string("damaged or cut short (an HDF5 file that is not a readable result)")
                                       : std::string("taken by a file that is not a selfnorm result")) +
                ": move it away before resubmitting";
      } else if (fs::exists(path, ec)) {
        state = "taken by " + describe_other_file(*header, ex);
      } else if (!unusable.empty()) {
        state = "checkpoint not resumable: " + unusable;
      } else if (done > 0) {
        state = "partial: " + std::to_string(done) + " of " + std::to_string(points) + " points";
      } else {
        state = "missing";
      }
    }
    lines.push_back("  shard " + std::to_string(k) + "  " + plural(points, "point") + "  " + state);
  }
  if (missing_only) {
    // For submit.py --only: a shard being written would be submitted twice (and the second task
    // would find it locked), and one whose place holds a file that is not a result would fail.
    std::vector<std::int64_t> to_submit;
    for (std::int64_t k : missing) {
      if (std::find(running.begin(), running.end(), k) == running.end() &&
          std::find(blocked.begin(), blocked.end(), k) == blocked.end()) {
        to_submit.push_back(k);
      }
    }
    std::cout << io::array_spec(to_submit) << std::endl;
    if (!running.empty()) {
      std::cerr << "note: left out: " << plural(static_cast<std::int64_t>(running.size()), "shard") << " being written "
                << "now (" << io::array_spec(running) << "); run status again once they end" << std::endl;
    }
    if (!blocked.empty()) {
      std::cerr << "note: left out: " << plural(static_cast<std::int64_t>(blocked.size()), "shard") << " whose file "
                << "is damaged, cut short or not a selfnorm result (" << io::array_spec(blocked) << "), which a run "
                << "never writes over; move the files away, then run status again" << std::endl;
    }
    return 0;
  }
  std::cout << ex.name << " (config hash " << ex.hash << "): " << ex.points.size() << " points in " << shards
            << " shards under " << folder.string() << (folder_exists ? "" : " (no such folder yet)") << "\n";
  for (const auto& l : lines) std::cout << l << "\n";
  std::cout << complete << " of " << shards << " shards complete\n";
  if (complete == 0) {
    const std::string other = other_shard_counts(folder, shards);
    if (!other.empty()) {
      std::cout << "the folder holds shard files of other splits (--shards " << other << "); is --shards " << shards
                << " the split the run used?\n";
    }
  }
  if (!missing.empty()) {
    std::cout << "not complete: " << io::array_spec(missing) << "  (sbatch --array=" << io::array_spec(missing)
              << ")";
    if (!running.empty()) std::cout << "; being written now: " << io::array_spec(running);
    if (!blocked.empty()) std::cout << "; move the files away before resubmitting: " << io::array_spec(blocked);
    std::cout << "\n";
  } else {
    // Beside the shards' folder, where submit.py's merge job writes it.
    const fs::path merged = (folder.parent_path().empty() ? fs::path(".") : folder.parent_path()) / (ex.name + ".h5");
    std::cout << "all shards complete; merge them with: selfnorm merge -o " << merged.string() << " "
              << (folder / ("shard-*-of-" + std::to_string(shards) + ".h5")).string();
    std::error_code merged_ec;
    if (fs::exists(merged, merged_ec)) std::cout << "  (" << merged.string() << " exists: merged already?)";
    std::cout << "\n";
  }
  return 0;
}

// `validate --json` of a config that does not load: the problems as JSON on stdout, for tools that
// read it, before the usual message on stderr (exit status 2).
io::Experiment load_for_validation(const std::string& config, bool as_json) {
  auto report = [&](const json& problems) {
    if (as_json) std::cout << dump(json{{"valid", false}, {"config", config}, {"problems", problems}}) << std::endl;
  };
  try {
    return io::load_experiment(config);
  } catch (const io::ConfigError& e) {
    json problems = json::array();
    for (const auto& issue : e.issues()) problems.push_back({{"path", issue.path}, {"message", issue.message}});
    report(problems);
    throw;
  } catch (const io::FileError& e) {
    report(json::array({{{"path", ""}, {"message", io::printable(e.what())}}}));
    throw;
  }
}

int validate_command(const std::string& config, std::optional<int> requested_threads, bool as_json) {
  const io::Experiment ex = load_for_validation(config, as_json);
  const ThreadChoice threads = choose_threads(requested_threads);
  RunOptions options;
  options.threads = threads.threads;
  double total_flop = 0.0;
  double max_point_flop = 0.0;
  std::size_t peak_bytes = 0;
  double peak_gpu_bytes = -1.0;
  // The GPU figures come from the CUDA backend's module. Validation only warns when it does not load
  // here: the config may be meant for a GPU node, where it does.
  std::string gpu_problem;
  for (const auto& point : ex.points) {
    const WorkEstimate e = estimate_work(point.spec, options);
    total_flop += e.gemm_flop;
    max_point_flop = std::max(max_point_flop, e.gemm_flop);
    peak_bytes = std::max(peak_bytes, e.buffer_bytes);
    if (ex.device.device == io::Device::cuda && gpu_problem.empty()) {
      try {
        peak_gpu_bytes = std::max(peak_gpu_bytes, gpu_bytes(point.spec));
      } catch (const DeviceError& e) {
        gpu_problem = e.what();
        peak_gpu_bytes = -1.0;
      }
    }
  }
  if (!gpu_problem.empty()) {
    std::cerr << "warning: " << config << ": the GPU memory of \"device\": \"cuda\" is unknown: " << gpu_problem
              << std::endl;
  }
  std::vector<std::int64_t> all(ex.points.size());
  for (std::size_t p = 0; p < all.size(); ++p) all[p] = static_cast<std::int64_t>(p);
  const MemoryNeed need = memory_need(ex, all, options);
  const double memory_bytes = need.bytes;
  const std::optional<MachineMemory> machine = machine_memory();
  // Validation warns only: the config may be meant for a bigger machine (a Slurm node).
  const std::string memory_warning = memory_problem(config, ex, all, options);
  if (!memory_warning.empty()) std::cerr << "warning: " << memory_warning << std::endl;
  if (as_json) {
    json varied = json::array();
    for (const auto& v : ex.varied) varied.push_back(v.key);
    std::cout << dump(json{{"valid", true},
                           {"name", ex.name},
                           {"config_hash", ex.hash},
                           {"seed", ex.seed},
                           {"points", ex.points.size()},
                           {"grid_shape", ex.grid_shape},
                           {"varied", varied},
                           {"gemm_gflop", total_flop * 1e-9},
                           {"max_point_gflop", max_point_flop * 1e-9},
                           {"buffer_bytes", peak_bytes},
                           {"memory_bytes", byte_count(memory_bytes)},
                           {"memory_available_bytes", machine ? json(machine->usable()) : json(nullptr)},
                           {"fits_in_memory", memory_warning.empty()},
                           {"threads", threads.threads},
                           {"device", std::string(io::to_string(ex.device.device))},
                           {"gpu_memory_bytes", peak_gpu_bytes >= 0 ? byte_count(peak_gpu_bytes) : json(nullptr)}})
              << std::endl;
    return 0;
  }
  std::cout << config << ": valid\n";
  std::cout << "  experiment   " << ex.name << " (config hash " << ex.hash << ", seed " << ex.seed << ")\n";
  std::cout << "  points       " << ex.points.size();
  if (!ex.grid_shape.empty()) {
    std::cout << " (grid";
    for (auto n : ex.grid_shape) std::cout << " " << n;
    std::cout << ")";
  }
  std::cout << "\n";
  if (!ex.varied.empty()) {
    std::cout << "  varied       ";
    for (std::size_t k = 0; k < ex.varied.size(); ++k) std::cout << (k ? ", " : "") << ex.varied[k].key;
    std::cout << "\n";
  }
  std::cout << "  work         " << total_flop * 1e-9 << " GFLOP of matrix products\n";
  std::cout << "  memory       " << (need.beyond_address_space ? "more than " : "")
            << format_bytes(static_cast<double>(peak_bytes)) << " of engine buffers at the "
            << "largest point with " << plural(threads.threads, "thread") << ", " << need.text() << " in all";
  if (machine) {
    std::cout << " (" << format_bytes(static_cast<double>(machine->usable())) << " available here"
              << (machine->cgroup_bound() ? ", under this process's control-group memory limit)" : ")");
  }
  std::cout << "\n";
  if (ex.device.device == io::Device::cuda) {
    std::cout << "  device       cuda" << (ex.device.tf32 ? " (TF32 GEMMs)" : "") << ": ";
    if (peak_gpu_bytes >= 0) {
      std::cout << format_bytes(peak_gpu_bytes) << " of GPU memory at the largest point\n";
    } else if (!has_cuda_backend()) {
      std::cout << "this build has no CUDA backend\n";
    } else if (!gpu_problem.empty()) {
      std::cout << "GPU memory unknown: the CUDA backend did not load (see the warning)\n";
    } else {
      std::cout << "a point exceeds the CUDA backend's sizes\n";
    }
  }
  return 0;
}

int print_config_command(const std::string& config) {
  const io::Experiment ex = io::load_experiment(config);
  std::cout << dump(ex.resolved) << std::endl;
  return 0;
}

int activations_command(bool as_json) {
  if (!as_json) {
    print_activations(std::cout);
    return 0;
  }
  json list = json::array();
  for (const auto& info : activation_catalog()) {
    json params = json::object();
    for (const auto& p : info.params) params[std::string(p.name)] = p.default_value;
    json aliases = json::array();
    for (auto a : info.aliases) aliases.push_back(std::string(a));
    list.push_back({{"name", std::string(info.name)}, {"formula", std::string(info.formula)}, {"parameters", params},
                    {"aliases", aliases}});
  }
  std::cout << list.dump(2) << std::endl;
  return 0;
}

}  // namespace selfnorm::cli
