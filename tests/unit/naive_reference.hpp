// The engine checked against itself and against a naive reference: bitwise determinism across
// thread counts and parallel modes, and one trial recomputed sample by sample in double. Shared by
// test_engine.cpp (FMA products) and test_amx.cpp (bf16x6 on the tile units, a program that CTest
// reports as skipped where there are none).
#pragma once

#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "core/engine.hpp"
#include "core/init.hpp"
#include "core/random.hpp"
#include "test_helpers.hpp"

namespace selfnorm::test {

inline bool same_bits(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
}

inline void require_identical(const PointResult& a, const PointResult& b) {
  for (int s = 0; s < kStatCount; ++s) {
    INFO("statistic " << stat_catalog()[s].name);
    REQUIRE(same_bits(a.per_trial[s], b.per_trial[s]));
  }
  REQUIRE(a.nonfinite_per_trial == b.nonfinite_per_trial);
  REQUIRE(a.grad_nonfinite_per_trial == b.grad_nonfinite_per_trial);
}

// One layer's statistics of one trial, from a naive sample-by-sample computation in double.
struct NaiveLayer {
  double pre_mean, pre_var, act_mean, act_var, act_msq, spread, grad_act_msq, grad_pre_msq, grad_weight_msq;
};

// The engine's trial `t` recomputed one sample at a time, in double, from the same streams (drawn
// in T, as the engine draws them): elu(0.8) activations, biases, weight gradients, and alpha
// dropout when the spec has it (uniform of (sample s, unit j) = element s n_l + j of the stream).
template <class T>
std::vector<NaiveLayer> naive_trial(const PointSpec& spec, const StreamSeed& seed, std::int64_t t) {
  const auto& n = spec.network.widths;
  const int L = spec.network.depth();
  const std::int64_t B = spec.monte_carlo.batch;
  const double alpha = std::get<Elu>(spec.activation).alpha;
  double keep = 1, da = 1, db = 0, dropped = 0;
  if (spec.alpha_dropout.enabled()) {
    keep = spec.alpha_dropout.keep_probability;
    alpha_dropout_affine(keep, -alpha, 0.0, 1.0, da, db);
    dropped = da * -alpha + db;
  }
  auto key = [&](StreamKind k, int l) { return stream_key(seed.seed, seed.point, k, t, l); };
  auto as_double = [](const std::vector<T>& v) { return std::vector<double>(v.begin(), v.end()); };
  std::vector<std::vector<double>> W(L + 1), b(L + 1);
  for (int l = 1; l <= L; ++l) {
    std::vector<T> w(static_cast<std::size_t>(n[l - 1] * n[l])), bias(static_cast<std::size_t>(n[l]));
    generate_weights<T>(spec.init, key(StreamKind::weights, l), n[l - 1], n[l], w.data(), n[l]);
    fill_normal<T>(key(StreamKind::biases, l), 0, bias.size(), bias.data(), static_cast<T>(spec.init.bias_mean),
                   static_cast<T>(std::sqrt(spec.init.bias_variance)));
    W[l] = as_double(w);
    b[l] = as_double(bias);
  }
  std::vector<T> x0t(static_cast<std::size_t>(B * n[0])), gt(static_cast<std::size_t>(B * n[L]));
  generate_inputs<T>(spec.input, key(StreamKind::inputs, 0), n[0], 0, B, x0t.data(), n[0]);
  fill_normal<T>(key(StreamKind::upstream, L), 0, gt.size(), gt.data(), T(0), T(1));
  const auto x0 = as_double(x0t), g = as_double(gt);

  // One sample at a time: forward, then backward.
  std::vector<std::vector<std::vector<double>>> h(B), x(B), dx(B), dh(B);
  for (std::int64_t s = 0; s < B; ++s) {
    h[s].resize(L + 1);
    x[s].resize(L + 1);
    dx[s].resize(L + 1);
    dh[s].resize(L + 1);
    std::vector<std::vector<double>> d(L + 1);
    x[s][0].assign(x0.begin() + s * n[0], x0.begin() + (s + 1) * n[0]);
    for (int l = 1; l <= L; ++l) {
      h[s][l].assign(n[l], 0.0);
      x[s][l].assign(n[l], 0.0);
      d[l].assign(n[l], 0.0);
      for (std::int64_t j = 0; j < n[l]; ++j) {
        double acc = b[l][j];
        for (std::int64_t i = 0; i < n[l - 1]; ++i) acc += x[s][l - 1][i] * W[l][i * n[l] + j];
        h[s][l][j] = acc;
        x[s][l][j] = acc > 0 ? acc : alpha * std::expm1(acc);
        d[l][j] = acc > 0 ? 1.0 : alpha * std::exp(acc);
        if (spec.alpha_dropout.enabled()) {
          const T u = uniform_element<T>(key(StreamKind::dropout, l), static_cast<std::uint64_t>(s * n[l] + j));
          const bool kept = u < static_cast<T>(keep);  // in T, as the engine decides
          x[s][l][j] = kept ? da * x[s][l][j] + db : dropped;
          d[l][j] = kept ? da * d[l][j] : 0.0;
        }
      }
    }
    dx[s][L].assign(g.begin() + s * n[L], g.begin() + (s + 1) * n[L]);
    for (int l = L; l >= 1; --l) {
      dh[s][l].assign(n[l], 0.0);
      for (std::int64_t j = 0; j < n[l]; ++j) dh[s][l][j] = dx[s][l][j] * d[l][j];
      dx[s][l - 1].assign(n[l - 1], 0.0);
      for (std::int64_t i = 0; i < n[l - 1]; ++i) {
        for (std::int64_t j = 0; j < n[l]; ++j) dx[s][l - 1][i] += dh[s][l][j] * W[l][i * n[l] + j];
      }
    }
  }
  std::vector<NaiveLayer> out;
  for (int l = 1; l <= L; ++l) {
    const double count = static_cast<double>(B * n[l]);
    double hs = 0, hs2 = 0, xs = 0, xs2 = 0, gx2 = 0, gh2 = 0;
    std::vector<double> unit(n[l], 0.0);
    for (std::int64_t s = 0; s < B; ++s) {
      for (std::int64_t j = 0; j < n[l]; ++j) {
        hs += h[s][l][j];
        hs2 += h[s][l][j] * h[s][l][j];
        xs += x[s][l][j];
        xs2 += x[s][l][j] * x[s][l][j];
        gx2 += dx[s][l][j] * dx[s][l][j];
        gh2 += dh[s][l][j] * dh[s][l][j];
        unit[j] += x[s][l][j] / B;
      }
    }
    double um = 0, uv = 0;
    for (double u : unit) um += u / n[l];
    for (double u : unit) uv += (u - um) * (u - um) / n[l];
    double gw2 = 0;
    for (std::int64_t i = 0; i < n[l - 1]; ++i) {
      for (std::int64_t j = 0; j < n[l]; ++j) {
        double gw = 0;
        for (std::int64_t s = 0; s < B; ++s) gw += x[s][l - 1][i] * dh[s][l][j];
        gw2 += gw * gw;
      }
    }
    out.push_back({hs / count, hs2 / count - (hs / count) * (hs / count), xs / count,
                   xs2 / count - (xs / count) * (xs / count), xs2 / count, uv, gx2 / count, gh2 / count,
                   gw2 / static_cast<double>(n[l - 1] * n[l])});
  }
  return out;
}

// The naive tests' spec: elu(0.8) through three layers of the given widths, 2 trials, with
// biases, a weight mean and weight gradients.
inline PointSpec naive_spec(Precision precision, std::vector<std::int64_t> widths, std::int64_t batch) {
  PointSpec spec = make_spec(Elu{0.8}, 3, 6, 2, batch, precision);
  spec.network.widths = std::move(widths);
  spec.init.bias_mean = 0.1;
  spec.init.bias_variance = 0.2;
  spec.init.weight_mean = 0.5;
  spec.monte_carlo.weight_gradients = true;
  return spec;
}

// The determinism test's spec: selu through uneven widths, B = 300 in uneven row blocks, biases
// and weight gradients.
inline PointSpec determinism_spec() {
  PointSpec spec = make_spec(Selu{}, 5, 50, 3, 300, Precision::float32);
  spec.network.widths = {37, 50, 64, 41, 50, 33};
  spec.init.bias_variance = 0.05;
  spec.monte_carlo.weight_gradients = true;
  return spec;
}

// Every thread count and parallel mode gives the bits of one thread.
inline void require_same_bits_for_any_threads(const PointSpec& spec, Matmul matmul) {
  const StreamSeed seed{123, 4};
  const PointResult reference = simulate_point(spec, seed, {1, ParallelMode::samples, matmul});
  REQUIRE(reference.matmul == to_string(resolve_matmul(matmul, spec)));
  for (auto [threads, mode] : {std::pair{2, ParallelMode::samples}, {3, ParallelMode::samples},
                               {2, ParallelMode::trials}, {3, ParallelMode::trials}, {2, ParallelMode::automatic}}) {
    INFO(threads << " threads, mode " << static_cast<int>(mode));
    require_identical(reference, simulate_point(spec, seed, {threads, mode, matmul}));
  }
}

// The float32 edge test's spec: widths that are no multiple of the 12-unit strips, a batch of 300
// in row blocks of 128 whose last one (44 samples) ends inside a 32-sample panel, and more than one
// block of 96 rows of C. On the tile units the same widths end inside the 32-row tiles and 32-unit
// chunks.
inline PointSpec float32_edges_spec() { return naive_spec(Precision::float32, {37, 130, 29, 41}, 300); }

// A float32 run of `spec` against the naive reference in double from the same float32 streams.
inline void check_float32_against_naive(const PointSpec& spec, Matmul matmul) {
  const StreamSeed seed{78, 3};
  const PointResult r = simulate_point(spec, seed, {2, ParallelMode::automatic, matmul});
  REQUIRE(r.matmul == to_string(matmul));
  const int L = spec.network.depth();
  for (std::int64_t t = 0; t < 2; ++t) {
    const auto ref = naive_trial<float>(spec, seed, t);
    for (int l = 1; l <= L; ++l) {
      const NaiveLayer& e = ref[static_cast<std::size_t>(l - 1)];
      auto got = [&](Stat s) { return r.per_trial[static_cast<int>(s)][t * L + l - 1]; };
      INFO("trial " << t << " layer " << l);
      // float32 rounding through three layers of sums of up to 130 terms: well below 1e-5 relative.
      // A misplaced element (a wrong offset in a strip or a panel) moves these by orders more.
      const double eps = 1e-5, scale = std::sqrt(e.act_var);
      CHECK(got(Stat::preactivation_mean) == Approx(e.pre_mean).epsilon(eps).margin(eps * std::sqrt(e.pre_var)));
      CHECK(got(Stat::preactivation_var) == Approx(e.pre_var).epsilon(eps));
      CHECK(got(Stat::activation_mean) == Approx(e.act_mean).epsilon(eps).margin(eps * scale));
      CHECK(got(Stat::activation_var) == Approx(e.act_var).epsilon(eps));
      CHECK(got(Stat::activation_msq) == Approx(e.act_msq).epsilon(eps));
      CHECK(got(Stat::unit_mean_spread) == Approx(e.spread).epsilon(eps));
      CHECK(got(Stat::grad_activation_msq) == Approx(e.grad_act_msq).epsilon(eps));
      CHECK(got(Stat::grad_preactivation_msq) == Approx(e.grad_pre_msq).epsilon(eps));
      CHECK(got(Stat::grad_weight_msq) == Approx(e.grad_weight_msq).epsilon(eps));
    }
  }
}

}  // namespace selfnorm::test
