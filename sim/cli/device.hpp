// The device a run computes on: the CPU engine (core/engine.hpp) or, in builds that have it, the
// CUDA backend (cuda/cuda_backend.hpp), behind one interface, so that runs, shards, checkpoints and
// resume work the same on both. The CUDA backend is a module loaded on first need
// (cli/cuda_plugin.hpp): runs on the CPU never load it, nor cuBLAS.
#pragma once

#include <memory>
#include <string>

#include "core/engine.hpp"
#include "io/config.hpp"
#include "io/results.hpp"

namespace selfnorm::cli {

// Runs the points of an experiment on one device.
class PointRunner {
 public:
  virtual ~PointRunner() = default;
  // All trials of one point. Throws std::runtime_error with a remedy when the device fails.
  virtual PointResult run(const PointSpec& spec, const StreamSeed& seed, const ProgressCallback& progress) = 0;
  // Why `spec` cannot run on this device (device memory, an unsupported size), or "" if it can.
  virtual std::string check(const PointSpec& spec) const = 0;
  // Records the device (and on a GPU its name and the device time so far) in `provenance`.
  virtual void describe(io::Provenance& provenance) const = 0;
  // For the line that starts a run: "buffers 12 MiB, 2 threads (OMP_NUM_THREADS)", or the GPU.
  virtual std::string start_note(double cpu_buffer_bytes) const = 0;
  // For the line that ends a run: "2 threads", or the GPU's name.
  virtual std::string where() const = 0;
  // Appended to that line: the GPU time and its share outside GEMM; "" on the CPU.
  virtual std::string timing_note() const { return {}; }
};

// The CPU's products for the result file's gemm_backend attribute: the FMA kernel's name ("avx512",
// "avx2" or "portable"), and where the float32 products may run on AMX, which ones ("avx512, amx-bf16x6
// for float32 at batch >= 256"). Each point's own kernel is in the file's point_matmul.
std::string gemm_description(Matmul matmul);

// The runner for `device`; `source` says where the choice came from, for messages ("--device
// cuda"). Throws DeviceError (exit status 4) when the device cannot be used: no CUDA backend in
// this build, a backend module that is missing or does not load (no cuBLAS), no GPU, or a GPU
// that fails to start.
std::unique_ptr<PointRunner> make_runner(const io::DeviceOptions& device, const RunOptions& options,
                                         const std::string& thread_source, const std::string& source);

// True if this binary was built with the CUDA backend (a build fact: the module may still fail to load).
bool has_cuda_backend();

// Bytes of GPU memory `spec` needs on the CUDA backend (computed without a GPU); -1 in a build
// without the backend or for a spec it refuses. Loads the backend's module: throws DeviceError,
// with the reason and what would work, when it cannot.
double gpu_bytes(const PointSpec& spec);

}  // namespace selfnorm::cli
