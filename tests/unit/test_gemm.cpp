// The GEMM kernels: correct against a naive product in every layout and at every edge, and bitwise
// independent of how the work is split (rows, columns, layout of A). The per-element passes on a
// panel row (panel_rows.hpp): the sums, the non-finite counts and the ragged last panel.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/gemm.hpp"
#include "core/panel_rows.hpp"
#include "core/transpose.hpp"

using namespace selfnorm;

namespace {

// A dense row-major matrix with values in [-1, 1].
template <class T>
struct Dense {
  std::int64_t rows = 0, cols = 0;
  std::vector<T> v;
  Dense(std::int64_t r, std::int64_t c, std::mt19937_64& rng) : rows(r), cols(c), v(static_cast<std::size_t>(r * c)) {
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    for (auto& x : v) x = static_cast<T>(u(rng));
  }
  T operator()(std::int64_t i, std::int64_t j) const { return v[static_cast<std::size_t>(i * cols + j)]; }
};

std::int64_t round_up(std::int64_t v, std::int64_t to) { return (v + to - 1) / to * to; }

// Storage for a matrix in strips (rows padded to kStrip) or in panels of `width` (rows padded to
// kStrip, columns to the width). Padding holds `fill`, which must never reach a valid result.
template <class T>
struct Stored {
  std::vector<T> data;
  std::ptrdiff_t stride = 0;
};

template <class T>
Stored<T> as_strips(const Dense<T>& a, T fill) {
  Stored<T> s;
  s.stride = round_up(a.cols, 16) * kStrip + 16;
  s.data.assign(static_cast<std::size_t>(round_up(a.rows, kStrip) / kStrip * s.stride), fill);
  for (std::int64_t i = 0; i < a.rows; ++i) {
    for (std::int64_t p = 0; p < a.cols; ++p) {
      s.data[static_cast<std::size_t>((i / kStrip) * s.stride + p * kStrip + i % kStrip)] = a(i, p);
    }
  }
  return s;
}

template <class T>
Stored<T> as_panels(const Dense<T>& a, std::int64_t width, T fill) {
  Stored<T> s;
  s.stride = round_up(a.rows, kStrip) * width + 8;
  s.data.assign(static_cast<std::size_t>(round_up(a.cols, width) / width * s.stride), fill);
  for (std::int64_t i = 0; i < a.rows; ++i) {
    for (std::int64_t j = 0; j < a.cols; ++j) {
      s.data[static_cast<std::size_t>((j / width) * s.stride + i * width + j % width)] = a(i, j);
    }
  }
  return s;
}

// Runs a product and gathers C (m x n valid columns) from the blocks handed to `done`, checking
// that the blocks come in row order, each kBlockRows long but the last, covering [0, m) once.
template <class T, class AView>
std::vector<T> product(std::int64_t m, std::int64_t k, std::int64_t n, AView a, PanelView<T> b) {
  const std::int64_t panels = (n + kPanel<T> - 1) / kPanel<T>;
  std::vector<T> c_block(gemm_block_size<T>(panels));
  std::vector<T> c(static_cast<std::size_t>(m * n));
  std::int64_t next_row = 0;
  gemm<T>(m, k, panels, a, b, c_block.data(), [&](std::int64_t row0, std::int64_t rows, const T* cb, std::ptrdiff_t ldc) {
    REQUIRE(row0 == next_row);
    REQUIRE(rows == std::min(kBlockRows, m - row0));
    REQUIRE(ldc >= panels * kPanel<T>);
    for (std::int64_t i = 0; i < rows; ++i) std::memcpy(&c[static_cast<std::size_t>((row0 + i) * n)], cb + i * ldc, n * sizeof(T));
    next_row += rows;
  });
  REQUIRE(next_row == m);
  return c;
}

template <class T>
bool same_bits(const std::vector<T>& x, const std::vector<T>& y) {
  return x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size() * sizeof(T)) == 0;
}

}  // namespace

TEMPLATE_TEST_CASE("gemm matches a naive product in every layout and at every edge", "[gemm]", float, double) {
  using T = TestType;
  std::mt19937_64 rng(2024);
  const auto P = kPanel<T>;
  const auto K = kKBlock<T>;
  // Shapes around the tile (12 x P), the row blocks (kBlockRows), the k blocks and the panels.
  for (auto [m, k, n] : {std::tuple<std::int64_t, std::int64_t, std::int64_t>{1, 1, 1}, {12, 12, P}, {13, 7, P + 1},
                         {kBlockRows + 5, K + 13, 2 * P}, {kBlockRows, 2 * K + 1, 3 * P - 5}, {37, K - 1, 1},
                         {5, 3 * P + 7, P}, {2 * kBlockRows + 1, 40, P - 1}}) {
    const Dense<T> a(m, k, rng), b(k, n, rng);
    // NaN in every padding position: a padded element that reached a valid result would show.
    const T nan = std::numeric_limits<T>::quiet_NaN();
    const Stored<T> as = as_strips(a, nan), a12 = as_panels(a, kStrip, nan), ap = as_panels(a, P, nan);
    const Stored<T> bs = as_panels(b, P, nan);
    const PanelView<T> bv{bs.data.data(), bs.stride, P};
    const auto c = product<T>(m, k, n, StripView<T>{as.data.data(), as.stride}, bv);
    for (std::int64_t i = 0; i < m; ++i) {
      for (std::int64_t j = 0; j < n; ++j) {
        long double ref = 0, scale = 0;
        for (std::int64_t p = 0; p < k; ++p) {
          ref += static_cast<long double>(a(i, p)) * b(p, j);
          scale += std::abs(static_cast<long double>(a(i, p)) * b(p, j));
        }
        INFO("m=" << m << " k=" << k << " n=" << n << " at " << i << "," << j);
        // Rounding error bound of a length-k sum: k * eps * sum |terms| (Higham, ch. 3).
        REQUIRE(std::abs(c[static_cast<std::size_t>(i * n + j)] - ref) <= (k + 2) * std::numeric_limits<T>::epsilon() * scale);
      }
    }
    // A in panels of either width runs the same operations in the same order: the same bits.
    INFO("m=" << m << " k=" << k << " n=" << n);
    CHECK(same_bits(c, product<T>(m, k, n, PanelView<T>{a12.data.data(), a12.stride, kStrip}, bv)));
    CHECK(same_bits(c, product<T>(m, k, n, PanelView<T>{ap.data.data(), ap.stride, P}, bv)));
  }
}

TEMPLATE_TEST_CASE("gemm results do not depend on how C is split", "[gemm][determinism]", float, double) {
  using T = TestType;
  std::mt19937_64 rng(7);
  const auto P = kPanel<T>;
  const std::int64_t m = 2 * kBlockRows + 30, k = 2 * kKBlock<T> + 50, n = 5 * P;
  const Dense<T> a(m, k, rng), b(k, n, rng);
  const Stored<T> as = as_strips(a, T(0)), bs = as_panels(b, P, T(0));
  const auto whole = product<T>(m, k, n, StripView<T>{as.data.data(), as.stride}, PanelView<T>{bs.data.data(), bs.stride, P});
  // Rows starting at other strips (so in other row blocks) and other runs of panels, as other
  // thread counts and row blocks of the engine produce.
  for (auto [s0, s1] : {std::pair<std::int64_t, std::int64_t>{0, 1}, {1, 9}, {3, (m + kStrip - 1) / kStrip}}) {
    for (auto [q0, q1] : {std::pair<std::int64_t, std::int64_t>{0, 1}, {1, 4}, {2, 5}}) {
      const std::int64_t r0 = s0 * kStrip, rows = std::min(m, s1 * kStrip) - r0;
      const auto part = product<T>(rows, k, (q1 - q0) * P, StripView<T>{as.data.data() + s0 * as.stride, as.stride},
                                   PanelView<T>{bs.data.data() + q0 * bs.stride, bs.stride, P});
      for (std::int64_t i = 0; i < rows; ++i) {
        INFO("rows from " << r0 << ", panels " << q0 << ".." << q1 << ", row " << i);
        REQUIRE(std::memcmp(&part[static_cast<std::size_t>(i * (q1 - q0) * P)],
                            &whole[static_cast<std::size_t>((r0 + i) * n + q0 * P)], (q1 - q0) * P * sizeof(T)) == 0);
      }
    }
  }
}

TEST_CASE("gemm refuses operands in layouts it has no kernel for", "[gemm]") {
  std::vector<float> a(4096), b(4096), c(gemm_block_size<float>(1));
  auto ignore = [](std::int64_t, std::int64_t, const float*, std::ptrdiff_t) {};
  CHECK_THROWS_WITH(gemm<float>(12, 12, 1, PanelView<float>{a.data(), 256, 8}, PanelView<float>{b.data(), 512, 32}, c.data(),
                                ignore),
                    Catch::Contains("kStrip or kPanel"));
  CHECK_THROWS_WITH(gemm<float>(12, 12, 1, StripView<float>{a.data(), 256}, PanelView<float>{b.data(), 512, 16}, c.data(),
                                ignore),
                    Catch::Contains("panels of kPanel"));
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

TEMPLATE_TEST_CASE("a panel row's sums and non-finite counts match a direct computation, ragged ends included",
                   "[gemm][panel]", float, double) {
  using T = TestType;
  constexpr int P = static_cast<int>(kPanel<T>);
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> u(-3.0, 3.0);
  const T nan = std::numeric_limits<T>::quiet_NaN(), inf = std::numeric_limits<T>::infinity();
  for (int m = 1; m <= P; ++m) {
    for (int poisoned : {-1, 0, m - 1}) {  // no bad entry, or inf/NaN at a valid position
      INFO("m = " << m << ", bad entry at " << poisoned);
      // Past m every array holds NaN: none of it may reach a sum or a count.
      T h[P], x[P], g[P], d[P], gh[P];
      for (int k = 0; k < P; ++k) {
        const bool valid = k < m;
        h[k] = valid ? static_cast<T>(u(rng)) : nan;
        x[k] = valid ? static_cast<T>(u(rng)) : nan;
        g[k] = valid ? static_cast<T>(u(rng)) : nan;
        d[k] = valid ? static_cast<T>(u(rng)) : nan;
        gh[k] = T(7);
      }
      if (poisoned >= 0) {
        h[poisoned] = inf;
        x[poisoned] = nan;
        d[poisoned] = inf;
      }
      const double pre_shift = 0.25, act_shift = -0.5;
      ForwardLanes sums;
      Lanes16 row_sum, sx, sh;
      const std::int64_t bad = forward_panel_row(h, x, m, pre_shift, act_shift, sums, row_sum);
      const std::int64_t gbad = backward_panel_row(g, d, gh, m, sx, sh);
      CHECK(bad == (poisoned >= 0 ? 1 : 0));
      CHECK(gbad == (poisoned >= 0 ? 1 : 0));
      double s1 = 0, s2 = 0, a2 = 0, rs = 0, g2 = 0, h2 = 0;
      for (int k = 0; k < m; ++k) {
        s1 += static_cast<double>(h[k]) - pre_shift;
        s2 += (static_cast<double>(h[k]) - pre_shift) * (static_cast<double>(h[k]) - pre_shift);
        a2 += (static_cast<double>(x[k]) - act_shift) * (static_cast<double>(x[k]) - act_shift);
        rs += static_cast<double>(x[k]);
        g2 += static_cast<double>(g[k]) * static_cast<double>(g[k]);
        const double p = static_cast<double>(static_cast<T>(g[k] * d[k]));
        h2 += p * p;
        CHECK(gh[k] == g[k] * d[k]);
      }
      for (int k = m; k < P; ++k) CHECK(gh[k] == T(0));
      if (poisoned < 0) {
        CHECK(sums.pre_s1.total() == Approx(s1).epsilon(1e-13).margin(1e-13));
        CHECK(sums.pre_s2.total() == Approx(s2).epsilon(1e-13));
        CHECK(sums.act_s2.total() == Approx(a2).epsilon(1e-13));
        CHECK(row_sum.total() == Approx(rs).epsilon(1e-13).margin(1e-13));
        CHECK(sx.total() == Approx(g2).epsilon(1e-13));
        CHECK(sh.total() == Approx(h2).epsilon(1e-13));
      } else {
        CHECK(!std::isfinite(sums.pre_s2.total()));  // inf/NaN stays visible in the sums
        CHECK(!std::isfinite(sh.total()));
      }
    }
  }
}

TEMPLATE_TEST_CASE("a row's statistics equal its panel rows' and count exactly its non-finite entries", "[gemm][panel]",
                   float, double) {
  // forward_row sums a whole unit's row at once and counts entries only where the sums of squares
  // stop being finite; forward_panel_row checks every entry of each panel row. Rows of every
  // length mod 16 and mod kPanel, clean rows after blown-up ones (the sums stay non-finite), and
  // finite values whose squares overflow in float64.
  using T = TestType;
  constexpr T inf = std::numeric_limits<T>::infinity();
  constexpr T nan = std::numeric_limits<T>::quiet_NaN();
  std::mt19937_64 rng(7);
  std::normal_distribution<double> normal;
  for (const std::int64_t count : {1, 5, 15, 16, 17, 31, 32, 33, 47, 100, 256, 300, 512}) {
    INFO("count " << count);
    const std::int64_t padded = (count + kPanel<T> - 1) / kPanel<T> * kPanel<T>;
    ForwardLanes by_panel, by_row;
    for (int r = 0; r < 12; ++r) {
      INFO("row " << r);
      std::vector<T> h(static_cast<std::size_t>(padded)), x(h.size());
      for (std::size_t k = 0; k < h.size(); ++k) {
        h[k] = static_cast<T>(normal(rng));
        x[k] = static_cast<T>(h[k] > 0 ? h[k] : 0.5 * normal(rng));
      }
      std::int64_t expected = 0;
      auto spoil = [&](std::vector<T>& v, std::int64_t k, T value) {
        const bool was_bad = !std::isfinite(h[static_cast<std::size_t>(k)]) || !std::isfinite(x[static_cast<std::size_t>(k)]);
        v[static_cast<std::size_t>(k)] = value;
        if (!was_bad) ++expected;
      };
      if (r == 3) spoil(h, count - 1, inf);  // the last entry: the partial lane group
      if (r == 5) {
        spoil(x, 0, nan);
        spoil(h, count / 2, -inf);
        spoil(x, count / 2, inf);  // the same entry twice: one bad entry
      }
      if (r == 8 && sizeof(T) == 8) {
        h[0] = static_cast<T>(1e200);  // finite, its square is not
      }
      for (std::int64_t k = count; k < padded; ++k) {  // past the row: read, never counted
        h[static_cast<std::size_t>(k)] = nan;
        x[static_cast<std::size_t>(k)] = inf;
      }
      Lanes16 sum_panel, sum_row;
      std::int64_t bad_panel = 0;
      for (std::int64_t q = 0; q * kPanel<T> < count; ++q) {
        const int m = static_cast<int>(std::min<std::int64_t>(kPanel<T>, count - q * kPanel<T>));
        bad_panel += forward_panel_row(h.data() + q * kPanel<T>, x.data() + q * kPanel<T>, m, 0.25, -0.5, by_panel,
                                       sum_panel);
      }
      const std::int64_t bad_row = forward_row(h.data(), x.data(), count, 0.25, -0.5, by_row, sum_row, true);
      CHECK(bad_panel == expected);
      CHECK(bad_row == expected);
      CHECK(std::memcmp(&sum_panel, &sum_row, sizeof(Lanes16)) == 0);
      REQUIRE(std::memcmp(&by_panel, &by_row, sizeof(ForwardLanes)) == 0);
    }
    CHECK(!std::isfinite(by_row.pre_s2.total()));
  }
}

TEMPLATE_TEST_CASE("a row's backward pass equals its panel rows' and counts exactly its non-finite entries",
                   "[gemm][panel]", float, double) {
  // backward_row runs whole panels without masks and counts entries only where the sum of the
  // squares of gh stops being finite; backward_panel_row checks every entry.
  using T = TestType;
  constexpr std::int64_t P = kPanel<T>;
  constexpr T inf = std::numeric_limits<T>::infinity();
  constexpr T nan = std::numeric_limits<T>::quiet_NaN();
  std::mt19937_64 rng(13);
  std::normal_distribution<double> normal;
  for (const std::int64_t count : {1, 5, 16, 17, 31, 32, 33, 64, 100, 256, 300, 512}) {
    INFO("count " << count);
    const std::int64_t panels = (count + P - 1) / P;
    const std::ptrdiff_t stride = 3 * P;  // panel rows of other units in between
    Lanes16 sx_panel, sh_panel, sx_row, sh_row;
    for (int r = 0; r < 10; ++r) {
      INFO("row " << r);
      std::vector<T> g(static_cast<std::size_t>(panels * P)), d(g.size());
      for (std::size_t k = 0; k < g.size(); ++k) {
        g[k] = static_cast<T>(normal(rng));
        d[k] = static_cast<T>(normal(rng) > 0 ? 1.0507 : 0.3 * normal(rng));
      }
      std::int64_t expected = 0;
      if (r == 2) {
        d[0] = inf;  // gh inf
        ++expected;
      }
      if (r == 4) {
        g[static_cast<std::size_t>(count - 1)] = nan;  // the last entry, in the partial panel if any
        g[static_cast<std::size_t>(count / 2)] = inf;
        d[static_cast<std::size_t>(count / 2)] = 0;  // inf * 0 = NaN
        expected += count > 1 ? 2 : 1;
      }
      if (r == 6 && sizeof(T) == 8) {
        g[0] = static_cast<T>(1e200);  // a finite gh whose square is not
        d[0] = 1;
      }
      for (std::int64_t k = count; k < panels * P; ++k) {  // past the row: read, never counted
        g[static_cast<std::size_t>(k)] = nan;
        d[static_cast<std::size_t>(k)] = inf;
      }
      std::vector<T> gh_panel(static_cast<std::size_t>(panels * stride), T(7)), gh_row(gh_panel.size(), T(7));
      std::int64_t bad_panel = 0;
      for (std::int64_t q = 0; q < panels; ++q) {
        const int m = static_cast<int>(std::min<std::int64_t>(P, count - q * P));
        bad_panel += backward_panel_row(g.data() + q * P, d.data() + q * P, gh_panel.data() + q * stride, m, sx_panel,
                                        sh_panel);
      }
      const std::int64_t bad_row = backward_row(g.data(), d.data(), count, gh_row.data(), stride, sx_row, sh_row);
      CHECK(bad_panel == expected);
      CHECK(bad_row == expected);
      CHECK(std::memcmp(gh_panel.data(), gh_row.data(), gh_row.size() * sizeof(T)) == 0);
      CHECK(std::memcmp(&sx_panel, &sx_row, sizeof(Lanes16)) == 0);
      REQUIRE(std::memcmp(&sh_panel, &sh_row, sizeof(Lanes16)) == 0);
    }
    CHECK(!std::isfinite(sh_row.total()));
  }
}

TEST_CASE("Lanes16 folds its lanes in a fixed order", "[gemm][panel]") {
  // 1e16 + 1 - 1e16 depends on the order of the additions: the fold is lanes k + 8, then halves.
  Lanes16 a;
  float h[32] = {}, x[32] = {};
  x[0] = 1e16f;
  x[8] = 1.0f;
  x[4] = -1e16f;
  ForwardLanes unused;
  forward_panel_row(h, x, 32, 0.0, 0.0, unused, a);
  // (x0 + x8) + x4: 1e16 + 1 rounds to 1e16 in double, then - 1e16 = 0.
  CHECK(a.total() == 0.0);
}
