// The GEMM kernels: correct against a naive product, and bitwise independent of how C is split.
#include <catch2/catch.hpp>

#include <cstring>
#include <random>
#include <vector>

#include "core/gemm.hpp"
#include "core/transpose.hpp"

using namespace selfnorm;

namespace {

template <class T>
std::vector<T> random_matrix(std::int64_t rows, std::int64_t ld, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  std::vector<T> m(static_cast<std::size_t>(rows * ld));
  for (auto& v : m) v = static_cast<T>(u(rng));
  return m;
}

}  // namespace

TEMPLATE_TEST_CASE("gemm matches a naive product for every edge case", "[gemm]", float, double) {
  using T = TestType;
  std::mt19937_64 rng(2024);
  for (auto [m, n, k] : {std::tuple<int, int, int>{1, 1, 1}, {6, 64, 256}, {7, 65, 257}, {13, 17, 600},
                         {128, 130, 33}, {5, 200, 513}, {64, 16, 1}}) {
    const std::ptrdiff_t lda = padded_ld(k, sizeof(T)), ldb = padded_ld(n, sizeof(T)), ldc = padded_ld(n, sizeof(T));
    const auto a = random_matrix<T>(m, lda, rng);
    const auto b = random_matrix<T>(k, ldb, rng);
    auto c = random_matrix<T>(m, ldc, rng);
    const auto c0 = c;
    gemm<T>(m, n, k, a.data(), lda, b.data(), ldb, c.data(), ldc, GemmUpdate::accumulate);
    for (int i = 0; i < m; ++i) {
      for (int j = 0; j < n; ++j) {
        long double ref = c0[i * ldc + j];
        long double scale = std::abs(ref);
        for (int p = 0; p < k; ++p) {
          ref += static_cast<long double>(a[i * lda + p]) * b[p * ldb + j];
          scale += std::abs(static_cast<long double>(a[i * lda + p]) * b[p * ldb + j]);
        }
        INFO("m=" << m << " n=" << n << " k=" << k << " at " << i << "," << j);
        // Rounding error bound of a length-k sum: k * eps * sum |terms| (Higham, ch. 3).
        REQUIRE(std::abs(c[i * ldc + j] - ref) <= (k + 2) * std::numeric_limits<T>::epsilon() * scale);
      }
      // Padding beyond column n is never written.
      for (std::ptrdiff_t j = n; j < ldc; ++j) REQUIRE(c[i * ldc + j] == c0[i * ldc + j]);
    }
  }
}

TEMPLATE_TEST_CASE("gemm results do not depend on how C is partitioned", "[gemm][determinism]", float, double) {
  using T = TestType;
  std::mt19937_64 rng(7);
  const int m = 97, n = 150, k = 700;
  const std::ptrdiff_t lda = padded_ld(k, sizeof(T)), ldb = padded_ld(n, sizeof(T)), ldc = padded_ld(n, sizeof(T));
  const auto a = random_matrix<T>(m, lda, rng);
  const auto b = random_matrix<T>(k, ldb, rng);
  std::vector<T> whole(static_cast<std::size_t>(m * ldc), T(0)), pieces(static_cast<std::size_t>(m * ldc), T(0));
  gemm<T>(m, n, k, a.data(), lda, b.data(), ldb, whole.data(), ldc, GemmUpdate::overwrite);
  // Uneven row and column blocks, as different thread counts would produce.
  for (auto [r0, r1] : {std::pair{0, 5}, {5, 50}, {50, 97}}) {
    for (auto [c0, c1] : {std::pair{0, 17}, {17, 100}, {100, 150}}) {
      gemm<T>(r1 - r0, c1 - c0, k, a.data() + r0 * lda, lda, b.data() + c0, ldb, pieces.data() + r0 * ldc + c0, ldc,
              GemmUpdate::overwrite);
    }
  }
  for (int i = 0; i < m; ++i) {
    REQUIRE(std::memcmp(whole.data() + i * ldc, pieces.data() + i * ldc, n * sizeof(T)) == 0);
  }
}

TEST_CASE("padded leading dimensions avoid multiples of 1024 bytes", "[gemm]") {
  CHECK(padded_ld(1024, 4) == 1040);
  CHECK(padded_ld(1000, 4) == 1008);
  CHECK(padded_ld(512, 8) == 520);
  CHECK(padded_ld(1, 4) == 16);
  for (std::ptrdiff_t n = 1; n < 5000; n += 37) {
    CHECK(padded_ld(n, 4) >= n);
    CHECK((padded_ld(n, 4) * 4) % 1024 != 0);
    CHECK((padded_ld(n, 4) * 4) % 64 == 0);
  }
}

TEMPLATE_TEST_CASE("transpose moves every element and nothing else", "[gemm]", float, double) {
  using T = TestType;
  for (auto [rows, cols] : {std::pair<int, int>{16, 16}, {128, 1024}, {37, 50}, {7, 3}, {44, 33}, {8, 17}}) {
    const std::ptrdiff_t lds = padded_ld(cols, sizeof(T)), ldd = padded_ld(rows, sizeof(T)) + 3;
    std::vector<T> src(static_cast<std::size_t>(rows * lds)), dst(static_cast<std::size_t>(cols * ldd), T(-1));
    for (int i = 0; i < rows; ++i) {
      for (int j = 0; j < cols; ++j) src[i * lds + j] = static_cast<T>(i * 10000 + j);
    }
    transpose<T>(src.data(), lds, rows, cols, dst.data(), ldd);
    for (int j = 0; j < cols; ++j) {
      for (std::ptrdiff_t i = 0; i < ldd; ++i) {
        INFO(rows << "x" << cols << " at " << j << "," << i);
        REQUIRE(dst[j * ldd + i] == (i < rows ? static_cast<T>(i * 10000 + j) : T(-1)));
      }
    }
  }
}
