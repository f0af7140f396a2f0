// The CUDA backend against the CPU engine: the same statistics within standard errors (the random
// streams differ, so agreement is statistical), the same bookkeeping of blow-ups, and bit-for-bit
// determinism on the GPU. They need an NVIDIA GPU: without one the program says why and exits with
// status 77, which CTest reports as skipped (tests/CMakeLists.txt), instead of failing.
#define CATCH_CONFIG_EXTERNAL_INTERFACES  // for the listener below
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "core/engine.hpp"
#include "cuda/cuda_backend.hpp"
#include "test_helpers.hpp"

using namespace selfnorm;
using selfnorm::test::make_spec;

namespace {

// Before the first test: find the GPU, or skip the whole program.
struct RequireGpu : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  void testRunStarting(const Catch::TestRunInfo& info) override {
    TestEventListenerBase::testRunStarting(info);
    try {
      const cuda::DeviceProperties d = cuda::probe_device();
      std::cout << "GPU tests on " << d.name << " (compute capability " << d.compute_major << "."
                << d.compute_minor << ", " << d.multiprocessors << " multiprocessors)" << std::endl;
    } catch (const cuda::NoDeviceError& e) {
      std::cout << "SKIPPED: the GPU unit tests need an NVIDIA GPU: " << e.what() << std::endl;
      std::exit(77);
    }
  }
};

}  // namespace

CATCH_REGISTER_LISTENER(RequireGpu)

namespace {

// Seeded comparisons of up to ~60 statistics and layers per case with standard errors from 32
// trials (Student t with 31 degrees of freedom): 5 standard errors keeps a chance failure rare.
constexpr double kAgree = 5.0;

// One backend for the whole program, never destroyed: a static destructor would run after the CUDA
// runtime has begun to unload at exit.
cuda::CudaBackend& backend() {
  static cuda::CudaBackend* b = new cuda::CudaBackend(cuda::CudaOptions{false});
  return *b;
}

PointResult cpu_run(const PointSpec& spec, std::uint64_t seed = 1) {
  RunOptions options;
  options.threads = 2;
  return simulate_point(spec, StreamSeed{seed, 0}, options);
}

std::string stat_name(Stat s) { return std::string(stat_catalog()[static_cast<int>(s)].name); }

// Every statistic at every layer: |gpu - cpu| <= k sqrt(sem_gpu^2 + sem_cpu^2).
void check_agreement(const PointResult& gpu, const PointResult& cpu, const std::string& what) {
  REQUIRE(gpu.depth == cpu.depth);
  REQUIRE(gpu.trials == cpu.trials);
  REQUIRE(gpu.has_weight_gradients == cpu.has_weight_gradients);
  CHECK(gpu.first_nonfinite_layer == 0);
  CHECK(cpu.first_nonfinite_layer == 0);
  for (int si = 0; si < kStatCount; ++si) {
    const Stat s = static_cast<Stat>(si);
    if (!cpu.has(s)) continue;
    for (int l = 1; l <= cpu.depth; ++l) {
      const double a = gpu.mean(s, l), b = cpu.mean(s, l);
      const double sa = gpu.sem(s, l), sb = cpu.sem(s, l);
      INFO(what << ": " << stat_name(s) << " at layer " << l << ": gpu " << a << " +- " << sa << ", cpu " << b
                << " +- " << sb);
      REQUIRE(std::isfinite(a));
      REQUIRE(std::isfinite(b));
      const double se = std::hypot(sa, sb);
      if (se == 0.0) {
        CHECK(a == b);
      } else {
        CHECK(std::abs(a - b) <= kAgree * se);
      }
    }
  }
}

bool same_bits(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
}

bool identical(const PointResult& a, const PointResult& b) {
  for (int s = 0; s < kStatCount; ++s) {
    if (!same_bits(a.per_trial[s], b.per_trial[s])) return false;
  }
  return a.nonfinite_per_trial == b.nonfinite_per_trial && a.grad_nonfinite_per_trial == b.grad_nonfinite_per_trial &&
         a.first_nonfinite_layer == b.first_nonfinite_layer;
}

}  // namespace

TEST_CASE("CUDA and CPU agree within standard errors for every activation", "[cuda][statistics]") {
  // Widths and batch that are not multiples of the kernels' tiles (32 units, 64 samples).
  const std::vector<Activation> activations = {Selu{}, Relu{}, Relu6{}, LeakyRelu{0.2}, Softplus{2.0, 20.0},
                                               Elu{0.5}, Celu{2.0}, Tanh{}, Sigmoid{}, Gelu{}, Silu{}, Identity{}};
  for (const auto& act : activations) {
    PointSpec spec = make_spec(act, 4, 48, 32, 100, Precision::float32);
    if (std::holds_alternative<Relu6>(act)) spec.init.weight_variance = 16.0;  // reach the cap at 6
    const std::string what(activation_name(act));
    check_agreement(backend().simulate_point(spec, StreamSeed{1, 0}), cpu_run(spec), what);
  }
}

TEST_CASE("CUDA and CPU agree for every initialiser, biases, inputs and alpha dropout", "[cuda][statistics]") {
  struct Case {
    std::string what;
    PointSpec spec;
  };
  std::vector<Case> cases;
  {
    PointSpec s = make_spec(Selu{}, 4, 40, 32, 96, Precision::float32);
    s.init.kind = InitKind::lecun_uniform;
    s.input.distribution = InputDistribution::uniform;
    s.input.mean = 0.5;
    s.input.variance = 2.0;
    cases.push_back({"lecun_uniform, uniform inputs", s});
  }
  {
    PointSpec s = make_spec(Tanh{}, 4, 40, 32, 96, Precision::float32);
    s.init.kind = InitKind::truncated_normal;
    s.init.bias_mean = 0.1;
    s.init.bias_variance = 0.05;
    cases.push_back({"truncated_normal with biases", s});
  }
  {
    PointSpec s = make_spec(Selu{}, 3, 40, 32, 96, Precision::float32);
    s.network.widths = {40, 64, 24, 33};  // tall and wide orthogonal matrices
    s.init.kind = InitKind::orthogonal;
    cases.push_back({"orthogonal, non-uniform widths", s});
  }
  {
    PointSpec s = make_spec(Relu{}, 4, 40, 32, 96, Precision::float32);
    s.init.kind = InitKind::he_normal;
    s.init.weight_mean = 0.5;
    cases.push_back({"he_normal with a weight mean", s});
  }
  {
    PointSpec s = make_spec(Elu{}, 4, 40, 32, 96, Precision::float32);
    s.init.kind = InitKind::glorot_normal;
    s.init.bias_mean = -0.2;
    cases.push_back({"glorot_normal with a constant bias", s});
  }
  {
    PointSpec s = make_spec(Selu{}, 4, 40, 32, 96, Precision::float32);
    s.alpha_dropout.keep_probability = 0.9;
    cases.push_back({"alpha dropout", s});
  }
  for (const auto& c : cases) check_agreement(backend().simulate_point(c.spec, StreamSeed{3, 0}), cpu_run(c.spec, 3), c.what);
}

TEST_CASE("CUDA and CPU agree in float64 and with weight gradients", "[cuda][statistics]") {
  for (const auto& act : std::vector<Activation>{Selu{}, Tanh{}, Relu{}}) {
    PointSpec spec = make_spec(act, 4, 48, 32, 100, Precision::float64);
    check_agreement(backend().simulate_point(spec, StreamSeed{5, 0}), cpu_run(spec, 5),
                    "float64 " + std::string(activation_name(act)));
  }
  for (const Precision p : {Precision::float32, Precision::float64}) {
    PointSpec spec = make_spec(Selu{}, 3, 40, 32, 80, p);
    spec.network.widths = {24, 56, 40, 33};
    spec.monte_carlo.weight_gradients = true;
    const PointResult gpu = backend().simulate_point(spec, StreamSeed{6, 0});
    REQUIRE(gpu.has_weight_gradients);
    check_agreement(gpu, cpu_run(spec, 6), std::string("weight gradients, ") + std::string(to_string(p)));
  }
}

TEST_CASE("the GPU gives the same bits on every run, and another seed changes them", "[cuda][determinism]") {
  PointSpec spec = make_spec(Selu{}, 6, 96, 4, 200, Precision::float32);
  spec.monte_carlo.weight_gradients = true;
  spec.alpha_dropout.keep_probability = 0.95;
  const PointResult a = backend().simulate_point(spec, StreamSeed{11, 2});
  const PointResult b = backend().simulate_point(spec, StreamSeed{11, 2});
  CHECK(identical(a, b));
  {
    cuda::CudaBackend fresh(cuda::CudaOptions{false});
    CHECK(identical(a, fresh.simulate_point(spec, StreamSeed{11, 2})));
  }
  CHECK_FALSE(identical(a, backend().simulate_point(spec, StreamSeed{12, 2})));
  CHECK_FALSE(identical(a, backend().simulate_point(spec, StreamSeed{11, 3})));
  // A different point in between does not disturb the next one (buffers are reused).
  (void)backend().simulate_point(make_spec(Relu{}, 2, 300, 2, 64, Precision::float64), StreamSeed{1, 0});
  CHECK(identical(a, backend().simulate_point(spec, StreamSeed{11, 2})));
  spec.precision = Precision::float64;
  CHECK(identical(backend().simulate_point(spec, StreamSeed{11, 2}), backend().simulate_point(spec, StreamSeed{11, 2})));
}

TEST_CASE("TF32 GEMMs are deterministic and agree statistically", "[cuda][statistics]") {
  cuda::CudaBackend tf32(cuda::CudaOptions{true});
  const PointSpec spec = make_spec(Selu{}, 4, 64, 32, 128, Precision::float32);
  const PointResult a = tf32.simulate_point(spec, StreamSeed{7, 0});
  CHECK(identical(a, tf32.simulate_point(spec, StreamSeed{7, 0})));
  check_agreement(a, cpu_run(spec, 7), "TF32");
}

TEST_CASE("a blow-up on the GPU is recorded as on the CPU", "[cuda]") {
  // relu with sigma_w^2 = 2e8: the second moment grows 1e8-fold per layer, so float32 overflows
  // at layer 10 (pre-activations ~1e36 at layer 9, ~1e40 at layer 10) with a wide margin.
  PointSpec spec = make_spec(Relu{}, 12, 32, 4, 32, Precision::float32);
  spec.init.weight_variance = 2e8;
  const PointResult cpu = cpu_run(spec, 9);
  const PointResult gpu = backend().simulate_point(spec, StreamSeed{9, 0});
  REQUIRE(cpu.first_nonfinite_layer == 10);
  CHECK(gpu.first_nonfinite_layer == cpu.first_nonfinite_layer);
  for (int l = 1; l <= spec.network.depth(); ++l) {
    INFO("layer " << l);
    const auto at = static_cast<std::size_t>(l - 1);
    if (l < 10) {
      CHECK(gpu.nonfinite_count[at] == 0);
      CHECK(std::isfinite(gpu.mean(Stat::activation_msq, l)));
    }
    // The backward pass runs through the blown-up layers: every gradient statistic is NaN.
    CHECK(std::isnan(gpu.mean(Stat::grad_activation_msq, l)));
    CHECK(std::isnan(gpu.mean(Stat::grad_preactivation_msq, l)));
  }
  CHECK(gpu.nonfinite_count[9] > 0);
  CHECK(std::isnan(gpu.mean(Stat::activation_msq, 10)));
}

TEST_CASE("progress is reported after every trial", "[cuda]") {
  const PointSpec spec = make_spec(Tanh{}, 3, 16, 5, 8, Precision::float32);
  std::vector<std::pair<std::int64_t, std::int64_t>> calls;
  (void)backend().simulate_point(spec, StreamSeed{1, 0}, [&](std::int64_t d, std::int64_t t) { calls.emplace_back(d, t); });
  REQUIRE(calls.size() == 5);
  CHECK(calls.back() == std::make_pair<std::int64_t, std::int64_t>(30, 30));
  const cuda::DeviceTiming timing = backend().timing();
  CHECK(timing.total_seconds > 0);
  CHECK(timing.gemm_seconds > 0);
  CHECK(timing.gemm_seconds < timing.total_seconds);
}

TEST_CASE("sizes beyond cuBLAS's 32-bit dimensions are refused before any allocation", "[cuda]") {
  PointSpec spec = make_spec(Selu{}, 2, 4, 1, (std::int64_t(1) << 31), Precision::float32);
  CHECK_THROWS_AS(cuda::device_bytes(spec), std::invalid_argument);
  spec.monte_carlo.batch = 16;
  CHECK(cuda::device_bytes(spec) > 0);
}
