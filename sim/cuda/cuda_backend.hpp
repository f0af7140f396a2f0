// The CUDA backend: the same experiments as core/engine.hpp's simulate_point, on an NVIDIA GPU.
//
// Same semantics and the same PointResult as the CPU engine: every statistic per trial, averaged
// over trials with standard errors by the caller; non-finite counts and the first non-finite layer;
// weight gradients on request; float32 and float64; every activation, initialiser, bias, input and
// alpha-dropout setting. Weights, biases, inputs, upstream gradients and dropout masks are drawn on
// the GPU from Philox streams keyed by (seed, point, kind, trial, layer) as on the CPU, except
// orthogonal weights, which the CPU's own routine draws (a QR factorisation) and the GPU receives.
// Results are deterministic for a given seed on a given GPU model and CUDA version; they agree
// with the CPU engine statistically, not bit for bit (other random streams, other summation order).
//
// Plain C++: no CUDA header is included, so the command line compiles without the toolkit's
// headers. Implemented in cuda_backend.cpp and device_engine.cu.
#pragma once

#include <memory>

#include "core/engine.hpp"
#include "cuda/device_engine.hpp"

namespace selfnorm::cuda {

// How the GPU computes.
struct CudaOptions {
  bool tf32 = false;  // float32 GEMMs on TF32 tensor cores (inputs rounded to 10-bit mantissas); float64 ignores it
};

// Bytes of device memory `spec` needs. Throws std::invalid_argument for a spec the engine refuses.
double device_bytes(const PointSpec& spec);

// Runs points on device 0.
class CudaBackend {
 public:
  // Opens device 0. Throws NoDeviceError when there is no usable GPU, CudaError if CUDA fails.
  explicit CudaBackend(const CudaOptions& options);
  ~CudaBackend();
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  const DeviceProperties& device() const;

  // All trials of one point, as simulate_point. `progress` is called after each trial, from the
  // calling thread. Throws std::invalid_argument for an inconsistent spec, CudaError if CUDA fails
  // (out_of_memory() when the device memory does not suffice).
  PointResult simulate_point(const PointSpec& spec, const StreamSeed& seed, const ProgressCallback& progress = {});

  // Device time of every trial run so far.
  DeviceTiming timing() const;

 private:
  CudaOptions options_;
  std::unique_ptr<DeviceEngine> engine_;
};

}  // namespace selfnorm::cuda
