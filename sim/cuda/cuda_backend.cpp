#include "cuda/cuda_backend.hpp"

#include <climits>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <variant>
#include <vector>

#include "core/init.hpp"
#include "core/random.hpp"

namespace selfnorm::cuda {
namespace {

// The activation as a kind and two precombined parameters (see ActArgs in device_engine.cu).
void set_activation(const Activation& activation, DeviceJob& job) {
  std::visit(
      [&](const auto& a) {
        using A = std::decay_t<decltype(a)>;
        job.act_p0 = 0.0;
        job.act_p1 = 0.0;
        if constexpr (std::is_same_v<A, Relu>) {
          job.activation = ActKind::relu;
        } else if constexpr (std::is_same_v<A, Relu6>) {
          job.activation = ActKind::relu6;
        } else if constexpr (std::is_same_v<A, LeakyRelu>) {
          job.activation = ActKind::leaky_relu;
          job.act_p0 = a.negative_slope;
        } else if constexpr (std::is_same_v<A, Softplus>) {
          job.activation = ActKind::softplus;
          job.act_p0 = a.beta;
          job.act_p1 = a.threshold;
        } else if constexpr (std::is_same_v<A, Elu>) {
          job.activation = ActKind::elu;
          job.act_p0 = a.alpha;
        } else if constexpr (std::is_same_v<A, Selu>) {
          job.activation = ActKind::selu;
          job.act_p0 = a.lambda;
          job.act_p1 = a.lambda * a.alpha;  // rounded to the working type as the CPU does
        } else if constexpr (std::is_same_v<A, Celu>) {
          job.activation = ActKind::celu;
          job.act_p0 = a.alpha;
          job.act_p1 = 1.0 / a.alpha;
        } else if constexpr (std::is_same_v<A, Tanh>) {
          job.activation = ActKind::tanh;
        } else if constexpr (std::is_same_v<A, Sigmoid>) {
          job.activation = ActKind::sigmoid;
        } else if constexpr (std::is_same_v<A, Gelu>) {
          job.activation = ActKind::gelu;
        } else if constexpr (std::is_same_v<A, Silu>) {
          job.activation = ActKind::silu;
        } else {
          static_assert(std::is_same_v<A, Identity>, "every activation needs a device kind");
          job.activation = ActKind::identity;
        }
      },
      activation);
}

// The device job of `spec`. Checks the spec as the CPU engine does (std::invalid_argument).
DeviceJob make_job(const PointSpec& spec, const StreamSeed& seed, const CudaOptions& options) {
  (void)estimate_work(spec, RunOptions{});  // validates the spec like simulate_point
  if (spec.monte_carlo.batch > INT_MAX) {
    throw std::invalid_argument("monte_carlo.batch is " + std::to_string(spec.monte_carlo.batch) +
                                "; the CUDA backend takes at most 2147483647 samples (cuBLAS sizes are 32-bit); "
                                "use a smaller batch and more trials, or --device cpu");
  }
  DeviceJob job;
  job.float64 = spec.precision == Precision::float64;
  job.tf32 = options.tf32 && !job.float64;
  job.seed = seed.seed;
  job.point = seed.point;
  job.widths = spec.network.widths;
  job.batch = spec.monte_carlo.batch;
  job.weight_gradients = spec.monte_carlo.weight_gradients;
  set_activation(spec.activation, job);

  const InitSpec& init = spec.init;
  switch (init.kind) {
    case InitKind::lecun_uniform: job.draw = WeightDraw::uniform; break;
    case InitKind::truncated_normal: job.draw = WeightDraw::truncated_normal; break;
    case InitKind::orthogonal: job.draw = WeightDraw::host; break;
    default: job.draw = WeightDraw::normal; break;
  }
  for (int l = 1; l <= spec.network.depth(); ++l) {
    const std::int64_t fan_in = job.widths[static_cast<std::size_t>(l - 1)];
    const std::int64_t fan_out = job.widths[static_cast<std::size_t>(l)];
    const WeightScale s = weight_scale(init, fan_in, fan_out);
    double scale = s.stddev;
    if (job.draw == WeightDraw::uniform) scale = std::sqrt(3.0) * s.stddev;  // U(mean - a, mean + a)
    if (job.draw == WeightDraw::truncated_normal) scale = s.stddev / std::sqrt(kTruncatedNormalVariance);
    job.weight_mean.push_back(s.mean);
    job.weight_scale.push_back(scale);
  }
  if (job.draw == WeightDraw::host) {
    // Orthogonal weights need a QR factorisation of the whole matrix: the CPU engine's routine
    // draws them, from the same stream key as on the CPU, so they equal the CPU's weights.
    const bool float64 = job.float64;
    const std::vector<std::int64_t> widths = job.widths;
    const std::uint64_t s = seed.seed, p = seed.point;
    job.host_weights = [init, float64, widths, s, p](std::int64_t trial, int layer, void* host) {
      const std::uint64_t key = stream_key(s, p, StreamKind::weights, static_cast<std::uint64_t>(trial),
                                           static_cast<std::uint64_t>(layer));
      const std::int64_t fan_in = widths[static_cast<std::size_t>(layer - 1)];
      const std::int64_t fan_out = widths[static_cast<std::size_t>(layer)];
      if (float64) {
        generate_weights<double>(init, key, fan_in, fan_out, static_cast<double*>(host), fan_out);
      } else {
        generate_weights<float>(init, key, fan_in, fan_out, static_cast<float*>(host), fan_out);
      }
    };
  }
  job.bias = init.has_bias();
  job.bias_mean = init.bias_mean;
  job.bias_stddev = std::sqrt(init.bias_variance);

  const double sd = std::sqrt(spec.input.variance);
  job.uniform_input = spec.input.distribution == InputDistribution::uniform;
  job.input_mean = spec.input.mean;
  job.input_scale = job.uniform_input ? std::sqrt(3.0) * sd : sd;

  if (spec.alpha_dropout.enabled()) {
    double saturation = 0.0;
    dropout_saturation(spec.activation, saturation);
    job.dropout = true;
    job.keep = spec.alpha_dropout.keep_probability;
    alpha_dropout_affine(job.keep, saturation, spec.alpha_dropout.fixed_point_mean,
                         spec.alpha_dropout.fixed_point_variance, job.dropout_a, job.dropout_b);
    job.dropped_value = job.dropout_a * saturation + job.dropout_b;
  }
  return job;
}

}  // namespace

double device_bytes(const PointSpec& spec) { return device_bytes(make_job(spec, StreamSeed{}, CudaOptions{})); }

CudaBackend::CudaBackend(const CudaOptions& options) : options_(options), engine_(std::make_unique<DeviceEngine>()) {}

CudaBackend::~CudaBackend() = default;

const DeviceProperties& CudaBackend::device() const { return engine_->properties(); }

DeviceTiming CudaBackend::timing() const { return engine_->timing(); }

PointResult CudaBackend::simulate_point(const PointSpec& spec, const StreamSeed& seed, const ProgressCallback& progress) {
  const DeviceJob job = make_job(spec, seed, options_);
  engine_->prepare(job);
  const int L = job.depth();
  const std::int64_t trials = spec.monte_carlo.trials;
  PointResult out;
  out.depth = L;
  out.trials = trials;
  out.has_weight_gradients = job.weight_gradients;
  out.matmul = job.tf32 ? "cublas-tf32" : "cublas";
  constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  for (auto& v : out.per_trial) v.assign(static_cast<std::size_t>(trials * L), nan);
  out.nonfinite_per_trial.assign(static_cast<std::size_t>(trials * L), 0);
  out.grad_nonfinite_per_trial.assign(static_cast<std::size_t>(trials * L), 0);

  std::vector<LayerMoments> layers(static_cast<std::size_t>(L));
  for (std::int64_t t = 0; t < trials; ++t) {
    engine_->run_trial(t, layers.data());
    // The CPU engine's rules (core/engine.cpp, collect): a non-finite forward entry anywhere makes
    // every gradient statistic of the trial NaN, since the backward pass runs through it.
    bool forward_blew_up = false;
    for (const auto& m : layers) forward_blew_up = forward_blew_up || m.nonfinite > 0;
    for (int l = 1; l <= L; ++l) {
      const LayerMoments& m = layers[static_cast<std::size_t>(l - 1)];
      const auto at = static_cast<std::size_t>(t * L + l - 1);
      const bool forward_ok = m.nonfinite == 0;
      const bool backward_ok = m.grad_nonfinite == 0 && !forward_blew_up;
      auto put = [&](Stat s, double v, bool ok) { out.per_trial[static_cast<int>(s)][at] = ok ? v : nan; };
      const double pre_var = m.pre_m2 / m.count;
      const double act_var = m.act_m2 / m.count;
      put(Stat::preactivation_mean, m.pre_mean, forward_ok);
      put(Stat::preactivation_var, pre_var, forward_ok);
      put(Stat::activation_mean, m.act_mean, forward_ok);
      put(Stat::activation_var, act_var, forward_ok);
      put(Stat::activation_msq, act_var + m.act_mean * m.act_mean, forward_ok);
      put(Stat::unit_mean_spread, m.unit_mean_spread, forward_ok);
      put(Stat::grad_activation_msq, m.grad_act_sq / m.count, backward_ok);
      put(Stat::grad_preactivation_msq, m.grad_pre_sq / m.count, backward_ok);
      if (job.weight_gradients) {
        const double weights = static_cast<double>(job.widths[static_cast<std::size_t>(l - 1)]) *
                               static_cast<double>(job.widths[static_cast<std::size_t>(l)]);
        put(Stat::grad_weight_msq, m.grad_weight_sq / weights, backward_ok);
      }
      out.nonfinite_per_trial[at] = static_cast<std::int64_t>(m.nonfinite);
      out.grad_nonfinite_per_trial[at] = static_cast<std::int64_t>(m.grad_nonfinite);
    }
    if (progress) progress((t + 1) * 2 * L, trials * 2 * L);
  }

  out.nonfinite_count.assign(static_cast<std::size_t>(L), 0);
  out.grad_nonfinite_count.assign(static_cast<std::size_t>(L), 0);
  for (std::int64_t t = 0; t < trials; ++t) {
    for (int l = 0; l < L; ++l) {
      const auto at = static_cast<std::size_t>(t * L + l);
      out.nonfinite_count[static_cast<std::size_t>(l)] += out.nonfinite_per_trial[at];
      out.grad_nonfinite_count[static_cast<std::size_t>(l)] += out.grad_nonfinite_per_trial[at];
    }
  }
  for (int l = 1; l <= L; ++l) {
    if (out.nonfinite_count[static_cast<std::size_t>(l - 1)] > 0) {
      out.first_nonfinite_layer = l;
      break;
    }
  }
  return out;
}

}  // namespace selfnorm::cuda
