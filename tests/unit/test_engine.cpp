// The Monte Carlo engine: bitwise determinism across threads and modes, agreement with a naive
// sample-by-sample reference, and the known statistics of deep networks in units of standard
// error.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "core/engine.hpp"
#include "core/init.hpp"
#include "core/random.hpp"
#include "naive_reference.hpp"
#include "test_helpers.hpp"

using namespace selfnorm;
using namespace selfnorm::test;

namespace {

// E[g(z)] for z ~ N(0, q) by the trapezoid rule on [-14 sqrt(q), 14 sqrt(q)] (error far below 1e-10
// for the smooth-enough integrands used here).
template <class G>
double gaussian_expectation(G g, double q) {
  const int n = 400000;
  const double s = std::sqrt(q), lo = -14 * s, h = 28 * s / n;
  double sum = 0;
  for (int i = 0; i <= n; ++i) {
    const double z = lo + i * h;
    const double w = (i == 0 || i == n) ? 0.5 : 1.0;
    sum += w * g(z) * std::exp(-0.5 * z * z / q);
  }
  return sum * h / std::sqrt(2 * M_PI * q);
}

}  // namespace

TEST_CASE("results are bit-identical for any thread count and parallel mode", "[engine][determinism]") {
  // On the tile units (bf16x6) the same is checked in test_amx.cpp.
  PointSpec spec = determinism_spec();
  SECTION("float32 with biases and weight gradients") {}
  SECTION("a batch of 1100: row blocks of 256, the last one short") {
    spec.monte_carlo.batch = 1100;
    spec.monte_carlo.weight_gradients = false;
    spec.network.widths = {20, 24, 16, 24, 20, 12};
  }
  SECTION("float64 with alpha dropout") {
    spec.precision = Precision::float64;
    spec.monte_carlo.weight_gradients = false;
    spec.alpha_dropout.keep_probability = 0.9;
  }
  require_same_bits_for_any_threads(spec, Matmul::fma);
}

TEST_CASE("changing the batch size never changes the weights", "[engine][determinism]") {
  // A 1-layer float64 net at B = 128 and B = 129: if the weights (and the first 128 samples) do
  // not depend on B, the second run's sum of pre-activations is the first run's plus exactly the
  // 129th sample's, recomputed here from its own input stream and the layer's weights. Were the
  // weights drawn anew for another B, the difference would be off by O(sqrt(128 * 40)) ~ 70.
  const PointSpec small = make_spec(Tanh{}, 1, 40, 2, 128);
  PointSpec large = small;
  large.monte_carlo.batch = 129;  // one more sample, in a second row block
  const StreamSeed seed{9, 0};
  const PointResult a = simulate_point(small, seed, {1});
  const PointResult b = simulate_point(large, seed, {1});
  const std::int64_t n = 40;
  for (std::int64_t t = 0; t < 2; ++t) {
    auto key = [&](StreamKind k, int l) { return stream_key(seed.seed, seed.point, k, t, l); };
    std::vector<double> w(static_cast<std::size_t>(n * n)), x(static_cast<std::size_t>(n));
    generate_weights<double>(small.init, key(StreamKind::weights, 1), n, n, w.data(), n);
    generate_inputs<double>(small.input, key(StreamKind::inputs, 0), n, 128, 1, x.data(), n);
    double extra = 0;  // the 129th sample's sum of pre-activations (biases are 0 here)
    for (std::int64_t j = 0; j < n; ++j) {
      for (std::int64_t i = 0; i < n; ++i) extra += x[i] * w[i * n + j];
    }
    const double sum_a = a.per_trial[static_cast<int>(Stat::preactivation_mean)][t] * 128 * n;
    const double sum_b = b.per_trial[static_cast<int>(Stat::preactivation_mean)][t] * 129 * n;
    INFO("trial " << t << ": sums " << sum_a << ", " << sum_b << ", 129th sample " << extra);
    // Only the summation order differs: 5160 entries of 40 products each, all O(1), in double.
    CHECK(std::abs(sum_b - sum_a - extra) < 1e-9);
    CHECK(std::abs(extra) > 1e-3);  // the check above compares something
  }
}

TEST_CASE("the batched engine agrees with a naive sample-by-sample reference", "[engine]") {
  const PointSpec spec = naive_spec(Precision::float64, {5, 7, 6, 4}, 3);
  const StreamSeed seed{77, 2};
  const PointResult r = simulate_point(spec, seed, {2});
  const int L = 3;
  for (std::int64_t t = 0; t < 2; ++t) {
    const auto ref = naive_trial<double>(spec, seed, t);
    for (int l = 1; l <= L; ++l) {
      const NaiveLayer& e = ref[static_cast<std::size_t>(l - 1)];
      auto got = [&](Stat s) { return r.per_trial[static_cast<int>(s)][t * L + l - 1]; };
      INFO("trial " << t << " layer " << l);
      CHECK(got(Stat::preactivation_mean) == Approx(e.pre_mean).epsilon(1e-12).margin(1e-14));
      CHECK(got(Stat::preactivation_var) == Approx(e.pre_var).epsilon(1e-10));
      CHECK(got(Stat::activation_mean) == Approx(e.act_mean).epsilon(1e-12).margin(1e-14));
      CHECK(got(Stat::activation_var) == Approx(e.act_var).epsilon(1e-10));
      CHECK(got(Stat::activation_msq) == Approx(e.act_msq).epsilon(1e-12));
      CHECK(got(Stat::unit_mean_spread) == Approx(e.spread).epsilon(1e-10).margin(1e-14));
      CHECK(got(Stat::grad_activation_msq) == Approx(e.grad_act_msq).epsilon(1e-12));
      CHECK(got(Stat::grad_preactivation_msq) == Approx(e.grad_pre_msq).epsilon(1e-12));
      CHECK(got(Stat::grad_weight_msq) == Approx(e.grad_weight_msq).epsilon(1e-12));
    }
  }
}

TEST_CASE("float32 at every edge of the kernel's layouts agrees with a float64 reference", "[engine]") {
  // On the tile units (bf16x6) the same is checked in test_amx.cpp.
  PointSpec spec = float32_edges_spec();
  SECTION("biases, weight gradients") {}
  SECTION("and alpha dropout") { spec.alpha_dropout.keep_probability = 0.8; }
  check_float32_against_naive(spec, Matmul::fma);
}

TEST_CASE("selu with LeCun normal weights keeps mean 0 and variance 1 through 32 layers", "[engine][statistics]") {
  // The fixed point (0, 1) of the mean-field map (Klambauer et al. 2017), which holds at infinite
  // width: each statistic at widths 1024 and 512, extrapolated (extrapolate_width in test_helpers).
  const std::int64_t n = 1024;
  const PointSpec spec = make_spec(Selu{}, 32, n, 16, 256, Precision::float32);
  const PointResult r = simulate_point(spec, {2017, 0}, {2});
  const PointResult h = simulate_point(with_width(spec, n / 2), {2018, 0}, {2});
  for (int l = 1; l <= 32; ++l) {
    check_unit_fixed_point(r, h, l);
  }
}

TEST_CASE("relu halves the second moment each layer exactly, at any width", "[engine][statistics]") {
  // Given x_{l-1}, h_l is exactly N(0, q_hat) with q_hat = |x_{l-1}|^2 / n, and E relu(h)^2 = q_hat / 2,
  // so E[activation_msq_l] = 2^-l for N(0, 1) inputs, with no finite-width correction. The check
  // uses width 512: at small widths the per-trial values are log-normal-like with heavy tails
  // (width 48, depth 20 reaches 6 "standard errors" for one seed in eight), and a standard error
  // from 64 trials only means something where the trial values are close to normal.
  const PointSpec spec = make_spec(Relu{}, 10, 512, 64, 32, Precision::float64);
  const PointResult r = simulate_point(spec, {5, 0}, {2});
  for (int l = 1; l <= 10; ++l) {
    Moments scaled;
    for (std::int64_t t = 0; t < r.trials; ++t) {
      scaled.push(std::ldexp(r.per_trial[static_cast<int>(Stat::activation_msq)][t * 10 + l - 1], l));
    }
    INFO("layer " << l << ": 2^l q_l = " << scaled.mean << " +- " << scaled.standard_error());
    CHECK(std::abs(scaled.mean - 1.0) <= kSigma * scaled.standard_error());
  }
}

TEST_CASE("grad_activation_msq grows by E[f'(z)^2] per layer going backwards", "[engine][statistics]") {
  // Mean-field backward factor chi = sigma_w^2 E[f'(z)^2], z ~ N(0, q) (Schoenholz et al. 2017),
  // at the forward fixed point q: q = 1 for selu. relu: chi = 1/2 for any q.
  const std::int64_t n = 1024;
  const int L = 16;
  struct Case {
    Activation act;
    double chi;
  };
  const double chi_selu = gaussian_expectation(
      [](double z) {
        const double d = z > 0 ? kSeluLambda01 : kSeluLambda01 * kSeluAlpha01 * std::exp(z);
        return d * d;
      },
      1.0);
  CHECK(chi_selu == Approx(1.0716).margin(1e-4));
  // Per trial, the average log growth per layer between layer L and layer 1. E log is below
  // log E by half the relative variance of the trial's growth, O(1/n) like the finite-width
  // corrections: both go in extrapolating from widths 1024 and 512 (extrapolate_width).
  const auto log_growth = [&](const PointResult& r) {
    Moments slope;
    for (std::int64_t t = 0; t < r.trials; ++t) {
      const auto& g = r.per_trial[static_cast<int>(Stat::grad_activation_msq)];
      slope.push(std::log(g[t * L + 0] / g[t * L + L - 1]) / (L - 1));
    }
    return slope;
  };
  for (const Case c : {Case{Selu{}, chi_selu}, Case{Relu{}, 0.5}}) {
    const PointSpec spec = make_spec(c.act, L, n, 16, 128, Precision::float32);
    const Extrapolated slope = extrapolate_width(log_growth(simulate_point(spec, {30, 0}, {2})),
                                                 log_growth(simulate_point(with_width(spec, n / 2), {31, 0}, {2})));
    INFO(activation_name(c.act) << ": measured log growth " << slope.value << " +- " << slope.standard_error
                                << ", theory " << std::log(c.chi));
    CHECK(std::abs(slope.value - std::log(c.chi)) <= kSigma * slope.standard_error);
  }
}

TEST_CASE("a blow-up is recorded as data, not a crash", "[engine]") {
  PointSpec spec = make_spec(Relu{}, 400, 64, 2, 64, Precision::float32);
  spec.init.weight_variance = 4.0;  // q doubles every layer: float32 overflows after ~250 layers
  const PointResult r = simulate_point(spec, {1, 0}, {2});
  REQUIRE(r.first_nonfinite_layer > 100);
  REQUIRE(r.first_nonfinite_layer < 400);
  const int first = r.first_nonfinite_layer;
  CHECK(r.nonfinite_count[first - 1] > 0);
  CHECK(r.nonfinite_count[first - 2] == 0);
  CHECK(std::isfinite(r.mean(Stat::activation_msq, first - 1)));
  CHECK(std::isnan(r.mean(Stat::activation_msq, first)));
  CHECK(r.nonfinite_count[399] == 2 * 64 * 64);
}

TEST_CASE("every non-finite entry is counted in partial panels too", "[engine]") {
  // A batch of 50 fills one panel of samples and part of the next (32 floats, 16 doubles per
  // panel), a width of 40 three strips and part of a fourth; q grows 5e5-fold per layer, so the
  // last layers are non-finite in every entry, and every one of them must be counted.
  for (const Precision precision : {Precision::float32, Precision::float64}) {
    PointSpec spec = make_spec(Relu{}, 160, 40, 2, 50, precision);
    spec.init.weight_variance = 1e6;
    const PointResult r = simulate_point(spec, {1, 0}, {2});
    INFO(to_string(precision));
    REQUIRE(r.first_nonfinite_layer > 0);
    CHECK(r.nonfinite_count[159] == 2 * 50 * 40);
  }
}

TEST_CASE("a blow-up leaves the layers before it bit for bit as the network cut there", "[engine]") {
  // Streams are keyed by (trial, layer), so the first F - 1 layers of a deep network are the same
  // network as one of depth F - 1: their forward statistics must be identical, inf or not further up.
  for (const Precision precision : {Precision::float32, Precision::float64}) {
    INFO((precision == Precision::float32 ? "float32" : "float64"));
    PointSpec deep = make_spec(Relu{}, 400, 32, 3, 40, precision);
    deep.init.weight_variance = precision == Precision::float32 ? 4.0 : 1e30;  // float64 overflows in ~20 layers
    const PointResult r = simulate_point(deep, {5, 2}, {2});
    const int first = r.first_nonfinite_layer;
    REQUIRE(first > 2);
    PointSpec cut = deep;
    cut.network.widths.resize(static_cast<std::size_t>(first));  // depth first - 1
    const PointResult c = simulate_point(cut, {5, 2}, {1});
    CHECK(c.first_nonfinite_layer == 0);
    for (int s = 0; s < static_cast<int>(Stat::grad_activation_msq); ++s) {
      INFO("statistic " << stat_catalog()[s].name);
      for (std::int64_t t = 0; t < 3; ++t) {
        for (int l = 1; l < first; ++l) {
          const double a = r.per_trial[s][static_cast<std::size_t>(t * r.depth + l - 1)];
          const double b = c.per_trial[s][static_cast<std::size_t>(t * c.depth + l - 1)];
          REQUIRE(std::memcmp(&a, &b, sizeof a) == 0);
        }
      }
    }
    for (int l = 1; l < first; ++l) CHECK(r.nonfinite_count[static_cast<std::size_t>(l - 1)] == 0);
    // The gradient of a trial whose forward pass blew up runs through the blown-up layers: NaN at
    // every layer (relu'(NaN) = 0 used to make it a silent, exact 0). The cut network has finite ones.
    for (std::int64_t t = 0; t < 3; ++t) {
      bool blew_up = false;
      for (int l = 1; l <= r.depth; ++l) blew_up = blew_up || r.nonfinite_per_trial[static_cast<std::size_t>(t * r.depth + l - 1)] > 0;
      REQUIRE(blew_up);
      for (int l = 1; l <= r.depth; ++l) {
        CHECK(std::isnan(r.per_trial[static_cast<int>(Stat::grad_activation_msq)][static_cast<std::size_t>(t * r.depth + l - 1)]));
      }
    }
    CHECK(std::isfinite(c.mean(Stat::grad_activation_msq, c.depth)));
  }
}

TEST_CASE("the work estimate counts GEMM FLOPs", "[engine]") {
  PointSpec spec = make_spec(Selu{}, 4, 100, 3, 50);
  const WorkEstimate e = estimate_work(spec, {1});
  // forward 4 layers + backward 3 layers, 2 B n^2 FLOP each, times T.
  CHECK(e.gemm_flop == Approx(3.0 * 7 * 2 * 50 * 100 * 100));
  spec.monte_carlo.weight_gradients = true;
  CHECK(estimate_work(spec, {1}).gemm_flop == Approx(3.0 * 11 * 2 * 50 * 100 * 100));
  CHECK(e.buffer_bytes > 4u * 100 * 100 * sizeof(double));
  // The result holds every statistic and both non-finite counts of every trial and layer.
  CHECK(e.result_bytes == 3u * 4 * (kStatCount * sizeof(double) + 2 * sizeof(std::int64_t)));
  CHECK(e.total_bytes() == e.buffer_bytes + e.result_bytes);
}

TEST_CASE("the memory estimate counts the temporaries of drawing orthogonal weights", "[engine]") {
  // Each rank that draws an orthogonal layer holds the matrix and its QR factorisation's
  // temporaries (four double matrices of its size) at once; a width of 4096 on 16 threads needs
  // about 10 GB of them, which the estimate used to leave out.
  // What a second thread adds: its own scratch (a few MB here), and with orthogonal weights one
  // more rank's matrix, temporaries and R's coefficients (36 MB).
  PointSpec spec = make_spec(Selu{}, 4, 1000, 2, 512, Precision::float32);
  const auto added_by_second_thread = [&] {
    const WorkEstimate one = estimate_work(spec, {1});
    const WorkEstimate two = estimate_work(spec, {2});
    REQUIRE(two.threads_used == 2);
    return static_cast<double>(two.buffer_bytes) - static_cast<double>(one.buffer_bytes);
  };
  const double lecun = added_by_second_thread();
  spec.init.kind = InitKind::orthogonal;
  const double orthogonal = added_by_second_thread();
  const double per_rank = 1000.0 * 1000.0 * (4 * sizeof(double) + sizeof(float)) + 1000.0 * sizeof(double);
  CHECK(lecun < per_rank / 4);
  CHECK(orthogonal >= per_rank);
  CHECK(orthogonal <= per_rank + lecun);
}

TEST_CASE("the memory estimate saturates instead of wrapping, and such a point is refused unallocated", "[engine]") {
  // A batch of 2^40 at width 2^24: 2^66 bytes of activations, beyond any size_t.
  PointSpec spec = make_spec(Relu{}, 3, std::int64_t(1) << 24, 1, std::int64_t(1) << 40, Precision::float32);
  const WorkEstimate e = estimate_work(spec, {2});
  CHECK(e.buffer_bytes == SIZE_MAX);
  CHECK(e.total_bytes() == SIZE_MAX);
  CHECK_THROWS_AS(simulate_point(spec, {1, 0}, {1}), std::length_error);
  // Large but representable: counted exactly, far above any machine.
  spec = make_spec(Relu{}, 2, 1000000, 1, 16, Precision::float32);
  const WorkEstimate big = estimate_work(spec, {1});
  CHECK(big.buffer_bytes > (std::size_t(1) << 42));  // two 10^6 x 10^6 weight matrices: 8 TB
  CHECK(big.buffer_bytes < SIZE_MAX);
}
