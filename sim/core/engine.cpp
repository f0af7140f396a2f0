#include "core/engine.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "core/gemm.hpp"
#include "core/init.hpp"
#include "core/moments.hpp"
#include "core/parallel.hpp"
#include "core/random.hpp"
#include "core/transpose.hpp"

namespace selfnorm {

const std::array<StatInfo, kStatCount>& stat_catalog() {
  static const std::array<StatInfo, kStatCount> catalog = {{
      {Stat::preactivation_mean, "preactivation_mean", "mean of the pre-activations h_l", "1",
       "mean of the B*n_l entries of h_l = x_{l-1} W_l + b_l, per trial"},
      {Stat::preactivation_var, "preactivation_var", "variance of the pre-activations h_l", "1",
       "population variance of the B*n_l entries of h_l, per trial"},
      {Stat::activation_mean, "activation_mean", "mean of the activations x_l", "1",
       "mean of the B*n_l entries of x_l = f(h_l), per trial"},
      {Stat::activation_var, "activation_var", "variance of the activations x_l", "1",
       "population variance of the B*n_l entries of x_l, per trial"},
      {Stat::activation_msq, "activation_msq", "second moment of the activations x_l", "1",
       "mean of the squares of the B*n_l entries of x_l (the q of mean-field theory), per trial"},
      {Stat::unit_mean_spread, "unit_mean_spread", "spread of the per-unit means of x_l", "1",
       "variance across the n_l units of each unit's mean of x_l over the B samples, per trial; "
       "includes the sampling floor activation_var / B"},
      {Stat::grad_activation_msq, "grad_activation_msq", "mean square of dL/dx_l", "1",
       "mean of the squares of the B*n_l entries of dL/dx_l for the loss sum(x_L * g), g ~ N(0, 1), per trial"},
      {Stat::grad_preactivation_msq, "grad_preactivation_msq", "mean square of dL/dh_l", "1",
       "mean of the squares of the B*n_l entries of dL/dh_l = dL/dx_l * f'(h_l), per trial"},
      {Stat::grad_weight_msq, "grad_weight_msq", "mean square of dL/dW_l", "1",
       "mean of the squares of the n_{l-1}*n_l entries of dL/dW_l = x_{l-1}^T dL/dh_l (summed over the "
       "batch), per trial"},
  }};
  return catalog;
}

double PointResult::mean(Stat s, int layer) const {
  Moments m;
  const auto& v = per_trial[static_cast<int>(s)];
  for (std::int64_t t = 0; t < trials; ++t) m.push(v[static_cast<std::size_t>(t * depth + layer - 1)]);
  return m.mean;
}

double PointResult::sem(Stat s, int layer) const {
  Moments m;
  const auto& v = per_trial[static_cast<int>(s)];
  for (std::int64_t t = 0; t < trials; ++t) m.push(v[static_cast<std::size_t>(t * depth + layer - 1)]);
  return m.standard_error();
}

bool dropout_saturation(const Activation& activation, double& value) {
  return std::visit(
      [&](const auto& a) {
        using A = std::decay_t<decltype(a)>;
        if constexpr (std::is_same_v<A, Selu>) {
          value = -a.lambda * a.alpha;
        } else if constexpr (std::is_same_v<A, Elu> || std::is_same_v<A, Celu>) {
          value = -a.alpha;
        } else if constexpr (std::is_same_v<A, Tanh>) {
          value = -1.0;
        } else if constexpr (std::is_same_v<A, LeakyRelu> || std::is_same_v<A, Identity>) {
          return false;
        } else {
          value = 0.0;  // relu, relu6, softplus, sigmoid, gelu, silu all tend to 0
        }
        return true;
      },
      activation);
}

void alpha_dropout_affine(double q, double alpha_prime, double mu, double nu, double& a, double& b) {
  const double d = alpha_prime - mu;
  a = std::sqrt(nu / (q * ((1.0 - q) * d * d + nu)));
  b = mu - a * (q * mu + (1.0 - q) * alpha_prime);
}

namespace {

// ---------------------------------------------------------------------------------------------
// Storage

struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};

// A 64-byte aligned array of T, uninitialised.
template <class T>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(std::size_t count) : size_(count) {
    if (count == 0) return;
    // Large buffers are aligned to 2 MiB and asked to be backed by transparent huge pages: a
    // first touch then faults once per 2 MiB instead of once per 4 KiB, which on a virtual
    // machine costs several percent of a run.
    constexpr std::size_t kHuge = std::size_t(2) << 20;
    const std::size_t align = count * sizeof(T) >= 2 * kHuge ? kHuge : 64;
    const std::size_t bytes = (count * sizeof(T) + align - 1) / align * align;
    void* p = std::aligned_alloc(align, bytes);
    if (!p) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (align == kHuge) madvise(p, bytes, MADV_HUGEPAGE);
#endif
    data_.reset(static_cast<T*>(p));
  }
  T* data() const { return data_.get(); }
  std::size_t size() const { return size_; }

 private:
  std::unique_ptr<T, AlignedFree> data_;
  std::size_t size_ = 0;
};

// Sizes of everything a trial touches, derived from the spec alone.
struct Geometry {
  int depth = 0;
  std::vector<std::int64_t> n;   // widths n_0..n_L
  std::vector<std::ptrdiff_t> ld;  // row leading dimension for width n_l
  std::int64_t batch = 0;
  std::int64_t rows_per_block = 128;
  std::int64_t blocks = 0;
  std::int64_t n_max = 0;
  std::ptrdiff_t ld_max = 0;
  std::ptrdiff_t ld_batch = 0;  // leading dimension of transposed (n_l x B) matrices
  bool bias = false;
  bool weight_gradients = false;
  bool dropout = false;

  Geometry(const PointSpec& spec, std::size_t element_size) {
    depth = spec.network.depth();
    n = spec.network.widths;
    batch = spec.monte_carlo.batch;
    rows_per_block = row_block(batch);
    blocks = (batch + rows_per_block - 1) / rows_per_block;
    for (auto w : n) {
      ld.push_back(padded_ld(w, element_size));
      n_max = std::max(n_max, w);
    }
    ld_max = padded_ld(n_max, element_size);
    ld_batch = padded_ld(batch, element_size);
    bias = spec.init.has_bias();
    weight_gradients = spec.monte_carlo.weight_gradients;
    dropout = spec.alpha_dropout.enabled();
  }
  std::int64_t block_rows(std::int64_t b) const { return std::min(rows_per_block, batch - b * rows_per_block); }
};

// Rows of G^T computed per task when weight gradients are on.
constexpr std::int64_t kGradRows = 64;

// Per-block, per-layer partial statistics, merged in block order.
struct BlockLayerStats {
  Moments pre;
  Moments act;
  double grad_act_sq = 0.0;
  double grad_pre_sq = 0.0;
  std::int64_t nonfinite = 0;
  std::int64_t grad_nonfinite = 0;
};

// Everything one trial needs; reused across the trials a team runs.
template <class T>
class Workspace {
 public:
  Workspace(const Geometry& g, int ranks) : g_(g) {
    // Every array lives in one arena: one allocation, rounded to whole huge pages once rather than
    // once per matrix (per-matrix rounding wasted up to half of each 4 MiB weight matrix).
    std::size_t total = 0;
    layout(ranks, [&](std::size_t count) {
      total += round_up(count);
      return Slice{};
    });
    arena_ = Buffer<T>(total);
    T* next = arena_.data();
    layout(ranks, [&](std::size_t count) {
      const Slice slice{next, count};
      next += round_up(count);
      return slice;
    });
    const auto L = static_cast<std::size_t>(g.depth);
    colsum_offset.assign(L + 1, 0);
    for (std::size_t l = 0; l < L; ++l) colsum_offset[l + 1] = colsum_offset[l] + g.n[l + 1];
    stats.resize(static_cast<std::size_t>(g.blocks) * L);
    colsums.resize(static_cast<std::size_t>(g.blocks) * static_cast<std::size_t>(colsum_offset[L]));
    if (g.weight_gradients) {
      for (std::size_t l = 0; l < L; ++l) {
        grad_offset.push_back(grad_sq.size());
        grad_sq.resize(grad_sq.size() + static_cast<std::size_t>((g.n[l + 1] + kGradRows - 1) / kGradRows));
      }
    }
  }

  // Bytes the constructor allocates, without allocating. Counted in double, so that absurd sizes
  // (a batch of 2^40 at width 2^24) give a huge estimate instead of wrapping around.
  static double bytes(const Geometry& g, int ranks) {
    auto d = [](auto v) { return static_cast<double>(v); };
    double count = 0;
    double colsum = 0;
    for (int l = 0; l < g.depth; ++l) {
      count += d(g.n[l]) * d(g.ld[l + 1]);
      if (g.bias) count += d(g.n[l + 1]);
      count += d(g.n[l + 1]) * d(g.ld_batch);
      colsum += d(g.n[l + 1]);
    }
    if (g.weight_gradients) {
      for (int l = 0; l <= g.depth; ++l) count += d(g.batch) * d(g.ld[l]);
    } else {
      count += 2 * d(g.batch) * d(g.ld_max);
    }
    count += 2 * d(g.n_max) * d(g.ld_batch);
    count += d(ranks) * d(g.rows_per_block) * d(g.ld_max);
    if (g.weight_gradients) count += d(ranks) * d(kGradRows) * d(g.ld_max);
    return count * d(sizeof(T)) + d(g.blocks) * colsum * d(sizeof(double)) +
           d(g.blocks) * d(g.depth) * d(sizeof(BlockLayerStats));
  }

  // x_l: the activations of layer l (l = 0 is the input), B x n_l with leading dimension x_ld(l).
  T* x(int l) const { return g_.weight_gradients ? xs[static_cast<std::size_t>(l)].data() : xs[l % 2].data(); }
  // The ping-pong buffers keep one row stride for every layer: with a per-layer stride, rows of a
  // block at layer l would overlap rows of another block at layer l - 2, which a rank that is a
  // layer behind may still be reading.
  std::ptrdiff_t x_ld(int l) const { return g_.weight_gradients ? g_.ld[static_cast<std::size_t>(l)] : g_.ld_max; }
  BlockLayerStats& stat(std::int64_t block, int l) {
    return stats[static_cast<std::size_t>(block * g_.depth + l - 1)];
  }
  double* colsum(std::int64_t block, int l) {
    return colsums.data() + static_cast<std::size_t>(block) * static_cast<std::size_t>(colsum_offset.back()) +
           static_cast<std::size_t>(colsum_offset[static_cast<std::size_t>(l - 1)]);
  }

  // A piece of the arena.
  struct Slice {
    T* ptr = nullptr;
    std::size_t count = 0;
    T* data() const { return ptr; }
  };

  std::vector<Slice> weights;  // W_l at [l-1]: n_{l-1} x n_l, ld[l]
  std::vector<Slice> biases;   // b_l at [l-1]
  std::vector<Slice> deriv_t;  // f'(h_l)^T at [l-1]: n_l x B, ld_batch (times the dropout factor)
  std::vector<Slice> xs;       // activations (all layers with weight gradients, else ping-pong)
  std::array<Slice, 2> delta_t;  // dL/dx^T and dL/dh^T, ping-pong: n x B, ld_batch
  std::vector<Slice> scratch;    // per rank: one row block
  std::vector<Slice> grad_scratch;  // per rank: kGradRows rows of G^T
  std::vector<BlockLayerStats> stats;
  std::vector<double> colsums;          // per block, per layer, per unit: sum over the block's rows
  std::vector<std::int64_t> colsum_offset;
  std::vector<double> grad_sq;          // per layer, per G^T row chunk: sum of squares
  std::vector<std::size_t> grad_offset;

 private:
  // Counts rounded to whole 64-byte lines, so that every slice starts on a line.
  static std::size_t round_up(std::size_t count) {
    constexpr std::size_t line = 64 / sizeof(T);
    return (count + line - 1) / line * line;
  }

  // Assigns every slice, in a fixed order, from take(count).
  template <class Take>
  void layout(int ranks, Take&& take) {
    const Geometry& g = g_;
    const auto L = static_cast<std::size_t>(g.depth);
    weights.assign(L, Slice{});
    biases.assign(L, Slice{});
    deriv_t.assign(L, Slice{});
    for (std::size_t l = 0; l < L; ++l) {
      weights[l] = take(static_cast<std::size_t>(g.n[l] * g.ld[l + 1]));
      if (g.bias) biases[l] = take(static_cast<std::size_t>(g.n[l + 1]));
      deriv_t[l] = take(static_cast<std::size_t>(g.n[l + 1] * g.ld_batch));
    }
    xs.clear();
    if (g.weight_gradients) {
      for (std::size_t l = 0; l <= L; ++l) xs.push_back(take(static_cast<std::size_t>(g.batch * g.ld[l])));
    } else {
      for (int k = 0; k < 2; ++k) xs.push_back(take(static_cast<std::size_t>(g.batch * g.ld_max)));
    }
    for (auto& d : delta_t) d = take(static_cast<std::size_t>(g.n_max * g.ld_batch));
    scratch.clear();
    grad_scratch.clear();
    for (int r = 0; r < ranks; ++r) {
      scratch.push_back(take(static_cast<std::size_t>(g.rows_per_block * g.ld_max)));
      if (g.weight_gradients) grad_scratch.push_back(take(static_cast<std::size_t>(kGradRows * g.ld_max)));
    }
  }

  const Geometry& g_;
  Buffer<T> arena_;
};

// ---------------------------------------------------------------------------------------------
// Row kernels. Sums run over 32 independent lanes so the compiler vectorises them without
// reordering a reduction; the lanes are then combined in a fixed order.

constexpr int kLanes = 32;

inline double combine_lanes(const double* s) {
  double r[kLanes / 2];
  for (int k = 0; k < kLanes / 2; ++k) r[k] = s[k] + s[k + kLanes / 2];
  for (int w = kLanes / 4; w >= 1; w /= 2) {
    for (int k = 0; k < w; ++k) r[k] += r[k + w];
  }
  return r[0];
}

template <class T>
inline bool finite(T v) {
  return std::isfinite(v);
}

// Moments of n values from their sums of deviations from `shift`, and of squared deviations.
inline Moments moments_from_sums(std::int64_t n, double shift, double sum, double sum_sq) {
  const double nd = static_cast<double>(n);
  Moments m;
  m.count = n;
  m.mean = shift + sum / nd;
  m.m2 = std::max(0.0, sum_sq - sum * sum / nd);
  if (!std::isfinite(sum_sq)) m.m2 = sum_sq;  // keep inf/NaN visible
  return m;
}

// Moments of x[0..n) with one pass of shifted sums around x[0]: stable when the values are
// within a few standard deviations of x[0] (Chan, Golub, LeVeque 1983, "shifted data").
template <class T>
Moments row_moments(const T* x, std::int64_t n) {
  const double shift = static_cast<double>(x[0]);
  double s1[kLanes] = {};
  double s2[kLanes] = {};
  std::int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const double d = static_cast<double>(x[j + k]) - shift;
      s1[k] += d;
      s2[k] += d * d;
    }
  }
  for (int k = 0; j < n; ++j, ++k) {
    const double d = static_cast<double>(x[j]) - shift;
    s1[k] += d;
    s2[k] += d * d;
  }
  return moments_from_sums(n, shift, combine_lanes(s1), combine_lanes(s2));
}

// Sum of squares of x[0..n) in double, in lanes.
template <class T>
double row_sum_sq(const T* x, std::int64_t n) {
  double s[kLanes] = {};
  std::int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const double v = static_cast<double>(x[j + k]);
      s[k] += v * v;
    }
  }
  for (int k = 0; j < n; ++j, ++k) {
    const double v = static_cast<double>(x[j]);
    s[k] += v * v;
  }
  return combine_lanes(s);
}

// ---------------------------------------------------------------------------------------------
// One trial

struct DropoutParams {
  double keep = 1.0;
  double a = 1.0;
  double b = 0.0;
  double saturation = 0.0;
};

template <class T, class Act>
class TrialRunner {
 public:
  TrialRunner(const PointSpec& spec, const Geometry& g, const Act& act, const StreamSeed& seed,
              const DropoutParams& dropout)
      : spec_(spec), g_(g), act_(act), seed_(seed), dropout_(dropout) {}

  // Runs trial `trial` with `team`; on return (all ranks), rank 0 has written `out`.
  // `tick` is called by rank 0 after each layer pass.
  template <class Tick>
  void run(std::int64_t trial, const Team& team, Workspace<T>& ws, PointResult& out, const Tick& tick) const {
    generate_parameters(trial, team, ws);
    team.barrier();
    forward(trial, team, ws, tick);
    backward(trial, team, ws, tick);
    team.barrier();
    if (team.rank() == 0) collect(trial, ws, out);
  }

 private:
  std::uint64_t key(StreamKind kind, std::int64_t trial, int layer) const {
    return stream_key(seed_.seed, seed_.point, kind, static_cast<std::uint64_t>(trial),
                      static_cast<std::uint64_t>(layer));
  }

  // Weights and biases, split into tasks of 64 rows (or whole matrices for orthogonal) dealt
  // round-robin over the ranks. Values depend only on the stream keys.
  void generate_parameters(std::int64_t trial, const Team& team, Workspace<T>& ws) const {
    constexpr std::int64_t rows_per_task = 64;
    const bool elementwise = init_is_elementwise(spec_.init.kind);
    std::int64_t task = 0;
    for (int l = 1; l <= g_.depth; ++l) {
      const std::int64_t fan_in = g_.n[l - 1];
      const std::int64_t fan_out = g_.n[l];
      T* w = ws.weights[l - 1].data();
      const std::uint64_t wkey = key(StreamKind::weights, trial, l);
      if (elementwise) {
        for (std::int64_t r0 = 0; r0 < fan_in; r0 += rows_per_task, ++task) {
          if (!team.owns(task)) continue;
          generate_weight_rows<T>(spec_.init, wkey, fan_in, fan_out, r0, std::min(fan_in, r0 + rows_per_task), w,
                                  g_.ld[l]);
        }
      } else if (team.owns(task++)) {
        generate_weights<T>(spec_.init, wkey, fan_in, fan_out, w, g_.ld[l]);
      }
      if (g_.bias && team.owns(task++)) {
        fill_normal<T>(key(StreamKind::biases, trial, l), 0, static_cast<std::size_t>(fan_out),
                       ws.biases[l - 1].data(), static_cast<T>(spec_.init.bias_mean),
                       static_cast<T>(std::sqrt(spec_.init.bias_variance)));
      }
    }
  }

  template <class Tick>
  void forward(std::int64_t trial, const Team& team, Workspace<T>& ws, const Tick& tick) const {
    const std::uint64_t input_key = key(StreamKind::inputs, trial, 0);
    for (std::int64_t b = 0; b < g_.blocks; ++b) {
      if (!team.owns(b)) continue;
      generate_inputs<T>(spec_.input, input_key, g_.n[0], b * g_.rows_per_block, g_.block_rows(b),
                         ws.x(0) + b * g_.rows_per_block * ws.x_ld(0), ws.x_ld(0));
    }
    T* scratch = ws.scratch[static_cast<std::size_t>(team.rank())].data();
    for (int l = 1; l <= g_.depth; ++l) {
      const std::int64_t n_in = g_.n[l - 1];
      const std::int64_t n_out = g_.n[l];
      const std::ptrdiff_t ld_in = ws.x_ld(l - 1);
      const std::ptrdiff_t ld_out = ws.x_ld(l);
      const T* w = ws.weights[l - 1].data();
      const T* bias = g_.bias ? ws.biases[l - 1].data() : nullptr;
      const std::uint64_t dropout_key = key(StreamKind::dropout, trial, l);
      for (std::int64_t b = 0; b < g_.blocks; ++b) {
        if (!team.owns(b)) continue;
        const std::int64_t rows = g_.block_rows(b);
        const T* x_in = ws.x(l - 1) + b * g_.rows_per_block * ld_in;
        T* h = ws.x(l) + b * g_.rows_per_block * ld_out;
        gemm<T>(rows, n_out, n_in, x_in, ld_in, w, g_.ld[l], h, ld_out, GemmUpdate::overwrite);
        BlockLayerStats& st = ws.stat(b, l);
        st = BlockLayerStats{};
        double* colsum = ws.colsum(b, l);
        std::fill(colsum, colsum + n_out, 0.0);
        for (std::int64_t r = 0; r < rows; ++r) {
          T* hr = h + r * ld_out;
          T* dr = scratch + r * g_.ld_max;
          if (bias) {
            for (std::int64_t j = 0; j < n_out; ++j) hr[j] += bias[j];
          }
          st.pre.merge(row_moments(hr, n_out));
          if (g_.dropout) {
            st.nonfinite += activate_row(hr, dr, n_out);
            apply_dropout_row(dropout_key, b * g_.rows_per_block + r, hr, dr, n_out);
            st.act.merge(row_moments(hr, n_out));
            for (std::int64_t j = 0; j < n_out; ++j) colsum[j] += static_cast<double>(hr[j]);
          } else {
            st.nonfinite += activate_row_with_stats(hr, dr, n_out, colsum, st.act);
          }
        }
        transpose(scratch, g_.ld_max, rows, n_out, ws.deriv_t[l - 1].data() + b * g_.rows_per_block, g_.ld_batch);
      }
      if (team.rank() == 0) tick();
    }
  }

  // x = f(h) in place, d = f'(h); returns the number of entries where h or x is not finite.
  std::int64_t activate_row(T* h, T* d, std::int64_t n) const {
    std::int64_t bad = 0;
    for (std::int64_t j = 0; j < n; ++j) {
      const T v = h[j];
      T y, dy;
      act_.eval(v, y, dy);
      // Bitwise on ints, not &&: no branch, so the loop vectorises.
      bad += 1 - (static_cast<int>(finite(v)) & static_cast<int>(finite(y)));
      h[j] = y;
      d[j] = dy;
    }
    return bad;
  }

  // activate_row, the moments of x merged into `act` and x added to `colsum`, in one pass over
  // the row (the same shifted sums as row_moments).
  std::int64_t activate_row_with_stats(T* h, T* d, std::int64_t n, double* colsum, Moments& act) const {
    T y0, d0;
    act_.eval(h[0], y0, d0);
    const double shift = static_cast<double>(y0);
    double s1[kLanes] = {};
    double s2[kLanes] = {};
    std::int64_t bad = 0;
    // Chunks of kLanes entries: the activation over the chunk, then its sums, two simple loops
    // the compiler vectorises (one fused loop with both it does not).
    for (std::int64_t j0 = 0; j0 < n; j0 += kLanes) {
      const int m = static_cast<int>(std::min<std::int64_t>(kLanes, n - j0));
      T* hc = h + j0;
      T* dc = d + j0;
      double* cc = colsum + j0;
      if (m == kLanes) {
        bad += activate_row(hc, dc, kLanes);
        for (int k = 0; k < kLanes; ++k) {
          const double yd = static_cast<double>(hc[k]);
          const double dev = yd - shift;
          s1[k] += dev;
          s2[k] += dev * dev;
          cc[k] += yd;
        }
      } else {
        bad += activate_row(hc, dc, m);
        for (int k = 0; k < m; ++k) {
          const double yd = static_cast<double>(hc[k]);
          const double dev = yd - shift;
          s1[k] += dev;
          s2[k] += dev * dev;
          cc[k] += yd;
        }
      }
    }
    act.merge(moments_from_sums(n, shift, combine_lanes(s1), combine_lanes(s2)));
    return bad;
  }

  // Alpha dropout on one row (sample `sample`): keep with probability q, else the saturation
  // value; then a x + b. The derivative picks up a (kept) or 0 (dropped).
  void apply_dropout_row(std::uint64_t dropout_key, std::int64_t sample, T* x, T* d, std::int64_t n) const {
    const T keep = static_cast<T>(dropout_.keep);
    const T a = static_cast<T>(dropout_.a);
    const T b = static_cast<T>(dropout_.b);
    const T dropped = static_cast<T>(dropout_.a * dropout_.saturation + dropout_.b);
    // Uniforms in chunks on the stack, element sample * n + j of the dropout stream.
    constexpr std::int64_t chunk = 256;
    T buf[chunk];
    for (std::int64_t j0 = 0; j0 < n; j0 += chunk) {
      const std::int64_t m = std::min(chunk, n - j0);
      fill_uniform<T>(dropout_key, static_cast<std::uint64_t>(sample * n + j0), static_cast<std::size_t>(m), buf,
                      T(0), T(1));
      for (std::int64_t j = 0; j < m; ++j) {
        const bool kept = buf[j] < keep;
        x[j0 + j] = kept ? a * x[j0 + j] + b : dropped;
        d[j0 + j] = kept ? a * d[j0 + j] : T(0);
      }
    }
  }

  template <class Tick>
  void backward(std::int64_t trial, const Team& team, Workspace<T>& ws, const Tick& tick) const {
    const int L = g_.depth;
    const std::ptrdiff_t ldb = g_.ld_batch;
    T* scratch = ws.scratch[static_cast<std::size_t>(team.rank())].data();
    // Upstream gradient g = dL/dx_L, element sample * n_L + j of its stream, stored transposed.
    const std::uint64_t upstream_key = key(StreamKind::upstream, trial, L);
    for (std::int64_t b = 0; b < g_.blocks; ++b) {
      if (!team.owns(b)) continue;
      const std::int64_t rows = g_.block_rows(b);
      for (std::int64_t r = 0; r < rows; ++r) {
        fill_normal<T>(upstream_key, static_cast<std::uint64_t>((b * g_.rows_per_block + r) * g_.n[L]),
                       static_cast<std::size_t>(g_.n[L]), scratch + r * g_.ld_max, T(0), T(1));
      }
      transpose(scratch, g_.ld_max, rows, g_.n[L], ws.delta_t[L % 2].data() + b * g_.rows_per_block, ldb);
    }
    for (int l = L; l >= 1; --l) {
      const std::int64_t n_out = g_.n[l];
      const std::int64_t n_in = g_.n[l - 1];
      T* delta = ws.delta_t[l % 2].data();  // dL/dx_l^T in, dL/dh_l^T out
      T* next = ws.delta_t[(l - 1) % 2].data();
      const T* deriv = ws.deriv_t[l - 1].data();
      for (std::int64_t b = 0; b < g_.blocks; ++b) {
        if (!team.owns(b)) continue;
        const std::int64_t rows = g_.block_rows(b);
        const std::int64_t c0 = b * g_.rows_per_block;
        BlockLayerStats& st = ws.stat(b, l);
        for (std::int64_t j = 0; j < n_out; ++j) {
          T* dr = delta + j * ldb + c0;
          const T* fr = deriv + j * ldb + c0;
          // dL/dh = dL/dx * f'(h) in place, with both sums of squares, in one pass.
          double sx[kLanes] = {};
          double sh[kLanes] = {};
          std::int64_t bad = 0;
          auto step = [&](std::int64_t i, int k) {
            const T gx = dr[i];
            const T gh = gx * fr[i];
            bad += static_cast<std::int64_t>(!finite(gh));
            dr[i] = gh;
            const double a = static_cast<double>(gx), c = static_cast<double>(gh);
            sx[k] += a * a;
            sh[k] += c * c;
          };
          std::int64_t i = 0;
          for (; i + kLanes <= rows; i += kLanes) {
            for (int k = 0; k < kLanes; ++k) step(i + k, k);
          }
          for (int k = 0; i < rows; ++i, ++k) step(i, k);
          st.grad_act_sq += combine_lanes(sx);
          st.grad_pre_sq += combine_lanes(sh);
          st.grad_nonfinite += bad;
        }
        if (l > 1) {
          gemm<T>(n_in, rows, n_out, ws.weights[l - 1].data(), g_.ld[l], delta + c0, ldb, next + c0, ldb,
                  GemmUpdate::overwrite);
        }
      }
      if (g_.weight_gradients) weight_gradient(l, team, ws, delta);
      if (team.rank() == 0) tick();
    }
  }

  // Sum of squares of G_l^T = (dL/dh_l)^T x_{l-1} (n_l x n_{l-1}), in chunks of kGradRows rows
  // dealt over the ranks. Needs every block's dL/dh_l, hence the barriers.
  void weight_gradient(int l, const Team& team, Workspace<T>& ws, const T* delta) const {
    team.barrier();
    const std::int64_t n_out = g_.n[l];
    const std::int64_t n_in = g_.n[l - 1];
    T* gbuf = ws.grad_scratch[static_cast<std::size_t>(team.rank())].data();
    const std::size_t offset = ws.grad_offset[static_cast<std::size_t>(l - 1)];
    for (std::int64_t c = 0; c * kGradRows < n_out; ++c) {
      if (!team.owns(c)) continue;
      const std::int64_t i0 = c * kGradRows;
      const std::int64_t rows = std::min(kGradRows, n_out - i0);
      gemm<T>(rows, n_in, g_.batch, delta + i0 * g_.ld_batch, g_.ld_batch, ws.x(l - 1), ws.x_ld(l - 1), gbuf,
              g_.ld_max, GemmUpdate::overwrite);
      double sq = 0.0;
      for (std::int64_t i = 0; i < rows; ++i) sq += row_sum_sq(gbuf + i * g_.ld_max, n_in);
      ws.grad_sq[offset + static_cast<std::size_t>(c)] = sq;
    }
    team.barrier();
  }

  // Merges the blocks' partial statistics in block order into trial `trial` of `out`.
  void collect(std::int64_t trial, Workspace<T>& ws, PointResult& out) const {
    constexpr double nan = std::numeric_limits<double>::quiet_NaN();
    // The backward pass runs through every layer, so one non-finite forward entry anywhere makes
    // every gradient of the trial meaningless; relu'(NaN) = 0 would otherwise turn them into
    // finite zeros that look like data.
    bool forward_blew_up = false;
    for (int l = 1; l <= g_.depth && !forward_blew_up; ++l) {
      for (std::int64_t b = 0; b < g_.blocks; ++b) forward_blew_up = forward_blew_up || ws.stat(b, l).nonfinite > 0;
    }
    std::vector<double> unit_sum;
    for (int l = 1; l <= g_.depth; ++l) {
      const std::int64_t n_out = g_.n[l];
      BlockLayerStats total;
      unit_sum.assign(static_cast<std::size_t>(n_out), 0.0);
      for (std::int64_t b = 0; b < g_.blocks; ++b) {
        const BlockLayerStats& s = ws.stat(b, l);
        total.pre.merge(s.pre);
        total.act.merge(s.act);
        total.grad_act_sq += s.grad_act_sq;
        total.grad_pre_sq += s.grad_pre_sq;
        total.nonfinite += s.nonfinite;
        total.grad_nonfinite += s.grad_nonfinite;
        const double* cs = ws.colsum(b, l);
        for (std::int64_t j = 0; j < n_out; ++j) unit_sum[static_cast<std::size_t>(j)] += cs[j];
      }
      // Variance across units of the per-unit means (two passes; n_out values).
      const double inv_batch = 1.0 / static_cast<double>(g_.batch);
      double mean_of_means = 0.0;
      for (double s : unit_sum) mean_of_means += s * inv_batch;
      mean_of_means /= static_cast<double>(n_out);
      double spread = 0.0;
      for (double s : unit_sum) spread += (s * inv_batch - mean_of_means) * (s * inv_batch - mean_of_means);
      spread /= static_cast<double>(n_out);

      const double entries = static_cast<double>(g_.batch * n_out);
      const bool forward_ok = total.nonfinite == 0;
      const bool backward_ok = total.grad_nonfinite == 0 && !forward_blew_up;
      auto put = [&](Stat s, double v, bool ok) {
        out.per_trial[static_cast<int>(s)][static_cast<std::size_t>(trial * g_.depth + l - 1)] = ok ? v : nan;
      };
      put(Stat::preactivation_mean, total.pre.mean, forward_ok);
      put(Stat::preactivation_var, total.pre.variance(), forward_ok);
      put(Stat::activation_mean, total.act.mean, forward_ok);
      put(Stat::activation_var, total.act.variance(), forward_ok);
      put(Stat::activation_msq, total.act.mean_square(), forward_ok);
      put(Stat::unit_mean_spread, spread, forward_ok);
      put(Stat::grad_activation_msq, total.grad_act_sq / entries, backward_ok);
      put(Stat::grad_preactivation_msq, total.grad_pre_sq / entries, backward_ok);
      if (g_.weight_gradients) {
        const std::size_t offset = ws.grad_offset[static_cast<std::size_t>(l - 1)];
        const std::int64_t chunks = (n_out + kGradRows - 1) / kGradRows;
        double sq = 0.0;
        for (std::int64_t c = 0; c < chunks; ++c) sq += ws.grad_sq[offset + static_cast<std::size_t>(c)];
        put(Stat::grad_weight_msq, sq / static_cast<double>(n_out * g_.n[l - 1]), backward_ok);
      }
      const auto at = static_cast<std::size_t>(trial * g_.depth + l - 1);
      out.nonfinite_per_trial[at] = total.nonfinite;
      out.grad_nonfinite_per_trial[at] = total.grad_nonfinite;
    }
  }

  const PointSpec& spec_;
  const Geometry& g_;
  const Act& act_;
  StreamSeed seed_;
  DropoutParams dropout_;
};

void check_spec(const PointSpec& spec) {
  if (spec.network.depth() < 1) throw std::invalid_argument("network depth must be >= 1");
  for (auto w : spec.network.widths) {
    if (w < 1) throw std::invalid_argument("network widths must be >= 1");
  }
  if (spec.monte_carlo.trials < 1) throw std::invalid_argument("monte_carlo.trials must be >= 1");
  if (spec.monte_carlo.batch < 1) throw std::invalid_argument("monte_carlo.batch must be >= 1");
  if (spec.alpha_dropout.enabled()) {
    double s;
    if (!dropout_saturation(spec.activation, s)) {
      throw std::invalid_argument("alpha dropout needs an activation with a finite limit at -inf");
    }
    if (!(spec.alpha_dropout.keep_probability > 0.0)) {
      throw std::invalid_argument("alpha_dropout.keep_probability must be in (0, 1]");
    }
  }
}

ParallelMode resolve_mode(const Geometry& g, std::int64_t trials, const RunOptions& options) {
  if (options.parallel != ParallelMode::automatic) return options.parallel;
  const std::int64_t t = std::max(1, options.threads);
  if (t == 1) return ParallelMode::samples;
  auto balance = [t](std::int64_t tasks) {
    const std::int64_t rounds = (tasks + t - 1) / t;
    return static_cast<double>(tasks) / static_cast<double>(rounds * t);
  };
  // Samples mode shares one set of buffers; prefer it unless trials balance the load better.
  return balance(g.blocks) >= balance(trials) ? ParallelMode::samples : ParallelMode::trials;
}

// Bytes as a size_t, SIZE_MAX for counts beyond it.
std::size_t saturating_bytes(double bytes) {
  constexpr auto max = std::numeric_limits<std::size_t>::max();
  return bytes >= static_cast<double>(max) ? max : static_cast<std::size_t>(bytes);
}

template <class T>
WorkEstimate estimate_typed(const PointSpec& spec, const RunOptions& options) {
  const Geometry g(spec, sizeof(T));
  WorkEstimate e;
  e.mode = resolve_mode(g, spec.monte_carlo.trials, options);
  const int threads = std::max(1, options.threads);
  double per_trial = 0.0;
  for (int l = 1; l <= g.depth; ++l) {
    const double mn = static_cast<double>(g.n[l - 1]) * static_cast<double>(g.n[l]);
    per_trial += 2.0 * static_cast<double>(g.batch) * mn;                      // forward
    if (l > 1) per_trial += 2.0 * static_cast<double>(g.batch) * mn;           // backward to x_{l-1}
    if (g.weight_gradients) per_trial += 2.0 * static_cast<double>(g.batch) * mn;  // dL/dW_l
  }
  e.gemm_flop = per_trial * static_cast<double>(spec.monte_carlo.trials);
  double buffers;
  if (e.mode == ParallelMode::samples) {
    e.threads_used = static_cast<int>(std::min<std::int64_t>(threads, g.blocks));
    buffers = Workspace<T>::bytes(g, e.threads_used);
  } else {
    e.threads_used = static_cast<int>(std::min<std::int64_t>(threads, spec.monte_carlo.trials));
    buffers = static_cast<double>(e.threads_used) * Workspace<T>::bytes(g, 1);
  }
  // PointResult: kStatCount statistics and two non-finite counts per trial and layer.
  const double results = static_cast<double>(spec.monte_carlo.trials) * static_cast<double>(g.depth) *
                         (kStatCount * sizeof(double) + 2 * sizeof(std::int64_t));
  e.buffer_bytes = saturating_bytes(buffers);
  e.result_bytes = saturating_bytes(results);
  return e;
}

template <class T, class Act>
PointResult simulate_typed(const PointSpec& spec, const Act& act, const StreamSeed& seed, const RunOptions& options,
                           const ProgressCallback& progress) {
  // Sizes whose byte counts do not fit in the address space would overflow the index arithmetic
  // below; they are refused before anything is allocated.
  const WorkEstimate estimate = estimate_typed<T>(spec, options);
  if (estimate.total_bytes() == std::numeric_limits<std::size_t>::max()) {
    throw std::length_error("the point needs more memory than the address space holds; reduce monte_carlo.batch, "
                            "monte_carlo.trials or the widths");
  }
  const Geometry g(spec, sizeof(T));
  const std::int64_t trials = spec.monte_carlo.trials;
  PointResult out;
  out.depth = g.depth;
  out.trials = trials;
  out.has_weight_gradients = g.weight_gradients;
  for (auto& v : out.per_trial) {
    v.assign(static_cast<std::size_t>(trials * g.depth), std::numeric_limits<double>::quiet_NaN());
  }
  out.nonfinite_per_trial.assign(static_cast<std::size_t>(trials * g.depth), 0);
  out.grad_nonfinite_per_trial.assign(static_cast<std::size_t>(trials * g.depth), 0);

  DropoutParams dropout;
  if (spec.alpha_dropout.enabled()) {
    dropout.keep = spec.alpha_dropout.keep_probability;
    dropout_saturation(spec.activation, dropout.saturation);
    alpha_dropout_affine(dropout.keep, dropout.saturation, spec.alpha_dropout.fixed_point_mean,
                         spec.alpha_dropout.fixed_point_variance, dropout.a, dropout.b);
  }
  const TrialRunner<T, Act> runner(spec, g, act, seed, dropout);

  std::atomic<std::int64_t> layers_done{0};
  const std::int64_t layers_total = trials * 2 * g.depth;
  auto last_report = std::chrono::steady_clock::now();
  auto report = [&](bool force) {
    if (!progress || !is_main_thread()) return;
    const auto now = std::chrono::steady_clock::now();
    if (!force && now - last_report < std::chrono::milliseconds(50)) return;
    last_report = now;
    progress(layers_done.load(std::memory_order_relaxed), layers_total);
  };
  auto tick = [&] {
    layers_done.fetch_add(1, std::memory_order_relaxed);
    report(false);
  };

  const int threads = std::max(1, options.threads);
  if (resolve_mode(g, trials, options) == ParallelMode::samples) {
    const int team_size = static_cast<int>(std::min<std::int64_t>(threads, g.blocks));
    Workspace<T> ws(g, team_size);
    for (std::int64_t t = 0; t < trials; ++t) {
      run_team(team_size, [&](const Team& team) { runner.run(t, team, ws, out, tick); });
    }
  } else {
    const int workers = static_cast<int>(std::min<std::int64_t>(threads, trials));
    std::vector<std::unique_ptr<Workspace<T>>> spaces(static_cast<std::size_t>(workers));
    for (auto& s : spaces) s = std::make_unique<Workspace<T>>(g, 1);
    run_tasks(workers, trials, [&](std::int64_t t, const Team& solo) {
      runner.run(t, solo, *spaces[static_cast<std::size_t>(t % workers)], out, tick);
    });
  }
  report(true);

  // Totals over trials, summed in trial order.
  out.nonfinite_count.assign(static_cast<std::size_t>(g.depth), 0);
  out.grad_nonfinite_count.assign(static_cast<std::size_t>(g.depth), 0);
  for (std::int64_t t = 0; t < trials; ++t) {
    for (int l = 0; l < g.depth; ++l) {
      const auto at = static_cast<std::size_t>(t * g.depth + l);
      out.nonfinite_count[static_cast<std::size_t>(l)] += out.nonfinite_per_trial[at];
      out.grad_nonfinite_count[static_cast<std::size_t>(l)] += out.grad_nonfinite_per_trial[at];
    }
  }
  for (int l = 1; l <= g.depth; ++l) {
    if (out.nonfinite_count[static_cast<std::size_t>(l - 1)] > 0) {
      out.first_nonfinite_layer = l;
      break;
    }
  }
  return out;
}

}  // namespace

PointResult simulate_point(const PointSpec& spec, const StreamSeed& seed, const RunOptions& options,
                           const ProgressCallback& progress) {
  check_spec(spec);
  return std::visit(
      [&](const auto& act) {
        if (spec.precision == Precision::float64) return simulate_typed<double>(spec, act, seed, options, progress);
        return simulate_typed<float>(spec, act, seed, options, progress);
      },
      spec.activation);
}

WorkEstimate estimate_work(const PointSpec& spec, const RunOptions& options) {
  check_spec(spec);
  if (spec.precision == Precision::float64) return estimate_typed<double>(spec, options);
  return estimate_typed<float>(spec, options);
}

std::string_view to_string(Precision p) { return p == Precision::float64 ? "float64" : "float32"; }

std::string_view to_string(InitKind k) {
  switch (k) {
    case InitKind::lecun_normal: return "lecun_normal";
    case InitKind::lecun_uniform: return "lecun_uniform";
    case InitKind::he_normal: return "he_normal";
    case InitKind::glorot_normal: return "glorot_normal";
    case InitKind::orthogonal: return "orthogonal";
    case InitKind::truncated_normal: return "truncated_normal";
  }
  return "?";
}

std::string_view to_string(InputDistribution d) { return d == InputDistribution::uniform ? "uniform" : "normal"; }

}  // namespace selfnorm
