#include "cli/device.hpp"

#include <utility>

#include "cli/errors.hpp"
#include "cli/units.hpp"
#include "core/gemm.hpp"

#if defined(SELFNORM_HAVE_CUDA)
#include <dlfcn.h>

#include <filesystem>
#include <system_error>

#include "cli/cuda_plugin.hpp"
#endif

namespace selfnorm::cli {
namespace {

#if defined(SELFNORM_HAVE_CUDA)
namespace fs = std::filesystem;
#endif

std::string threads_text(int n) { return std::to_string(n) + (n == 1 ? " thread" : " threads"); }

}  // namespace

std::string gemm_description(Matmul matmul) {
  const std::string fma(gemm_backend());
  if (matmul == Matmul::fma || !bf16x6_available()) return fma;
  if (matmul == Matmul::bf16x6) return fma + ", amx-bf16x6 for float32";
  return fma + ", amx-bf16x6 for float32 at batch >= " + std::to_string(kBf16x6MinBatch);
}

namespace {

// The CPU engine.
class CpuRunner : public PointRunner {
 public:
  CpuRunner(const RunOptions& options, std::string thread_source)
      : options_(options), thread_source_(std::move(thread_source)) {}
  PointResult run(const PointSpec& spec, const StreamSeed& seed, const ProgressCallback& progress) override {
    return simulate_point(spec, seed, options_, progress);
  }
  std::string check(const PointSpec&) const override { return {}; }
  void describe(io::Provenance& provenance) const override {
    provenance.device = "cpu";
    provenance.gemm_backend = gemm_description(options_.matmul);
  }
  std::string start_note(double cpu_buffer_bytes) const override {
    std::string note = "buffers " + format_bytes(cpu_buffer_bytes) + ", " + threads_text(options_.threads) + " (" +
                       thread_source_ + ")";
    if (options_.matmul != Matmul::fma && bf16x6_available()) {
      note += options_.matmul == Matmul::bf16x6
                  ? ", float32 products on AMX (bf16x6)"
                  : ", float32 products on AMX (bf16x6) at batch >= " + std::to_string(kBf16x6MinBatch);
    }
    return note;
  }
  std::string where() const override { return threads_text(options_.threads); }

 private:
  RunOptions options_;
  std::string thread_source_;
};

#if defined(SELFNORM_HAVE_CUDA)

// The CUDA backend's module (cli/cuda_plugin.hpp), or why it cannot be used.
struct LoadedPlugin {
  const CudaPlugin* plugin = nullptr;
  std::string problem;  // for DeviceError, when `plugin` is null
};

std::string plugin_layout_text(const CudaPluginLayout& l) {
  return "spec " + std::to_string(l.spec) + ", seed " + std::to_string(l.seed) + ", result " +
         std::to_string(l.result) + ", progress " + std::to_string(l.progress) + ", device " +
         std::to_string(l.device) + ", provenance " + std::to_string(l.provenance) + " bytes";
}

// Loads the module from the executable's own folder. RTLD_NOW: a library it needs that is missing
// (libcublas) or lacks a symbol fails here, with dlerror() saying which, not in the middle of a run.
LoadedPlugin load_cuda_plugin() {
  const std::string cublas = "the CUDA toolkit's cuBLAS (libcublas.so." SELFNORM_CUDA_MAJOR " and libcublasLt.so."
                             SELFNORM_CUDA_MAJOR ")";
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) {
    return {nullptr, "the CUDA backend could not be found (reading /proc/self/exe, to look next to the executable "
                     "for " SELFNORM_CUDA_PLUGIN ", failed: " + ec.message() + "); use --device cpu"};
  }
  const fs::path path = exe.parent_path() / SELFNORM_CUDA_PLUGIN;
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    const std::string dl = std::string("dlopen: ") + (why != nullptr ? why : "unknown error");
    if (!fs::exists(path, ec)) {
      return {nullptr, "the CUDA backend's module " + path.string() + " is missing (" + dl + "); a CUDA build "
                       "of selfnorm keeps its backend in that file, next to the executable: copy it along with the "
                       "executable (or rebuild), build with -DSELFNORM_CUDA=OFF for a binary without the CUDA backend, "
                       "or use --device cpu"};
    }
    return {nullptr, "the CUDA backend could not be loaded from " + path.string() + " (" + dl + "); it needs " +
                     cublas + ": install it or add its folder to LD_LIBRARY_PATH, rebuild with "
                     "-DSELFNORM_CUDA=OFF for machines without it, or use --device cpu"};
  }
  // Never closed: the runners it makes run its code until the process ends.
  dlerror();
  using Entry = const CudaPlugin* (*)();
  const auto entry = reinterpret_cast<Entry>(dlsym(handle, kCudaPluginEntry));
  if (entry == nullptr) {
    const char* why = dlerror();
    return {nullptr, path.string() + " is not selfnorm's CUDA module (dlsym: " +
                     (why != nullptr ? why : std::string("no ") + kCudaPluginEntry) + "); rebuild selfnorm, "
                     "which puts its module next to the executable, or use --device cpu"};
  }
  const CudaPlugin* plugin = entry();
  if (plugin->version != kCudaPluginVersion || !(plugin->layout == CudaPluginLayout{})) {
    return {nullptr, "the CUDA backend's module " + path.string() + " comes from another build of selfnorm "
                     "(plugin interface " + std::to_string(plugin->version) + ", types of " +
                     plugin_layout_text(plugin->layout) + "; this executable has interface " +
                     std::to_string(kCudaPluginVersion) + ", " + plugin_layout_text(CudaPluginLayout{}) +
                     "); keep the module of the same build next to the executable (rebuild both), or use --device cpu"};
  }
  return {plugin, {}};
}

// Loaded on first need, once per process (a thread-safe static).
const LoadedPlugin& cuda_plugin() {
  static const LoadedPlugin loaded = load_cuda_plugin();
  return loaded;
}

#endif

}  // namespace

bool has_cuda_backend() {
#if defined(SELFNORM_HAVE_CUDA)
  return true;
#else
  return false;
#endif
}

double gpu_bytes(const PointSpec& spec) {
#if defined(SELFNORM_HAVE_CUDA)
  const LoadedPlugin& cuda = cuda_plugin();
  if (cuda.plugin == nullptr) throw DeviceError(cuda.problem);
  return cuda.plugin->gpu_bytes(spec);
#else
  (void)spec;
  return -1.0;
#endif
}

std::unique_ptr<PointRunner> make_runner(const io::DeviceOptions& device, const RunOptions& options,
                                         const std::string& thread_source, const std::string& source) {
  if (device.device == io::Device::cpu) return std::make_unique<CpuRunner>(options, thread_source);
#if defined(SELFNORM_HAVE_CUDA)
  const LoadedPlugin& cuda = cuda_plugin();
  if (cuda.plugin == nullptr) throw DeviceError(source + ": " + cuda.problem);
  return cuda.plugin->make_runner(device, source);
#else
  throw DeviceError(source + ": this selfnorm was built without the CUDA backend (CMake found no CUDA toolkit, or "
                    "it was configured with -DSELFNORM_CUDA=OFF); rebuild where nvcc and cuBLAS are installed, "
                    "with -DSELFNORM_CUDA=ON to insist on it, or use --device cpu");
#endif
}

}  // namespace selfnorm::cli
