// The CUDA backend's PointRunner, and the entry point of the module it is built into
// (libselfnorm_cuda.so, see cli/cuda_plugin.hpp). Only the module compiles this file: the
// executable reaches it through selfnorm_cuda_plugin(), after dlopen.
#include <memory>
#include <stdexcept>
#include <string>

#include "cli/cuda_plugin.hpp"
#include "cli/errors.hpp"
#include "cli/units.hpp"
#include "cuda/cuda_backend.hpp"

namespace selfnorm::cli {
namespace {

// The CUDA backend on device 0.
class CudaRunner : public PointRunner {
 public:
  CudaRunner(const io::DeviceOptions& device, const std::string& source) : tf32_(device.tf32) {
    const std::string remedy = "; run on a machine with an NVIDIA GPU and its driver (a GPU node), or use --device cpu";
    try {
      backend_ = std::make_unique<cuda::CudaBackend>(cuda::CudaOptions{device.tf32});
    } catch (const cuda::NoDeviceError& e) {
      throw DeviceError(source + ": " + e.what() + remedy);
    } catch (const cuda::CudaError& e) {
      throw DeviceError(source + ": the CUDA backend could not start: " + e.what() + remedy);
    }
  }

  PointResult run(const PointSpec& spec, const StreamSeed& seed, const ProgressCallback& progress) override {
    try {
      return backend_->simulate_point(spec, seed, progress);
    } catch (const cuda::CudaError& e) {
      if (e.out_of_memory()) {
        throw std::runtime_error(std::string("the GPU ran out of memory (") + e.what() + "); reduce "
                                 "monte_carlo.batch or the widths, or use --device cpu");
      }
      throw std::runtime_error(std::string("the GPU failed: ") + e.what());
    }
  }

  std::string check(const PointSpec& spec) const override {
    double need = 0.0;
    try {
      need = cuda::device_bytes(spec);
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    const auto& d = backend_->device();
    if (need > static_cast<double>(d.free_bytes)) {
      return "needs " + format_bytes(need) + " of GPU memory, but the " + d.name + " has " +
             format_bytes(static_cast<double>(d.free_bytes)) + " free of " +
             format_bytes(static_cast<double>(d.total_bytes)) + "; reduce monte_carlo.batch or the widths, or use "
             "--device cpu";
    }
    return {};
  }

  void describe(io::Provenance& provenance) const override {
    const auto& d = backend_->device();
    const cuda::DeviceTiming t = backend_->timing();
    provenance.device = "cuda";
    provenance.gpu_name = d.name + " (compute capability " + std::to_string(d.compute_major) + "." +
                          std::to_string(d.compute_minor) + ", driver " + version(d.driver_version) + ", runtime " +
                          version(d.runtime_version) + (tf32_ ? ", TF32 GEMMs" : ", FP32/FP64 GEMMs") + ")";
    provenance.gpu_seconds = t.total_seconds;
    provenance.gpu_gemm_seconds = t.gemm_seconds;
  }

  std::string start_note(double) const override {
    const auto& d = backend_->device();
    return "GPU " + d.name + " (" + format_bytes(static_cast<double>(d.free_bytes)) + " free), TF32 " +
           (tf32_ ? "on" : "off");
  }

  std::string where() const override { return backend_->device().name; }

  std::string timing_note() const override {
    const cuda::DeviceTiming t = backend_->timing();
    if (t.total_seconds <= 0) return {};
    const double outside = 100.0 * (1.0 - t.gemm_seconds / t.total_seconds);
    return "; GPU time " + format_number("%.3f", t.total_seconds) + " s, GEMM " + format_number("%.3f", t.gemm_seconds) +
           " s, " + format_number("%.1f", outside) + "% outside GEMM";
  }

 private:
  static std::string version(int v) { return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10); }

  bool tf32_ = false;
  std::unique_ptr<cuda::CudaBackend> backend_;
};

std::unique_ptr<PointRunner> make_cuda_runner(const io::DeviceOptions& device, const std::string& source) {
  return std::make_unique<CudaRunner>(device, source);
}

double cuda_gpu_bytes(const PointSpec& spec) {
  try {
    return cuda::device_bytes(spec);
  } catch (const std::invalid_argument&) {
    return -1.0;
  }
}

}  // namespace
}  // namespace selfnorm::cli

// The one symbol the module exports (the rest of it is built with hidden visibility).
extern "C" __attribute__((visibility("default"))) const selfnorm::cli::CudaPlugin* selfnorm_cuda_plugin() {
  static const selfnorm::cli::CudaPlugin plugin{selfnorm::cli::kCudaPluginVersion, selfnorm::cli::CudaPluginLayout{},
                                                &selfnorm::cli::make_cuda_runner, &selfnorm::cli::cuda_gpu_bytes};
  return &plugin;
}
