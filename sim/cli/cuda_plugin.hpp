// The CUDA backend as a plugin: a module (libselfnorm_cuda.so, next to the selfnorm executable)
// built from sim/cuda and cli/cuda_runner.cpp, which cli/device.cpp loads with dlopen only when a
// GPU is asked for. So the executable does not link cuBLAS: CPU runs never map it (~200 MB of
// libcublas and libcublasLt, ~0.07 s at start-up), and a CUDA build starts on machines without it.
//
// Both sides come from the same build and share their C++ types through the headers; the entry
// point has C linkage only so that dlsym finds it by a plain name. The table it returns carries a
// version and the sizes of the types that cross, which catch a module left over from another build.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "cli/device.hpp"
#include "core/engine.hpp"
#include "io/config.hpp"
#include "io/results.hpp"

namespace selfnorm::cli {

// Raised whenever the table below or the meaning of its entries changes.
inline constexpr int kCudaPluginVersion = 1;

// The sizes of the types that cross between the executable and the module: a module built with
// other definitions of them differs here.
struct CudaPluginLayout {
  std::size_t spec = sizeof(PointSpec);
  std::size_t seed = sizeof(StreamSeed);
  std::size_t result = sizeof(PointResult);
  std::size_t progress = sizeof(ProgressCallback);
  std::size_t device = sizeof(io::DeviceOptions);
  std::size_t provenance = sizeof(io::Provenance);
  bool operator==(const CudaPluginLayout&) const = default;
};

// What the module offers the command line.
struct CudaPlugin {
  int version = 0;          // kCudaPluginVersion of the build that made the module
  CudaPluginLayout layout;  // as the module was compiled
  // The runner on device 0, as make_runner. Throws DeviceError naming `source` when there is no
  // usable GPU or CUDA fails to start.
  std::unique_ptr<PointRunner> (*make_runner)(const io::DeviceOptions& device, const std::string& source) = nullptr;
  // Bytes of GPU memory `spec` needs (computed without a GPU), or -1 for a spec the backend refuses.
  double (*gpu_bytes)(const PointSpec& spec) = nullptr;
};

// The name dlsym looks up.
inline constexpr const char* kCudaPluginEntry = "selfnorm_cuda_plugin";

}  // namespace selfnorm::cli

// The module's entry point: its table, valid as long as the module stays loaded (for the process).
extern "C" const selfnorm::cli::CudaPlugin* selfnorm_cuda_plugin();
