// Mergeable moments: the merge algebra and numerical stability.
#include <catch2/catch.hpp>

#include <random>
#include <vector>

#include "core/moments.hpp"

using selfnorm::Moments;

TEST_CASE("merging accumulators equals pushing every value into one", "[moments]") {
  std::mt19937_64 rng(42);
  std::normal_distribution<double> normal(3.0, 2.0);
  std::vector<double> values(1000);
  for (auto& v : values) v = normal(rng);
  Moments all;
  for (double v : values) all.push(v);
  for (std::size_t cut : {std::size_t{0}, std::size_t{1}, std::size_t{137}, std::size_t{500}, std::size_t{999}}) {
    Moments a, b;
    for (std::size_t i = 0; i < values.size(); ++i) (i < cut ? a : b).push(values[i]);
    Moments merged = a;
    merged.merge(b);
    CHECK(merged.count == all.count);
    CHECK(merged.mean == Approx(all.mean).epsilon(1e-14));
    CHECK(merged.m2 == Approx(all.m2).epsilon(1e-12));
  }
  // Merging with an empty accumulator changes nothing, on either side.
  Moments empty, copy = all;
  copy.merge(empty);
  CHECK(copy.mean == all.mean);
  CHECK(copy.m2 == all.m2);
  empty.merge(all);
  CHECK(empty.mean == all.mean);
  CHECK(empty.count == all.count);
}

TEST_CASE("merging is associative up to rounding", "[moments]") {
  Moments a, b, c;
  for (int i = 0; i < 10; ++i) a.push(i * 0.5);
  for (int i = 0; i < 7; ++i) b.push(100.0 - i);
  for (int i = 0; i < 3; ++i) c.push(-4.0 * i);
  Moments left = a;
  left.merge(b);
  left.merge(c);
  Moments bc = b;
  bc.merge(c);
  Moments right = a;
  right.merge(bc);
  CHECK(left.count == right.count);
  CHECK(left.mean == Approx(right.mean).epsilon(1e-15));
  CHECK(left.m2 == Approx(right.m2).epsilon(1e-14));
}

TEST_CASE("the variance survives a large offset", "[moments]") {
  // Values 1e9 + {4, 7, 13, 16}: the naive sum of squares loses every digit of the variance 22.5.
  const double offset = 1e9;
  Moments a, b;
  a.push(offset + 4);
  a.push(offset + 7);
  b.push(offset + 13);
  b.push(offset + 16);
  Moments m = a;
  m.merge(b);
  CHECK(m.mean == offset + 10);
  CHECK(m.variance() == Approx(22.5).epsilon(1e-12));
  CHECK(m.sample_variance() == Approx(30.0).epsilon(1e-12));
}

TEST_CASE("derived quantities", "[moments]") {
  Moments m;
  for (double v : {1.0, 2.0, 3.0, 4.0}) m.push(v);
  CHECK(m.variance() == Approx(1.25));
  CHECK(m.mean_square() == Approx(7.5));
  CHECK(m.standard_error() == Approx(std::sqrt(5.0 / 3.0 / 4.0)));
  Moments one;
  one.push(3.0);
  CHECK(std::isnan(one.standard_error()));
}
