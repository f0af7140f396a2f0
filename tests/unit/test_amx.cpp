// The AMX product (amx.hpp): the split into bfloat16 pieces is exact, the layouts put every
// element where the kernel reads it, and the error of a float32 product on the tile unit is that
// of a float32 FMA product. A program of its own: where the CPU or the build has no AMX-BF16 it
// says so and exits with status 77, which CTest reports as skipped (tests/CMakeLists.txt).
#define CATCH_CONFIG_EXTERNAL_INTERFACES  // for the listener below
#include <catch2/catch.hpp>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <random>
#include <vector>

#include "core/amx.hpp"
#include "core/gemm.hpp"
#include "naive_reference.hpp"

using namespace selfnorm;

namespace {

// Before the first test: the tile units, or skip the whole program.
struct RequireAmx : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  void testRunStarting(const Catch::TestRunInfo& info) override {
    TestEventListenerBase::testRunStarting(info);
    if (!amx::available()) {
      std::cout << "SKIPPED: the AMX tests need a CPU with AMX-BF16 and a build for it (-march=native on one)"
                << std::endl;
      std::exit(77);
    }
  }
};

}  // namespace

CATCH_REGISTER_LISTENER(RequireAmx)

namespace {

float from_bf16(std::uint16_t h) { return std::bit_cast<float>(static_cast<std::uint32_t>(h) << 16); }

// An m x k matrix (row-major) as split A tiles.
std::vector<std::uint16_t> split_a(const std::vector<float>& w, std::int64_t m, std::int64_t k) {
  const std::int64_t tiles = amx::row_tiles(m), chunks = amx::round_k(k) / amx::kChunk;
  std::vector<std::uint16_t> out(static_cast<std::size_t>(amx::a_size(m, k)));
  const std::ptrdiff_t plane = tiles * chunks * amx::kTileElements;
  std::vector<float> block(amx::kTileElements);
  for (std::int64_t i = 0; i < tiles; ++i) {
    for (std::int64_t c = 0; c < chunks; ++c) {
      for (std::int64_t r = 0; r < amx::kTileRows; ++r) {
        for (std::int64_t t = 0; t < amx::kChunk; ++t) {
          const std::int64_t row = i * amx::kTileRows + r, col = c * amx::kChunk + t;
          block[static_cast<std::size_t>(r * amx::kChunk + t)] =
              row < m && col < k ? w[static_cast<std::size_t>(row * k + col)] : 0.0f;
        }
      }
      amx::split_a_tile(block.data(), amx::kChunk, out.data() + (i * chunks + c) * amx::kTileElements, plane);
    }
  }
  return out;
}

// A k x (panels * 32) matrix (row-major) as split B panels.
std::vector<std::uint16_t> split_b(const std::vector<float>& x, std::int64_t k, std::int64_t panels,
                                   std::ptrdiff_t& stride) {
  constexpr std::int64_t P = kPanel<float>;
  const std::int64_t cols = panels * P;
  stride = amx::b_plane_stride(k);
  std::vector<std::uint16_t> out(static_cast<std::size_t>(panels * amx::kPlanes * stride), 0xFFFF);
  std::vector<float> r0(P), r1(P);
  for (std::int64_t q = 0; q < panels; ++q) {
    std::uint16_t* panel = out.data() + q * amx::kPlanes * stride;
    for (std::int64_t p = 0; p < (k + 1) / 2; ++p) {
      for (std::int64_t s = 0; s < P; ++s) {
        r0[static_cast<std::size_t>(s)] = x[static_cast<std::size_t>(2 * p * cols + q * P + s)];
        if (2 * p + 1 < k) r1[static_cast<std::size_t>(s)] = x[static_cast<std::size_t>((2 * p + 1) * cols + q * P + s)];
      }
      amx::split_b_pair(r0.data(), 2 * p + 1 < k ? r1.data() : nullptr, p, panel, stride);
    }
    amx::zero_b_pairs((k + 1) / 2, amx::round_k(k) / 2, panel, stride);
  }
  return out;
}

// C = A B on the tile unit, row-major m x (panels * 32).
std::vector<float> product(const std::vector<float>& a, const std::vector<float>& b, std::int64_t m, std::int64_t k,
                           std::int64_t panels) {
  const auto at = split_a(a, m, k);
  std::ptrdiff_t stride = 0;
  const auto bt = split_b(b, k, panels, stride);
  const std::int64_t cols = panels * kPanel<float>;
  std::vector<float> c(static_cast<std::size_t>(m * cols), std::numeric_limits<float>::quiet_NaN());
  std::vector<float> block(gemm_block_size<float>(panels));
  amx::gemm(m, k, panels, {at.data(), amx::row_tiles(m), amx::round_k(k) / amx::kChunk}, {bt.data(), stride},
            block.data(), [&](std::int64_t row0, std::int64_t rows, const float* cb, std::ptrdiff_t ldc) {
              for (std::int64_t r = 0; r < rows; ++r) {
                for (std::int64_t j = 0; j < cols; ++j) {
                  c[static_cast<std::size_t>((row0 + r) * cols + j)] = cb[r * ldc + j];
                }
              }
            });
  return c;
}

std::vector<float> normals(std::size_t n, std::mt19937_64& rng, double sd) {
  std::normal_distribution<double> d(0.0, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(d(rng));
  return v;
}

}  // namespace

TEST_CASE("the split into three bfloat16 pieces is exact", "[amx]") {
  std::mt19937_64 rng(11);
  std::vector<float> values = normals(4096, rng, 1.0);
  for (float v : {0.0f, -0.0f, 1.0f, -1.0f, std::numeric_limits<float>::max(), -std::numeric_limits<float>::max(),
                  std::numeric_limits<float>::min(), 1e-30f, 3.14159265f, 16777215.0f, 1.00000012f}) {
    values.push_back(v);
  }
  values.resize((values.size() + 31) / 32 * 32, 0.5f);
  std::vector<std::uint16_t> tile(3 * amx::kTileElements);
  std::vector<float> block(amx::kTileElements);
  for (std::size_t start = 0; start < values.size(); start += 32) {
    for (std::int64_t r = 0; r < amx::kTileRows; ++r) {
      for (std::int64_t t = 0; t < 32; ++t) block[static_cast<std::size_t>(r * 32 + t)] = values[start + static_cast<std::size_t>(t)];
    }
    amx::split_a_tile(block.data(), 32, tile.data(), amx::kTileElements);
    for (std::size_t t = 0; t < 32; ++t) {
      const float v = values[start + t];
      const float p0 = from_bf16(tile[t]), p1 = from_bf16(tile[amx::kTileElements + t]),
                  p2 = from_bf16(tile[2 * amx::kTileElements + t]);
      INFO("value " << v << " pieces " << p0 << " " << p1 << " " << p2);
      CHECK(static_cast<double>(p0) + static_cast<double>(p1) + static_cast<double>(p2) == static_cast<double>(v));
      CHECK(std::abs(p1) <= std::ldexp(std::abs(p0), -7));
      CHECK(std::abs(p2) <= std::ldexp(std::abs(p1), -7));
    }
  }
  // inf and NaN stay in the leading piece; a NaN whose payload is in the low bits stays a NaN.
  const float specials[4] = {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                             std::numeric_limits<float>::quiet_NaN(), std::bit_cast<float>(0x7F800001u)};
  for (std::int64_t r = 0; r < amx::kTileRows; ++r) {
    for (std::int64_t t = 0; t < 32; ++t) block[static_cast<std::size_t>(r * 32 + t)] = specials[t % 4];
  }
  amx::split_a_tile(block.data(), 32, tile.data(), amx::kTileElements);
  CHECK(from_bf16(tile[0]) == std::numeric_limits<float>::infinity());
  CHECK(from_bf16(tile[1]) == -std::numeric_limits<float>::infinity());
  CHECK(std::isnan(from_bf16(tile[2])));
  CHECK(std::isnan(from_bf16(tile[3])));
  for (int t = 0; t < 4; ++t) {
    CHECK(tile[amx::kTileElements + t] == 0);
    CHECK(tile[2 * amx::kTileElements + t] == 0);
  }
}

TEST_CASE("the AMX product reads every element of A and B where the layouts put it", "[amx]") {
  // With one nonzero per column of B (a power of two), each element of C is one element of A
  // scaled, exactly: any misplaced tile, pair or piece shows as a wrong value. And the same with
  // the roles swapped. Ragged shapes: m, k not multiples of the tiles, several row blocks.
  std::mt19937_64 rng(12);
  const std::int64_t m = 203, k = 77, panels = 3, cols = panels * kPanel<float>;
  const auto a = normals(static_cast<std::size_t>(m * k), rng, 1.0);
  std::vector<float> b(static_cast<std::size_t>(k * cols), 0.0f);
  std::vector<std::int64_t> pick(static_cast<std::size_t>(cols));
  for (std::int64_t j = 0; j < cols; ++j) {
    pick[static_cast<std::size_t>(j)] = static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(k));
    b[static_cast<std::size_t>(pick[static_cast<std::size_t>(j)] * cols + j)] = (j % 3 == 0) ? -2.0f : 0.5f;
  }
  const auto c = product(a, b, m, k, panels);
  std::int64_t wrong = 0;
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t j = 0; j < cols; ++j) {
      const float want = a[static_cast<std::size_t>(i * k + pick[static_cast<std::size_t>(j)])] * ((j % 3 == 0) ? -2.0f : 0.5f);
      wrong += c[static_cast<std::size_t>(i * cols + j)] != want;
    }
  }
  CHECK(wrong == 0);

  // One nonzero per row of A: C's rows are rows of B, exactly.
  std::vector<float> a1(static_cast<std::size_t>(m * k), 0.0f);
  std::vector<std::int64_t> row_pick(static_cast<std::size_t>(m));
  for (std::int64_t i = 0; i < m; ++i) {
    row_pick[static_cast<std::size_t>(i)] = static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(k));
    a1[static_cast<std::size_t>(i * k + row_pick[static_cast<std::size_t>(i)])] = 4.0f;
  }
  const auto b1 = normals(static_cast<std::size_t>(k * cols), rng, 1.0);
  const auto c1 = product(a1, b1, m, k, panels);
  wrong = 0;
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t j = 0; j < cols; ++j) {
      wrong += c1[static_cast<std::size_t>(i * cols + j)] !=
               4.0f * b1[static_cast<std::size_t>(row_pick[static_cast<std::size_t>(i)] * cols + j)];
    }
  }
  CHECK(wrong == 0);
}

TEST_CASE("an AMX product is as accurate as a float32 FMA product", "[amx]") {
  // LeCun-scaled weights times unit-variance activations, the engine's case, at inner dimension
  // 1024. Reference: the same product in double. The float32 reference is the same sum in
  // float32 with FMA, in order.
  std::mt19937_64 rng(13);
  const std::int64_t m = 256, k = 1024, panels = 4, cols = panels * kPanel<float>;
  const auto a = normals(static_cast<std::size_t>(m * k), rng, 1.0 / std::sqrt(static_cast<double>(k)));
  const auto b = normals(static_cast<std::size_t>(k * cols), rng, 1.0);
  const auto c = product(a, b, m, k, panels);
  double sq_amx = 0, sq_fma = 0, worst = 0;
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t j = 0; j < cols; ++j) {
      double exact = 0, abs_sum = 0;
      float fma = 0;
      for (std::int64_t p = 0; p < k; ++p) {
        const float x = a[static_cast<std::size_t>(i * k + p)], y = b[static_cast<std::size_t>(p * cols + j)];
        exact += static_cast<double>(x) * static_cast<double>(y);
        abs_sum += std::abs(static_cast<double>(x) * static_cast<double>(y));
        fma = std::fma(x, y, fma);
      }
      const double e = static_cast<double>(c[static_cast<std::size_t>(i * cols + j)]) - exact;
      sq_amx += e * e;
      sq_fma += (static_cast<double>(fma) - exact) * (static_cast<double>(fma) - exact);
      // The worst-case bound of a float32 sum of k products (Higham, Accuracy and Stability,
      // eq. 3.5), plus the dropped products (below 2^-21 |a b| each) and the final addition.
      const double u = std::ldexp(1.0, -24);
      const double gamma = k * u / (1 - k * u);
      const double bound = (gamma + std::ldexp(1.0, -21) + u) * abs_sum;
      worst = test::worse(worst, std::abs(e) / bound);
    }
  }
  const double rms_amx = std::sqrt(sq_amx / static_cast<double>(m * cols));
  const double rms_fma = std::sqrt(sq_fma / static_cast<double>(m * cols));
  INFO("rms error: amx " << rms_amx << ", float32 fma in order " << rms_fma << "; worst error / bound " << worst);
  CHECK(worst <= 1.0);
  // The sequential FMA sum rounds at the scale of the running sum k times, as the tile unit's
  // leading accumulator does; pairwise sums inside the unit can only make it smaller.
  CHECK(rms_amx <= rms_fma);
}

// The engine with its float32 products on the tile units: the same checks as test_engine.cpp's
// on the vector units (naive_reference.hpp).

TEST_CASE("bf16x6 results are bit-identical for any thread count and parallel mode", "[amx][engine][determinism]") {
  PointSpec spec = test::determinism_spec();
  SECTION("biases, weight gradients and alpha dropout") { spec.alpha_dropout.keep_probability = 0.9; }
  SECTION("a batch of 1100, orthogonal weights (split from stored strips)") {
    spec.monte_carlo.batch = 1100;
    spec.monte_carlo.weight_gradients = false;
    spec.init.kind = InitKind::orthogonal;
  }
  test::require_same_bits_for_any_threads(spec, Matmul::bf16x6);
}

TEST_CASE("bf16x6 at every edge of the tile layouts agrees with a float64 reference", "[amx][engine]") {
  PointSpec spec = test::float32_edges_spec();
  SECTION("biases, weight gradients") {}
  SECTION("and alpha dropout") { spec.alpha_dropout.keep_probability = 0.8; }
  SECTION("orthogonal weights (split from stored strips)") {
    spec.init.kind = InitKind::orthogonal;
    spec.init.weight_mean = 0.0;
  }
  test::check_float32_against_naive(spec, Matmul::bf16x6);
}
