// The GPU side of the CUDA backend, behind a plain C++ interface: no CUDA header is included here,
// so that host code compiled by the C++ compiler can drive it. Implemented in device_engine.cu.
//
// One DeviceEngine owns a CUDA stream, a cuBLAS handle and the device buffers of the point it runs.
// It runs one trial at a time and copies back only the per-layer moments of that trial.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace selfnorm::cuda {

// A failed CUDA or cuBLAS call: what() names the call and the library's error string.
class CudaError : public std::runtime_error {
 public:
  CudaError(const std::string& message, bool out_of_memory)
      : std::runtime_error(message), out_of_memory_(out_of_memory) {}
  // True when the call failed for want of device memory.
  bool out_of_memory() const { return out_of_memory_; }

 private:
  bool out_of_memory_ = false;
};

// No usable CUDA device: no driver, no GPU, or a device this build has no code for.
class NoDeviceError : public std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The GPU a DeviceEngine runs on.
struct DeviceProperties {
  int ordinal = 0;
  std::string name;               // e.g. "NVIDIA H200"
  int compute_major = 0;          // compute capability, 9.0 for Hopper
  int compute_minor = 0;
  int multiprocessors = 0;
  std::size_t total_bytes = 0;    // device memory
  std::size_t free_bytes = 0;     // free when probed
  int driver_version = 0;         // e.g. 13000 for CUDA 13.0
  int runtime_version = 0;
};

// Finds device 0 and reads its properties; throws NoDeviceError naming the problem (the
// cudaGetDeviceCount error string, or no device) when there is none.
DeviceProperties probe_device();

// Activations, in the order of core/activations.hpp's variant. p0, p1 hold the parameters the
// kernel needs, already combined (see set_activation in cuda_backend.cpp).
enum class ActKind : int { relu, relu6, leaky_relu, softplus, elu, selu, celu, tanh, sigmoid, gelu, silu, identity };

// How weights are drawn on the device (host: filled by DeviceJob::host_weights, for orthogonal).
enum class WeightDraw : int { normal, uniform, truncated_normal, host };

// Everything one point's trials need, as plain numbers.
struct DeviceJob {
  bool float64 = false;
  bool tf32 = false;
  std::uint64_t seed = 0;
  std::uint64_t point = 0;
  std::vector<std::int64_t> widths;  // n_0..n_L
  std::int64_t batch = 0;
  bool weight_gradients = false;

  ActKind activation = ActKind::selu;
  double act_p0 = 0.0;
  double act_p1 = 0.0;

  WeightDraw draw = WeightDraw::normal;
  std::vector<double> weight_mean;   // per layer: each weight's mean
  std::vector<double> weight_scale;  // per layer: stddev (normal), half-width (uniform), sigma (truncated)
  // Fills W_l (fan_in x fan_out, row-major, ld fan_out; float or double per `float64`) on the host,
  // for WeightDraw::host.
  std::function<void(std::int64_t trial, int layer, void* host)> host_weights;

  bool bias = false;
  double bias_mean = 0.0;
  double bias_stddev = 0.0;

  bool uniform_input = false;
  double input_mean = 0.0;
  double input_scale = 1.0;  // stddev (normal) or half-width (uniform)

  bool dropout = false;
  double keep = 1.0;
  double dropout_a = 1.0;
  double dropout_b = 0.0;
  double dropped_value = 0.0;  // a * saturation + b

  int depth() const { return static_cast<int>(widths.size()) - 1; }
};

// Per-layer moments of one trial, as the device computed them.
struct LayerMoments {
  double count = 0;          // B n_l
  double pre_mean = 0, pre_m2 = 0;
  double act_mean = 0, act_m2 = 0;
  double unit_mean_spread = 0;
  double nonfinite = 0;      // entries where h or x is not finite (an integer)
  double grad_act_sq = 0;    // sum of (dL/dx_l)^2
  double grad_pre_sq = 0;    // sum of (dL/dh_l)^2
  double grad_nonfinite = 0; // entries where dL/dh_l is not finite
  double grad_weight_sq = 0; // sum of (dL/dW_l)^2, when asked for
};
inline constexpr int kLayerFields = 11;
static_assert(sizeof(LayerMoments) == kLayerFields * sizeof(double), "LayerMoments is read as doubles");

// Device time of the trials run so far, from CUDA events.
struct DeviceTiming {
  double total_seconds = 0.0;  // from each trial's first to its last operation
  double gemm_seconds = 0.0;   // inside cuBLAS GEMMs
  std::int64_t gemm_calls = 0;
};

// Device bytes a point needs (buffers of DeviceEngine::prepare), without allocating.
double device_bytes(const DeviceJob& job);

class DeviceEngine {
 public:
  // Creates the stream and the cuBLAS handle on device 0. Throws NoDeviceError or CudaError.
  DeviceEngine();
  ~DeviceEngine();
  DeviceEngine(const DeviceEngine&) = delete;
  DeviceEngine& operator=(const DeviceEngine&) = delete;

  const DeviceProperties& properties() const;

  // Allocates the buffers of `job` (reusing those of the previous point where they fit).
  void prepare(const DeviceJob& job);
  // Runs trial `trial` of the prepared job; writes job.depth() entries to `out`.
  void run_trial(std::int64_t trial, LayerMoments* out);

  DeviceTiming timing() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace selfnorm::cuda
