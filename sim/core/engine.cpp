#include "core/engine.hpp"

#include <algorithm>
#include <atomic>
#include <cassert>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>

#include <sys/mman.h>

#include "core/amx.hpp"
#include "core/gemm.hpp"
#include "core/init.hpp"
#include "core/moments.hpp"
#include "core/panel_rows.hpp"
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
       "mean of the squares of the B*n_l entries of x_l, per trial (s_w^2 times it, plus s_b^2, is the next "
       "layer's pre-activation variance, the q of mean-field theory and of theory_q_star)"},
      {Stat::unit_mean_spread, "unit_mean_spread", "spread of the per-unit means of x_l", "1",
       "variance across the n_l units of each unit's mean of x_l over the B samples, per trial; "
       "includes the sampling floor activation_var / B"},
      {Stat::grad_activation_msq, "grad_activation_msq", "mean square of dL/dx_l", "1",
       "mean of the squares of the B*n_l entries of dL/dx_l for the loss sum(x_L * g), g ~ N(0, 1), per trial; "
       "NaN in a trial with an inf/NaN entry of dL/dh_l here or of h or x at any layer (first_nonfinite_layer)"},
      {Stat::grad_preactivation_msq, "grad_preactivation_msq", "mean square of dL/dh_l", "1",
       "mean of the squares of the B*n_l entries of dL/dh_l = dL/dx_l * f'(h_l), per trial; NaN in a trial with "
       "an inf/NaN entry of dL/dh_l here or of h or x at any layer (first_nonfinite_layer)"},
      {Stat::grad_weight_msq, "grad_weight_msq", "mean square of dL/dW_l", "1",
       "mean of the squares of the n_{l-1}*n_l entries of dL/dW_l = x_{l-1}^T dL/dh_l (summed over the "
       "batch), per trial; NaN in a trial with an inf/NaN entry of dL/dh_l here or of h or x at any layer "
       "(first_nonfinite_layer)"},
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

// Large blocks freed by one point, kept for the next. The points of a sweep mostly have the same
// shapes, hence the same buffers: taking the previous point's block back saves the first touch of
// every page (a page fault and the zeroing of the page each: 4-5% of an alpha-lambda sweep's
// time). A block is reused only for a request of at least half its size, and the kept blocks are
// freed before any fresh allocation, so a run never holds more memory than it did without them.
class BlockCache {
 public:
  static BlockCache& instance() {
    static BlockCache cache;
    return cache;
  }
  // A block of at least `bytes` with alignment `align`: a kept one, else a fresh one.
  void* take(std::size_t bytes, std::size_t align) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto best = blocks_.end();
      for (auto it = blocks_.begin(); it != blocks_.end(); ++it) {
        const bool fits = it->align == align && it->bytes >= bytes && it->bytes <= 2 * bytes;
        if (fits && (best == blocks_.end() || it->bytes < best->bytes)) best = it;
      }
      if (best != blocks_.end()) {
        void* p = best->ptr;
        blocks_.erase(best);
        return p;
      }
      for (const Block& b : blocks_) std::free(b.ptr);
      blocks_.clear();
    }
    return std::aligned_alloc(align, bytes);
  }
  // Keeps a block of `bytes` (as allocated by take) for a later request, or frees it.
  void give(void* p, std::size_t bytes, std::size_t align) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (blocks_.size() < kKept) {
      blocks_.push_back({p, bytes, align});
    } else {
      std::free(p);
    }
  }
  ~BlockCache() {
    for (const Block& b : blocks_) std::free(b.ptr);
  }

 private:
  struct Block {
    void* ptr;
    std::size_t bytes;
    std::size_t align;
  };
  static constexpr std::size_t kKept = 8;  // one arena per worker in trials mode, up to 8 workers
  std::mutex mutex_;
  std::vector<Block> blocks_;
};

// Gives a block back: to BlockCache if it came from there (2 MiB aligned), else to free().
struct BlockRelease {
  std::size_t bytes = 0;
  std::size_t align = 64;
  void operator()(void* p) const {
    if (align == 64) {
      std::free(p);
    } else {
      BlockCache::instance().give(p, bytes, align);
    }
  }
};

// A 64-byte aligned array of T, uninitialised (a reused block holds the previous point's data).
template <class T>
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(std::size_t count) : size_(count) {
    if (count == 0) return;
    // Large buffers are aligned to 2 MiB, so that a system that backs memory with transparent
    // huge pages by default can. They are not asked for huge pages (MADV_HUGEPAGE): on the
    // virtual machines selfnorm is measured on, a first touch of huge pages ran 3-6 times slower
    // than of 4 KiB pages (0.7-1.3 s against 0.2-0.4 s for 512 MiB), and the products gained
    // nothing from them.
    constexpr std::size_t kHuge = std::size_t(2) << 20;
    const std::size_t align = count * sizeof(T) >= 2 * kHuge ? kHuge : 64;
    const std::size_t bytes = (count * sizeof(T) + align - 1) / align * align;
    void* p = align == kHuge ? BlockCache::instance().take(bytes, align) : std::aligned_alloc(align, bytes);
    if (!p) throw std::bad_alloc();
    data_ = std::unique_ptr<T, BlockRelease>(static_cast<T*>(p), BlockRelease{bytes, align});
  }
  T* data() const { return data_.get(); }
  std::size_t size() const { return size_; }

  // Touches every page of share `part` of `parts`, so that the first touches (a page fault and
  // the zeroing of a fresh page each) are spread over the team before the work starts, instead
  // of falling on whichever rank reaches a page first.
  void touch(int part, int parts) const {
    constexpr std::size_t kPage = 4096;
    const std::size_t bytes = size_ * sizeof(T);
    const std::size_t pages = (bytes + kPage - 1) / kPage;
    auto* base = reinterpret_cast<unsigned char*>(data_.get());
    const std::size_t p0 = pages * static_cast<std::size_t>(part) / static_cast<std::size_t>(parts);
    const std::size_t p1 = pages * static_cast<std::size_t>(part + 1) / static_cast<std::size_t>(parts);
#if defined(MADV_POPULATE_WRITE)
    // The kernel populates the share in one call, without a fault per page: 0.15 s per GiB on
    // 2 threads against 0.22 s for the loop below. Large buffers start on a page (2 MiB aligned)
    // and are allocated in whole 2 MiB, so the share's pages are all theirs. The loop stays for
    // the rest, and for kernels older than Linux 5.14 (EINVAL).
    if (reinterpret_cast<std::uintptr_t>(base) % kPage == 0 && p1 > p0 &&
        madvise(base + p0 * kPage, (p1 - p0) * kPage, MADV_POPULATE_WRITE) == 0) {
      return;
    }
#endif
    for (std::size_t p = p0; p < p1; ++p) base[p * kPage] = 0;
  }

 private:
  std::unique_ptr<T, BlockRelease> data_;
  std::size_t size_ = 0;
};

// Sizes and layouts of everything a trial touches, derived from the spec alone.
//
// Matrices are unit-major (a row per unit, the samples along it), in the layouts of gemm.hpp:
//   W_l^T          strips of kStrip units, each k-major over the inputs; the inputs are rounded up
//                  to a multiple of kStrip with zero rows, so that the same strips, read as panels
//                  of width kStrip, are W_l for the backward product;
//   X_l^T, dL/dH_l^T  the whole batch in panels of kPanel samples; row block b owns panels
//                  [b R / kPanel, ...), and the last panel's columns past B are zeros;
//   f'(h_l)        per row block, n_l rows of R samples.
// With the bf16x6 products (amx.hpp), the products read split copies instead: W_l^T for the
// forward product (two buffers, ping-pong by layer), W_l for the backward one (per layer, kept for
// the backward pass), and X_l^T and dL/dH_l^T of the whole batch (ping-pong), written next to the
// float32 panels. Elementwise initialisers then draw W_l^T a group of kSplitGroup strips at a time
// into a rank's own buffer and split it from there; the float32 strips are never stored.
static_assert(row_block(1) % kPanel<float> == 0 && row_block(1) % kPanel<double> == 0,
              "row blocks must start on a panel");

// Strips of W_l^T drawn and split together: 96 outputs, 6 row tiles of W_l^T and 3 chunks of W_l.
inline constexpr std::int64_t kSplitGroup = 8;
static_assert(kSplitGroup * kStrip % amx::kTileRows == 0 && kSplitGroup * kStrip % amx::kChunk == 0,
              "a group of strips must hold whole tiles of both split copies");

struct Geometry {
  int depth = 0;
  std::vector<std::int64_t> n;  // widths n_0..n_L
  std::int64_t batch = 0;
  std::int64_t rows_per_block = 128;
  std::int64_t blocks = 0;
  std::int64_t n_max = 0;
  std::int64_t panel = 0;             // kPanel<T>: samples per panel
  std::int64_t panels = 0;            // panels of the whole batch
  std::int64_t panels_per_block = 0;  // R / panel
  std::ptrdiff_t panel_stride = 0;    // of the batch's panels: n_max rounded up to kStrip rows, padded
  std::vector<std::int64_t> strips;   // ceil(n_l / kStrip), at [l - 1]
  std::vector<std::ptrdiff_t> strip_stride;  // of W_l^T, at [l - 1]
  std::ptrdiff_t ld_rows = 0;         // leading dimension of sample-major rows of n_max values
  std::ptrdiff_t ld_units = 0;        // leading dimension of unit-major rows of R samples
  std::int64_t unit_panels = 0;       // ceil(n_max / panel): X_{l-1} in panels of units (dL/dW)
  std::ptrdiff_t unit_panel_stride = 0;
  bool bias = false;
  bool weight_gradients = false;
  bool dropout = false;
  bool amx = false;                   // bf16x6 products
  bool split_as_drawn = false;        // amx, elementwise initialiser: W_l split as drawn, never stored
  std::ptrdiff_t split_plane = 0;     // uint16_t per plane of a panel of a split batch (amx::SplitB)
  double split_fwd_size = 0;          // uint16_t of the largest split W_l^T

  Geometry(const PointSpec& spec, std::size_t element_size, bool use_amx) {
    depth = spec.network.depth();
    n = spec.network.widths;
    batch = spec.monte_carlo.batch;
    rows_per_block = row_block(batch);
    blocks = (batch + rows_per_block - 1) / rows_per_block;
    for (auto w : n) n_max = std::max(n_max, w);
    panel = 128 / static_cast<std::int64_t>(element_size);
    panels = (batch + panel - 1) / panel;
    panels_per_block = rows_per_block / panel;
    panel_stride = padded_ld(round_up_to_strip(n_max) * panel, element_size);
    for (int l = 1; l <= depth; ++l) {
      strips.push_back((n[l] + kStrip - 1) / kStrip);
      strip_stride.push_back(padded_ld(round_up_to_strip(n[l - 1]) * kStrip, element_size));
    }
    ld_rows = padded_ld(n_max, element_size);
    ld_units = padded_ld(rows_per_block, element_size);
    unit_panels = (n_max + panel - 1) / panel;
    unit_panel_stride = padded_ld(batch * panel, element_size);
    bias = spec.init.has_bias();
    weight_gradients = spec.monte_carlo.weight_gradients;
    dropout = spec.alpha_dropout.enabled();
    amx = use_amx;
    if (amx) {
      split_as_drawn = init_is_elementwise(spec.init.kind);
      split_plane = amx::b_plane_stride(n_max);
      for (int l = 1; l <= depth; ++l) split_fwd_size = std::max(split_fwd_size, amx::a_size(n[l], n[l - 1]));
    }
  }
  // Sizes of the split copies in uint16_t, counted in double like Workspace::bytes, so that absurd
  // shapes give a huge estimate instead of overflowing: a whole batch, and W_l for the backward
  // product (none for l = 1, which has none).
  double split_batch_size() const {
    return static_cast<double>(panels) * amx::kPlanes * static_cast<double>(split_plane);
  }
  double split_bwd_size(int l) const { return l > 1 ? amx::a_size(n[l - 1], n[l]) : 0.0; }
  static std::int64_t round_up_to_strip(std::int64_t v) { return (v + kStrip - 1) / kStrip * kStrip; }
  std::int64_t block_rows(std::int64_t b) const { return std::min(rows_per_block, batch - b * rows_per_block); }
  std::int64_t block_panels(std::int64_t b) const { return (block_rows(b) + panel - 1) / panel; }
  std::int64_t first_panel(std::int64_t b) const { return b * panels_per_block; }
  // Chunks of kBlockRows rows of dL/dW_l^T, the unit of the weight-gradient sums.
  std::int64_t grad_chunks(int l) const { return (n[static_cast<std::size_t>(l)] + kBlockRows - 1) / kBlockRows; }
};

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
  // A piece of the arena.
  struct Slice {
    T* ptr = nullptr;
    std::size_t count = 0;
  };

  Workspace(const Geometry& g, int ranks) : g_(g) {
    // Every array lives in one arena: one allocation, each slice starting on a cache line.
    std::size_t total = 0;
    assign(g, ranks, [&](double count) {
      total += round_up(static_cast<std::size_t>(count));
      return Slice{};
    }, nullptr);
    arena_ = Buffer<T>(total);
    T* next = arena_.data();
    assign(g, ranks, [&](double count) {
      const auto c = static_cast<std::size_t>(count);
      const Slice slice{next, c};
      next += round_up(c);
      return slice;
    }, this);
    const auto L = static_cast<std::size_t>(g.depth);
    colsum_offset.assign(L + 1, 0);
    for (std::size_t l = 0; l < L; ++l) colsum_offset[l + 1] = colsum_offset[l] + g.n[l + 1];
    stats.resize(static_cast<std::size_t>(g.blocks) * L);
    draws = std::vector<LayerDraws>(L);
    colsums.resize(static_cast<std::size_t>(g.blocks) * static_cast<std::size_t>(colsum_offset[L]));
    if (g.weight_gradients) {
      for (int l = 1; l <= g.depth; ++l) {
        grad_offset.push_back(grad_sq.size());
        grad_sq.resize(grad_sq.size() + static_cast<std::size_t>(g.grad_chunks(l)));
      }
    }
  }

  // Rank `team.rank()`'s share of the first touch of the arena (see Buffer::touch).
  void touch(const Team& team) const { arena_.touch(team.rank(), team.size()); }

  // Bytes the constructor allocates, without allocating. Counted in double, so that absurd sizes
  // (a batch of 2^40 at width 2^24) give a huge estimate instead of wrapping around.
  static double bytes(const Geometry& g, int ranks) {
    double count = 0;
    assign(g, ranks, [&](double c) {
      count += c;
      return Slice{};
    }, nullptr);
    double colsum = 0;
    for (int l = 1; l <= g.depth; ++l) colsum += static_cast<double>(g.n[static_cast<std::size_t>(l)]);
    const double blocks = static_cast<double>(g.blocks);
    return count * static_cast<double>(sizeof(T)) + blocks * colsum * static_cast<double>(sizeof(double)) +
           blocks * static_cast<double>(g.depth) * static_cast<double>(sizeof(BlockLayerStats));
  }

  // The float32 strips of W_l^T, and the same memory as W_l in panels of kStrip.
  T* weight_strips(int l) const {
    assert(l >= 1 && l <= g_.depth);
    return weight_slices[static_cast<std::size_t>(l - 1)].ptr;
  }
  StripView<T> weights_t(int l) const { return {weight_strips(l), g_.strip_stride[static_cast<std::size_t>(l - 1)]}; }
  PanelView<T> weights(int l) const {
    return {weight_strips(l), g_.strip_stride[static_cast<std::size_t>(l - 1)], kStrip};
  }
  // The split copies (bf16x6 products only).
  static std::uint16_t* u16(const Slice& s) { return reinterpret_cast<std::uint16_t*>(s.ptr); }
  amx::SplitA split_weights_t(int l) const {
    return {u16(split_fwds[static_cast<std::size_t>(l % 2)]), amx::row_tiles(g_.n[static_cast<std::size_t>(l)]),
            amx::round_k(g_.n[static_cast<std::size_t>(l - 1)]) / amx::kChunk};
  }
  amx::SplitA split_weights(int l) const {
    return {u16(split_bwd[static_cast<std::size_t>(l - 1)]), amx::row_tiles(g_.n[static_cast<std::size_t>(l - 1)]),
            amx::round_k(g_.n[static_cast<std::size_t>(l)]) / amx::kChunk};
  }
  std::uint16_t* split_fwd(int l) const { return u16(split_fwds[static_cast<std::size_t>(l % 2)]); }
  std::uint16_t* split_x(int l) const { return u16(split_xs[static_cast<std::size_t>(l % 2)]); }
  std::uint16_t* split_dh(int l) const { return u16(split_dhs[static_cast<std::size_t>(l % 2)]); }
  // X_l^T for the whole batch (l = 0 is the input).
  T* x(int l) const {
    assert(l >= 0 && l <= g_.depth);
    return (g_.weight_gradients ? xs[static_cast<std::size_t>(l)] : xs[l % 2]).ptr;
  }
  // dL/dH_l^T for the whole batch (ping-pong).
  T* dh(int l) const { return dhs[l % 2].ptr; }
  // f'(h_l) of row block b: n_l rows of R.
  T* deriv(int l, std::int64_t b) const {
    assert(l >= 1 && l <= g_.depth && b >= 0 && b < g_.blocks);
    return derivs[static_cast<std::size_t>(l - 1)].ptr + b * g_.n[static_cast<std::size_t>(l)] * g_.rows_per_block;
  }
  BlockLayerStats& stat(std::int64_t block, int l) {
    assert(block >= 0 && block < g_.blocks && l >= 1 && l <= g_.depth);
    return stats[static_cast<std::size_t>(block * g_.depth + l - 1)];
  }
  double* colsum(std::int64_t block, int l) {
    assert(block >= 0 && block < g_.blocks && l >= 1 && l <= g_.depth);
    return colsums.data() + static_cast<std::size_t>(block) * static_cast<std::size_t>(colsum_offset.back()) +
           static_cast<std::size_t>(colsum_offset[static_cast<std::size_t>(l - 1)]);
  }

  // Per rank: one block of C for the products, sample-major rows (inputs, upstream gradients,
  // rows of weights being drawn) and unit-major rows (the upstream gradient turned over).
  struct RankScratch {
    Slice c_block;
    Slice rows;
    Slice units;
    Slice grad_block;  // C blocks of dL/dW^T (weight gradients only)
    Slice weight_group;  // kSplitGroup strips of W_l^T being drawn (split_as_drawn only)
  };

  std::vector<Slice> weight_slices;  // W_l^T at [l-1] (empty slices with split_as_drawn)
  // Split W_l^T, ping-pong (uint16_t): a rank may draw and split layer l + 1 while another still
  // multiplies with layer l.
  std::array<Slice, 2> split_fwds;
  std::vector<Slice> split_bwd;      // split W_l at [l-1] (uint16_t)
  std::array<Slice, 2> split_xs;     // split X^T, ping-pong (uint16_t)
  std::array<Slice, 2> split_dhs;    // split dL/dH^T, ping-pong (uint16_t)
  std::vector<Slice> biases;    // b_l at [l-1]
  std::vector<Slice> derivs;    // f'(h_l) at [l-1], blocks x n_l x R
  std::vector<Slice> xs;        // X^T (all layers with weight gradients, else ping-pong)
  std::array<Slice, 2> dhs;     // dL/dH^T, ping-pong
  Slice x_units;                // X_{l-1} in panels of units (weight gradients only)
  std::vector<RankScratch> scratch;
  std::vector<BlockLayerStats> stats;
  std::vector<double> colsums;  // per block, per layer, per unit: sum of x over the block's samples
  std::vector<std::int64_t> colsum_offset;
  std::vector<double> grad_sq;  // per layer, per chunk of kBlockRows rows of dL/dW^T: sum of squares
  std::vector<std::size_t> grad_offset;
  // Per layer: the drawing tasks of W_l and b_l taken by a rank so far, and those finished (see
  // TrialRunner::draw_layer); a cache line each, so that ranks drawing different layers do not
  // contend.
  struct alignas(64) LayerDraws {
    std::atomic<std::int64_t> taken{0};
    std::atomic<std::int64_t> done{0};
  };
  std::vector<LayerDraws> draws;
  // The backward pass's tasks (see TrialRunner::backward_chains), under the mutex: per row block,
  // whether its forward pass is done, whether a rank holds it, and the layer l whose dL/dh_l it
  // computes next (0 when done).
  struct Chains {
    std::mutex mutex;
    std::vector<char> ready;
    std::vector<char> held;
    std::vector<int> next;
    std::int64_t left = 0;  // blocks not done
    std::int64_t tasks_done = 0;
  };
  Chains chains;
  // Before each trial, with no rank running.
  void reset_schedule() {
    for (auto& d : draws) {
      d.taken.store(0, std::memory_order_relaxed);
      d.done.store(0, std::memory_order_relaxed);
    }
    const auto blocks = static_cast<std::size_t>(g_.blocks);
    chains.ready.assign(blocks, 0);
    chains.held.assign(blocks, 0);
    chains.next.assign(blocks, g_.depth);
    chains.left = g_.blocks;
    chains.tasks_done = 0;
  }

 private:
  // Counts rounded to whole 64-byte lines, so that every slice starts on a line.
  static std::size_t round_up(std::size_t count) {
    constexpr std::size_t line = 64 / sizeof(T);
    return (count + line - 1) / line * line;
  }

  // Assigns every slice, in a fixed order, from take(count); with ws == nullptr it only counts.
  template <class Take>
  static void assign(const Geometry& g, int ranks, Take&& take, Workspace* ws) {
    auto d = [](auto v) { return static_cast<double>(v); };
    auto put = [&](std::vector<Slice>* v, double count) {
      const Slice s = take(count);
      if (ws) v->push_back(s);
    };
    if (ws) {
      ws->weight_slices.clear();
      ws->biases.clear();
      ws->derivs.clear();
      ws->xs.clear();
      ws->split_bwd.clear();
      ws->scratch.clear();
    }
    const double batch_panels = d(g.panels) * d(g.panel_stride);
    // uint16_t counts in elements of T.
    auto halves = [&](double count) { return std::ceil(count * 2.0 / d(sizeof(T))); };
    double group_strips = 0.0;
    for (int l = 1; l <= g.depth; ++l) {
      const auto i = static_cast<std::size_t>(l - 1);
      group_strips = std::max(group_strips, d(std::min(kSplitGroup, g.strips[i])) * d(g.strip_stride[i]));
    }
    for (int l = 1; l <= g.depth; ++l) {
      const auto i = static_cast<std::size_t>(l - 1);
      put(ws ? &ws->weight_slices : nullptr, g.split_as_drawn ? 0.0 : d(g.strips[i]) * d(g.strip_stride[i]));
      put(ws ? &ws->split_bwd : nullptr, g.amx ? halves(g.split_bwd_size(l)) : 0.0);
      put(ws ? &ws->biases : nullptr, g.bias ? d(g.n[i + 1]) : 0.0);
      put(ws ? &ws->derivs : nullptr, d(g.blocks) * d(g.n[i + 1]) * d(g.rows_per_block));
    }
    const int x_buffers = g.weight_gradients ? g.depth + 1 : 2;
    for (int k = 0; k < x_buffers; ++k) put(ws ? &ws->xs : nullptr, batch_panels);
    for (int k = 0; k < 2; ++k) {
      const Slice s = take(batch_panels);
      if (ws) ws->dhs[static_cast<std::size_t>(k)] = s;
    }
    for (int k = 0; k < 2; ++k) {
      const Slice s = take(g.amx ? halves(g.split_fwd_size) : 0.0);
      if (ws) ws->split_fwds[static_cast<std::size_t>(k)] = s;
    }
    for (int k = 0; k < 2; ++k) {
      const Slice x = take(g.amx ? halves(g.split_batch_size()) : 0.0);
      const Slice dh = take(g.amx ? halves(g.split_batch_size()) : 0.0);
      if (ws) {
        ws->split_xs[static_cast<std::size_t>(k)] = x;
        ws->split_dhs[static_cast<std::size_t>(k)] = dh;
      }
    }
    {
      const Slice s = take(g.weight_gradients ? d(g.unit_panels) * d(g.unit_panel_stride) : 0.0);
      if (ws) ws->x_units = s;
    }
    for (int r = 0; r < ranks; ++r) {
      RankScratch rs;
      rs.c_block = take(d(gemm_block_size<T>(g.panels_per_block)));
      rs.rows = take(d(g.rows_per_block) * d(g.ld_rows));
      rs.units = take(d(g.n_max) * d(g.ld_units));
      rs.grad_block = take(g.weight_gradients ? d(gemm_block_size<T>(g.unit_panels)) : 0.0);
      rs.weight_group = take(g.split_as_drawn ? group_strips : 0.0);
      if (ws) ws->scratch.push_back(rs);
    }
  }

  const Geometry& g_;
  Buffer<T> arena_;
};

// ---------------------------------------------------------------------------------------------
// Row kernels. Sums run over independent lanes of doubles (one per column of a panel) so the
// compiler vectorises them without reordering a reduction; the lanes are then combined in a fixed
// order.

// Lanes of a row sum (combined by fold_lanes).
constexpr int kLanes = 32;

// Moments of n values from their sums of deviations from `shift`, and of squared deviations
// (Chan, Golub, LeVeque 1983, "shifted data": stable when the values are within a few standard
// deviations of the shift).
inline Moments moments_from_sums(std::int64_t n, double shift, double sum, double sum_sq) {
  const double nd = static_cast<double>(n);
  Moments m;
  m.count = n;
  m.mean = shift + sum / nd;
  m.m2 = std::max(0.0, sum_sq - sum * sum / nd);
  if (!std::isfinite(sum_sq)) m.m2 = sum_sq;  // keep inf/NaN visible
  return m;
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
  return fold_lanes<kLanes>(s);
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
  static constexpr int P = static_cast<int>(kPanel<T>);

 public:
  TrialRunner(const PointSpec& spec, const Geometry& g, const Act& act, const StreamSeed& seed,
              const DropoutParams& dropout)
      : spec_(spec), g_(g), act_(act), seed_(seed), dropout_(dropout) {}

  // Runs trial `trial` with `team`; on return (all ranks), rank 0 has written `out`.
  // `tick` is called after each layer pass, by one rank.
  template <class Tick>
  void run(std::int64_t trial, const Team& team, Workspace<T>& ws, PointResult& out, const Tick& tick) const {
    if (team.rank() == 0) ws.reset_schedule();
    team.barrier();
    forward(trial, team, ws, tick);
    if (g_.weight_gradients) {
      backward(trial, team, ws, tick);
    } else {
      backward_chains(trial, team, ws, tick);
    }
    team.barrier();
    if (team.rank() == 0) collect(trial, ws, out);
  }

 private:
  using Scratch = typename Workspace<T>::RankScratch;

  std::uint64_t key(StreamKind kind, std::int64_t trial, int layer) const {
    return stream_key(seed_.seed, seed_.point, kind, static_cast<std::uint64_t>(trial),
                      static_cast<std::uint64_t>(layer));
  }

  // The weights and bias of layer l, where they are not drawn by draw_layer: for the bf16x6
  // products, elementwise initialisers draw W_l^T a group of strips per task, dealt round-robin
  // over the ranks (the stream is in strip order: init.hpp), and split it; orthogonal weights are
  // drawn whole by one rank per layer and laid out in strips. Values depend only on the stream
  // keys.
  void generate_layer(std::int64_t trial, int l, const Team& team, Workspace<T>& ws) const {
    static_assert(kWeightStrip == kStrip, "the weight stream's strips are the GEMM's strips");
    const std::int64_t fan_in = g_.n[l - 1];
    const std::int64_t fan_out = g_.n[l];
    const auto i = static_cast<std::size_t>(l - 1);
    const std::uint64_t wkey = key(StreamKind::weights, trial, l);
    std::int64_t task = 0;
    if (g_.split_as_drawn) {
      // A group of strips per task, drawn into the rank's buffer and split from there.
      const std::int64_t rows = Geometry::round_up_to_strip(fan_in);
      T* group = ws.scratch[static_cast<std::size_t>(team.rank())].weight_group.ptr;
      for (std::int64_t s0 = 0; s0 < g_.strips[i]; s0 += kSplitGroup, ++task) {
        if (!team.owns(task)) continue;
        const std::int64_t s1 = std::min(s0 + kSplitGroup, g_.strips[i]);
        generate_weight_strips<T>(spec_.init, wkey, fan_in, fan_out, s0, s1, rows, group, g_.strip_stride[i]);
        split_group(l, s0, group, ws);
      }
      store_fence();  // the split W_l went around the caches
    } else if (team.owns(l)) {  // whole matrices, dealt by layer so that ranks draw different layers
      std::vector<T> w(static_cast<std::size_t>(fan_in * fan_out));
      generate_weights<T>(spec_.init, wkey, fan_in, fan_out, w.data(), fan_out);
      store_weights(l, w.data(), fan_out, ws);
    }
    if (g_.bias && team.owns(task)) {
      fill_normal<T>(key(StreamKind::biases, trial, l), 0, static_cast<std::size_t>(fan_out),
                     ws.biases[i].ptr, static_cast<T>(spec_.init.bias_mean),
                     static_cast<T>(std::sqrt(spec_.init.bias_variance)));
    }
  }

  // The tasks of drawing layer l with an elementwise initialiser into stored strips: strip s of
  // W_l^T is task s, and the bias, if any, the last.
  std::int64_t draw_tasks(int l) const { return g_.strips[static_cast<std::size_t>(l - 1)] + (g_.bias ? 1 : 0); }
  void draw_task(std::int64_t trial, int l, std::int64_t task, Workspace<T>& ws) const {
    const auto i = static_cast<std::size_t>(l - 1);
    const std::int64_t fan_in = g_.n[i];
    const std::int64_t fan_out = g_.n[i + 1];
    if (task < g_.strips[i]) {
      generate_weight_strips<T>(spec_.init, key(StreamKind::weights, trial, l), fan_in, fan_out, task, task + 1,
                                Geometry::round_up_to_strip(fan_in), ws.weight_strips(l) + task * g_.strip_stride[i],
                                g_.strip_stride[i]);
    } else {
      fill_normal<T>(key(StreamKind::biases, trial, l), 0, static_cast<std::size_t>(fan_out), ws.biases[i].ptr,
                     static_cast<T>(spec_.init.bias_mean), static_cast<T>(std::sqrt(spec_.init.bias_variance)));
    }
  }

  // Takes the next drawing task of layer l no rank has taken and draws it; false if none is left.
  bool take_draw(std::int64_t trial, int l, Workspace<T>& ws) const {
    auto& d = ws.draws[static_cast<std::size_t>(l - 1)];
    const std::int64_t tasks = draw_tasks(l);
    if (d.taken.load(std::memory_order_relaxed) >= tasks) return false;
    const std::int64_t task = d.taken.fetch_add(1, std::memory_order_relaxed);
    if (task >= tasks) return false;
    draw_task(trial, l, task, ws);
    d.done.fetch_add(1, std::memory_order_release);
    return true;
  }

  // Returns once W_l and b_l are complete. Instead of a barrier: the ranks take the layer's tasks
  // as they arrive, so the first to finish its products of layer l - 1 draws more of layer l, and
  // while the other ranks finish its last tasks it draws layer l + 1. A rank waits only when both
  // layers are taken, and what it draws does not depend on which rank draws it.
  void draw_layer(std::int64_t trial, int l, const Team& team, Workspace<T>& ws) const {
    const auto& d = ws.draws[static_cast<std::size_t>(l - 1)];
    const std::int64_t tasks = draw_tasks(l);
    while (d.done.load(std::memory_order_acquire) < tasks) {
      if (take_draw(trial, l, ws)) continue;
      if (l < g_.depth && take_draw(trial, l + 1, ws)) continue;
      team.pause();
    }
  }

  // W_l (row-major at w, leading dimension ld) into the strips of W_l^T, with the zero rows that
  // round the inputs up to kStrip and zero columns past the outputs in the last strip.
  void store_weights(int l, const T* w, std::ptrdiff_t ld, Workspace<T>& ws) const {
    const std::int64_t fan_in = g_.n[l - 1];
    const std::int64_t fan_out = g_.n[l];
    const std::ptrdiff_t ss = g_.strip_stride[static_cast<std::size_t>(l - 1)];
    T* strips = ws.weight_strips(l);
    const std::int64_t rows = Geometry::round_up_to_strip(fan_in);
    for (std::int64_t s = 0; s < g_.strips[static_cast<std::size_t>(l - 1)]; ++s) {
      const std::int64_t j0 = s * kStrip;
      const std::int64_t cols = std::min(kStrip, fan_out - j0);
      T* strip = strips + s * ss;
      for (std::int64_t r = 0; r < rows; ++r) {
        T* dst = strip + r * kStrip;
        if (r >= fan_in) {  // the zero rows that round the inputs up
          std::fill_n(dst, kStrip, T(0));
          continue;
        }
        const T* src = w + r * ld + j0;
        for (std::int64_t j = 0; j < kStrip; ++j) dst[j] = j < cols ? src[j] : T(0);
      }
    }
  }

  template <class Tick>
  void forward(std::int64_t trial, const Team& team, Workspace<T>& ws, const Tick& tick) const {
    const Scratch& scratch = ws.scratch[static_cast<std::size_t>(team.rank())];
    const std::uint64_t input_key = key(StreamKind::inputs, trial, 0);
    for (std::int64_t b = 0; b < g_.blocks; ++b) {
      if (!team.owns(b)) continue;
      generate_inputs<T>(spec_.input, input_key, g_.n[0], b * g_.rows_per_block, g_.block_rows(b), scratch.rows.ptr,
                         g_.ld_rows);
      to_panels(scratch.rows.ptr, g_.ld_rows, b, g_.n[0], ws.x(0));
      if (g_.amx) split_rows(ws.x(0), ws.split_x(0), b, 0, g_.n[0], g_.n[0]);
    }
    // The weights of each layer are drawn just before its product: they are still in cache for
    // it, and never make a round trip through memory before the backward pass. Orthogonal
    // weights take a QR factorisation per layer, so those are all drawn first, layers spread over
    // the ranks.
    const bool just_in_time = init_is_elementwise(spec_.init.kind);
    if (!just_in_time) {
      for (int l = 1; l <= g_.depth; ++l) generate_layer(trial, l, team, ws);
      team.barrier();
    }
    for (int l = 1; l <= g_.depth; ++l) {
      if (just_in_time && !g_.split_as_drawn) {
        draw_layer(trial, l, team, ws);
      } else if (just_in_time) {
        generate_layer(trial, l, team, ws);
        team.barrier();
      }
      if (g_.amx && !g_.split_as_drawn) {
        split_stored_weights(l, team, ws);
        team.barrier();
      }
      const std::uint64_t dropout_key = key(StreamKind::dropout, trial, l);
      for (std::int64_t b = 0; b < g_.blocks; ++b) {
        if (!team.owns(b)) continue;
        ws.stat(b, l) = BlockLayerStats{};
        multiply(g_.n[l], g_.n[l - 1], b, ws.weights_t(l), ws.x(l - 1), ws.split_weights_t(l), ws.split_x(l - 1),
                 scratch.c_block.ptr, [&](std::int64_t row0, std::int64_t rows, const T* c, std::ptrdiff_t ldc) {
                   forward_rows(l, b, row0, rows, c, ldc, dropout_key, ws);
                   if (g_.amx && l < g_.depth) split_rows(ws.x(l), ws.split_x(l), b, row0, rows, g_.n[l]);
                 });
      }
      if (team.rank() == 0) tick();
    }
    store_fence();  // f'(h) went around the caches
  }

  // C = A B for row block b of the batch (m x k times k x the block's samples), handed to `done` 96
  // rows at a time: on the tile units from the split copies of A and of the batch (bf16x6), else
  // with FMA from A in its strips or panels and the batch's float32 panels.
  template <class StoredA>
  void multiply(std::int64_t m, std::int64_t k, std::int64_t b, StoredA a, const T* batch, const amx::SplitA& split_a,
                const std::uint16_t* split_batch, T* c_block, RowsDone<T> done) const {
    if constexpr (std::is_same_v<T, float>) {
      if (g_.amx) {
        amx::gemm(m, k, g_.block_panels(b), split_a, split_block(split_batch, b), c_block, done);
        return;
      }
    }
    const PanelView<T> panels{batch + g_.first_panel(b) * g_.panel_stride, g_.panel_stride, P};
    gemm<T>(m, k, g_.block_panels(b), a, panels, c_block, done);
  }

  // The split copies of W_l^T (forward) and W_l (backward, l > 1) from the stored float32 strips of
  // W_l^T (orthogonal weights), in tasks of kSplitGroup strips dealt over the ranks.
  void split_stored_weights(int l, const Team& team, Workspace<T>& ws) const {
    const std::int64_t strips = g_.strips[static_cast<std::size_t>(l - 1)];
    const std::ptrdiff_t ss = g_.strip_stride[static_cast<std::size_t>(l - 1)];
    std::int64_t task = 0;
    for (std::int64_t s0 = 0; s0 < strips; s0 += kSplitGroup, ++task) {
      if (team.owns(task)) split_group(l, s0, ws.weight_strips(l) + s0 * ss, ws);
    }
    store_fence();  // the split W_l went around the caches
  }

  // The tiles of both split copies of layer l that strips [s0, s0 + kSplitGroup) of W_l^T (at
  // group) hold: 6 row tiles of W_l^T, and 3 chunks of every row tile of W_l.
  void split_group(int l, std::int64_t s0, const T* group, Workspace<T>& ws) const {
    if constexpr (std::is_same_v<T, float>) {
      const std::int64_t n_out = g_.n[l], n_in = g_.n[l - 1];
      const std::ptrdiff_t ss = g_.strip_stride[static_cast<std::size_t>(l - 1)];
      const std::int64_t row0 = s0 * kStrip;
      const amx::SplitA fwd = ws.split_weights_t(l);
      std::uint16_t* fwd_data = ws.split_fwd(l);
      const std::ptrdiff_t fwd_plane = fwd.row_tiles * fwd.chunks * amx::kTileElements;
      const std::int64_t i1 = std::min(fwd.row_tiles, (row0 + kSplitGroup * kStrip) / amx::kTileRows);
      for (std::int64_t i = row0 / amx::kTileRows; i < i1; ++i) {
        for (std::int64_t c = 0; c < fwd.chunks; ++c) {
          amx::split_a_strips(group, s0, ss, false, n_out, n_in, i, c,
                              fwd_data + (i * fwd.chunks + c) * amx::kTileElements, fwd_plane, false);
        }
      }
      if (l == 1) return;
      const amx::SplitA bwd = ws.split_weights(l);
      std::uint16_t* bwd_data = Workspace<T>::u16(ws.split_bwd[static_cast<std::size_t>(l - 1)]);
      const std::ptrdiff_t bwd_plane = bwd.row_tiles * bwd.chunks * amx::kTileElements;
      const std::int64_t c1 = std::min(bwd.chunks, (row0 + kSplitGroup * kStrip) / amx::kChunk);
      for (std::int64_t i = 0; i < bwd.row_tiles; ++i) {
        for (std::int64_t c = row0 / amx::kChunk; c < c1; ++c) {
          amx::split_a_strips(group, s0, ss, true, n_in, n_out, i, c,
                              bwd_data + (i * bwd.chunks + c) * amx::kTileElements, bwd_plane, true);
        }
      }
    } else {
      (void)l, (void)s0, (void)group, (void)ws;
    }
  }

  // Block b of a split batch.
  amx::SplitB split_block(const std::uint16_t* batch, std::int64_t b) const {
    return {batch + g_.first_panel(b) * amx::kPlanes * g_.split_plane, g_.split_plane};
  }

  // Rows [row0, row0 + rows) of block b's float32 panels (at src, the whole batch's) into the split
  // copy at dst, by pairs of rows (row0 is even); after the last of n rows, the pairs up to the
  // product's k are zeroed.
  void split_rows(const T* src, std::uint16_t* dst, std::int64_t b, std::int64_t row0, std::int64_t rows,
                  std::int64_t n) const {
    if constexpr (std::is_same_v<T, float>) {
      const std::ptrdiff_t ps = g_.split_plane;
      for (std::int64_t q = 0; q < g_.block_panels(b); ++q) {
        const T* panel = src + (g_.first_panel(b) + q) * g_.panel_stride;
        std::uint16_t* split = dst + (g_.first_panel(b) + q) * amx::kPlanes * ps;
        for (std::int64_t j = row0; j < row0 + rows; j += 2) {
          amx::split_b_pair(panel + j * P, j + 1 < n ? panel + (j + 1) * P : nullptr, j / 2, split, ps);
        }
        if (row0 + rows == n) amx::zero_b_pairs((n + 1) / 2, amx::round_k(n) / 2, split, ps);
      }
    } else {
      (void)src, (void)dst, (void)b, (void)row0, (void)rows, (void)n;
    }
  }

  // Sample-major rows of block b (rows x width at src, leading dimension lds) into the batch's
  // panels at dst; the columns of the last panel past the batch are zeroed.
  void to_panels(const T* src, std::ptrdiff_t lds, std::int64_t b, std::int64_t width, T* dst) const {
    const std::int64_t rows = g_.block_rows(b);
    for (std::int64_t q = 0; q < g_.block_panels(b); ++q) {
      const std::int64_t s0 = q * P;
      const std::int64_t m = std::min<std::int64_t>(P, rows - s0);
      T* panel = dst + (g_.first_panel(b) + q) * g_.panel_stride;
      transpose<T>(src + s0 * lds, lds, m, width, panel, P);
      if (m < P) {
        for (std::int64_t j = 0; j < width; ++j) std::fill(panel + j * P + m, panel + (j + 1) * P, T(0));
      }
    }
  }

  // The forward pass after the product, on rows [row0, row0 + rows) of H_l^T for block b (the
  // block's samples along each row, at c with leading dimension ldc): bias, activation,
  // derivative, alpha dropout and every forward statistic, in one pass. x_l goes to the panels of
  // X_l^T and f'(h_l) to the block's derivative rows.
  void forward_rows(int l, std::int64_t b, std::int64_t row0, std::int64_t rows, const T* c, std::ptrdiff_t ldc,
                    std::uint64_t dropout_key, Workspace<T>& ws) const {
    const std::int64_t count = g_.block_rows(b);
    const std::int64_t n_out = g_.n[l];
    const T* bias = g_.bias ? ws.biases[static_cast<std::size_t>(l - 1)].ptr : nullptr;
    T* x_out = ws.x(l) + g_.first_panel(b) * g_.panel_stride;
    T* deriv = ws.deriv(l, b);
    double* colsum = ws.colsum(b, l);
    // Shifted sums around the block's first pre-activation and activation.
    T y0, d0;
    const T h0 = c[0] + (bias ? bias[row0] : T(0));
    act_.eval(h0, y0, d0);
    const double pre_shift = static_cast<double>(h0);
    const double act_shift = static_cast<double>(y0);
    ForwardLanes sums;
    double act_s1 = 0.0;
    std::int64_t bad = 0;
    // One unit's h and x = f(h) over the block's samples, for the statistics.
    alignas(64) T h[kMaxRowBlock];
    alignas(64) T y[kMaxRowBlock];
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t j = row0 + r;
      const T* h_row = c + r * ldc;
      const T bj = bias ? bias[j] : T(0);
      T* d_row = deriv + j * g_.rows_per_block;
      for (std::int64_t q = 0; q * P < count; ++q) {
        const int m = static_cast<int>(std::min<std::int64_t>(P, count - q * P));
        T* hq = h + q * P;
        T* yq = y + q * P;
        alignas(64) T dy[P];
        for (int k = 0; k < P; ++k) hq[k] = h_row[q * P + k] + bj;
        for (int k = 0; k < P; ++k) act_.eval(hq[k], yq[k], dy[k]);
        if (g_.dropout) {
          bad += count_nonfinite(hq, yq, m);
          apply_dropout(dropout_key, b * g_.rows_per_block + q * P, j, n_out, yq, dy);
        }
        for (int k = m; k < P; ++k) yq[k] = T(0);
        T* x_dst = x_out + q * g_.panel_stride + j * P;
        for (int k = 0; k < P; ++k) x_dst[k] = yq[k];
        if (m == P) {
          stream_panel_row(d_row + q * P, dy);
        } else {
          for (int k = 0; k < m; ++k) d_row[q * P + k] = dy[k];
        }
      }
      // With dropout, the entries were counted before it (a dropped inf is still a blow-up).
      Lanes16 row_sum;
      bad += forward_row(h, y, count, pre_shift, act_shift, sums, row_sum, !g_.dropout);
      const double unit_sum = row_sum.total();
      colsum[j] = unit_sum;
      act_s1 += unit_sum - static_cast<double>(count) * act_shift;
    }
    BlockLayerStats& st = ws.stat(b, l);
    const std::int64_t entries = rows * count;
    st.pre.merge(moments_from_sums(entries, pre_shift, sums.pre_s1.total(), sums.pre_s2.total()));
    st.act.merge(moments_from_sums(entries, act_shift, act_s1, sums.act_s2.total()));
    st.nonfinite += bad;
  }

  // Alpha dropout on P consecutive samples of unit j (first sample `sample`): keep with
  // probability q, else the saturation value; then a x + b. The derivative picks up a (kept) or
  // 0 (dropped). The uniform of (sample s, unit j) is element s n + j of the dropout stream.
  void apply_dropout(std::uint64_t dropout_key, std::int64_t sample, std::int64_t j, std::int64_t n, T* y,
                     T* dy) const {
    const T keep = static_cast<T>(dropout_.keep);
    const T a = static_cast<T>(dropout_.a);
    const T b = static_cast<T>(dropout_.b);
    const T dropped = static_cast<T>(dropout_.a * dropout_.saturation + dropout_.b);
    for (int k = 0; k < P; ++k) {
      const T u = uniform_element<T>(dropout_key, static_cast<std::uint64_t>((sample + k) * n + j));
      const bool kept = u < keep;
      y[k] = kept ? a * y[k] + b : dropped;
      dy[k] = kept ? a * dy[k] : T(0);
    }
  }

  // The backward pass with weight gradients: dL/dW_l needs every block's dL/dh_l, so the ranks go
  // through the layers in step, each with its own blocks.
  template <class Tick>
  void backward(std::int64_t trial, const Team& team, Workspace<T>& ws, const Tick& tick) const {
    const int L = g_.depth;
    for (std::int64_t b = 0; b < g_.blocks; ++b) {
      if (team.owns(b)) backward_task(trial, team, ws, b, L);
    }
    for (int l = L; l >= 1; --l) {
      weight_gradient(l, team, ws);
      if (l > 1) {
        for (std::int64_t b = 0; b < g_.blocks; ++b) {
          if (team.owns(b)) backward_task(trial, team, ws, b, l - 1);
        }
      }
      if (team.rank() == 0) tick();
    }
  }

  // The backward pass without weight gradients. Each row block's chain of tasks (dL/dh_L from the
  // upstream gradient, then dL/dh_l from dL/dh_{l+1} for l = L - 1 .. 1) depends on nothing but
  // its own forward pass and the stored weights, so a rank takes the next task of whichever chain
  // is furthest behind, among those no rank holds and whose forward pass is done. The ranks then
  // finish within one task of each other, instead of the faster waiting at the end of the trial;
  // what a task computes does not depend on which rank runs it.
  template <class Tick>
  void backward_chains(std::int64_t trial, const Team& team, Workspace<T>& ws, const Tick& tick) const {
    auto& ch = ws.chains;
    {
      std::lock_guard<std::mutex> lock(ch.mutex);
      for (std::int64_t b = 0; b < g_.blocks; ++b) {
        if (team.owns(b)) ch.ready[static_cast<std::size_t>(b)] = 1;
      }
    }
    std::int64_t held = -1;
    for (;;) {
      std::int64_t b = -1;
      int l = 0;
      bool layer_done = false;
      bool all_done = false;
      {
        std::lock_guard<std::mutex> lock(ch.mutex);
        if (held >= 0) {
          const auto h = static_cast<std::size_t>(held);
          ch.held[h] = 0;
          if (--ch.next[h] == 0) --ch.left;
          layer_done = ++ch.tasks_done % g_.blocks == 0;  // a layer pass's worth of tasks
        }
        all_done = ch.left == 0;
        for (std::int64_t c = 0; c < g_.blocks; ++c) {
          const auto i = static_cast<std::size_t>(c);
          if (ch.ready[i] && !ch.held[i] && ch.next[i] > 0 && (b < 0 || ch.next[i] > ch.next[static_cast<std::size_t>(b)])) {
            b = c;
          }
        }
        if (b >= 0) {
          ch.held[static_cast<std::size_t>(b)] = 1;
          l = ch.next[static_cast<std::size_t>(b)];
        }
      }
      if (layer_done) tick();
      if (all_done) break;
      held = b;
      if (b < 0) {
        team.pause();
        continue;
      }
      backward_task(trial, team, ws, b, l);
      store_fence();  // the next task of this block may run on another rank
    }
  }

  // dL/dh_l for row block b: from the upstream gradient (l = L), else from dL/dh_{l+1}.
  void backward_task(std::int64_t trial, const Team& team, Workspace<T>& ws, std::int64_t b, int l) const {
    const int L = g_.depth;
    const Scratch& scratch = ws.scratch[static_cast<std::size_t>(team.rank())];
    if (l == L) {
      upstream(trial, scratch, ws, b);
      return;
    }
    multiply(g_.n[l], g_.n[l + 1], b, ws.weights(l + 1), ws.dh(l + 1), ws.split_weights(l + 1), ws.split_dh(l + 1),
             scratch.c_block.ptr, [&](std::int64_t row0, std::int64_t rows, const T* c, std::ptrdiff_t ldc) {
               backward_rows(l, b, row0, rows, c, ldc, ws);
               if (g_.amx && l > 1) split_rows(ws.dh(l), ws.split_dh(l), b, row0, rows, g_.n[l]);
             });
  }

  // dL/dh_L for row block b: the upstream gradient g = dL/dx_L, element sample * n_L + j of its
  // stream, turned unit-major, times f'(h_L).
  void upstream(std::int64_t trial, const Scratch& scratch, Workspace<T>& ws, std::int64_t b) const {
    const int L = g_.depth;
    const std::uint64_t upstream_key = key(StreamKind::upstream, trial, L);
    const std::int64_t rows = g_.block_rows(b);
    for (std::int64_t r = 0; r < rows; ++r) {
      fill_normal<T>(upstream_key, static_cast<std::uint64_t>((b * g_.rows_per_block + r) * g_.n[L]),
                     static_cast<std::size_t>(g_.n[L]), scratch.rows.ptr + r * g_.ld_rows, T(0), T(1));
    }
    transpose<T>(scratch.rows.ptr, g_.ld_rows, rows, g_.n[L], scratch.units.ptr, g_.ld_units);
    backward_rows(L, b, 0, g_.n[L], scratch.units.ptr, g_.ld_units, ws);
    if (g_.amx && L > 1) split_rows(ws.dh(L), ws.split_dh(L), b, 0, g_.n[L], g_.n[L]);
  }

  // The backward pass after the product, on rows [row0, row0 + rows) of dL/dX_l^T for block b:
  // dL/dh_l = dL/dx_l * f'(h_l) into the panels of dL/dH_l^T, with both sums of squares.
  void backward_rows(int l, std::int64_t b, std::int64_t row0, std::int64_t rows, const T* c, std::ptrdiff_t ldc,
                     Workspace<T>& ws) const {
    const std::int64_t count = g_.block_rows(b);
    T* dh_out = ws.dh(l) + g_.first_panel(b) * g_.panel_stride;
    const T* deriv = ws.deriv(l, b);
    Lanes16 sx, sh;
    std::int64_t bad = 0;
    // f'(h) comes from memory (written around the caches in the forward pass): rows a few ahead
    // are prefetched, as far ahead as a DRAM access takes.
    constexpr std::int64_t kAhead = 8;
    const std::int64_t pf_end = g_.n[l];
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t j = row0 + r;
      const T* g_row = c + r * ldc;
      const T* d_row = deriv + j * g_.rows_per_block;
      if (j + kAhead < pf_end) {
        for (std::int64_t q = 0; q * P < count; ++q) prefetch_panel_row(d_row + kAhead * g_.rows_per_block + q * P);
      }
      bad += backward_row(g_row, d_row, count, dh_out + j * P, g_.panel_stride, sx, sh);
    }
    BlockLayerStats& st = ws.stat(b, l);
    st.grad_act_sq += sx.total();
    st.grad_pre_sq += sh.total();
    st.grad_nonfinite += bad;
  }

  // Sum of squares of dL/dW_l^T = dL/dH_l^T X_{l-1} (n_l x n_{l-1}, summed over the whole batch), in
  // chunks of kBlockRows rows dealt over the ranks. X_{l-1} is first laid out in panels of units
  // (every rank a share), and every block's dL/dh_l must be done: hence the barriers.
  void weight_gradient(int l, const Team& team, Workspace<T>& ws) const {
    const std::int64_t n_out = g_.n[l];
    const std::int64_t n_in = g_.n[l - 1];
    const std::int64_t unit_panels = (n_in + P - 1) / P;
    team.barrier();
    const T* x = ws.x(l - 1);
    for (std::int64_t u = 0; u < unit_panels; ++u) {
      if (!team.owns(u)) continue;
      const std::int64_t j0 = u * P;
      const std::int64_t units = std::min<std::int64_t>(P, n_in - j0);
      T* dst = ws.x_units.ptr + u * g_.unit_panel_stride;
      for (std::int64_t q = 0; q < g_.panels; ++q) {
        const std::int64_t s0 = q * P;
        const std::int64_t samples = std::min<std::int64_t>(P, g_.batch - s0);
        transpose<T>(x + q * g_.panel_stride + j0 * P, P, units, samples, dst + s0 * P, P);
        if (units < P) {
          for (std::int64_t s = 0; s < samples; ++s) std::fill(dst + (s0 + s) * P + units, dst + (s0 + s + 1) * P, T(0));
        }
      }
    }
    team.barrier();
    const Scratch& scratch = ws.scratch[static_cast<std::size_t>(team.rank())];
    const std::size_t offset = ws.grad_offset[static_cast<std::size_t>(l - 1)];
    const PanelView<T> x_units{ws.x_units.ptr, g_.unit_panel_stride, P};
    for (std::int64_t chunk = 0; chunk < g_.grad_chunks(l); ++chunk) {
      if (!team.owns(chunk)) continue;
      const std::int64_t row0 = chunk * kBlockRows;
      const PanelView<T> dh{ws.dh(l) + row0 * P, g_.panel_stride, P};
      gemm<T>(std::min(kBlockRows, n_out - row0), g_.batch, unit_panels, dh, x_units, scratch.grad_block.ptr,
              [&](std::int64_t, std::int64_t rows, const T* c, std::ptrdiff_t ldc) {
                double sq = 0.0;
                for (std::int64_t i = 0; i < rows; ++i) sq += row_sum_sq(c + i * ldc, n_in);
                ws.grad_sq[offset + static_cast<std::size_t>(chunk)] = sq;
              });
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
        const std::int64_t chunks = g_.grad_chunks(l);
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
  WorkEstimate e;
  e.matmul = resolve_matmul(options.matmul, spec);
  const Geometry g(spec, sizeof(T), e.matmul == Matmul::bf16x6);
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
  // Orthogonal weights are drawn whole (generate_layer): by each rank in turn in samples mode, at
  // most one layer per rank at a time, and by each worker in trials mode; each holds the matrix and
  // the factorisation's temporaries while it draws.
  if (!init_is_elementwise(spec.init.kind)) {
    double largest = 0.0;
    for (int l = 1; l <= g.depth; ++l) {
      largest = std::max(largest, static_cast<double>(sizeof(T)) * static_cast<double>(g.n[l - 1]) *
                                          static_cast<double>(g.n[l]) +
                                      generate_weights_scratch_bytes(spec.init.kind, g.n[l - 1], g.n[l]));
    }
    const int drawing = e.mode == ParallelMode::samples ? std::min(e.threads_used, g.depth) : e.threads_used;
    buffers += static_cast<double>(drawing) * largest;
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
  const Geometry g(spec, sizeof(T), estimate.matmul == Matmul::bf16x6);
  const std::int64_t trials = spec.monte_carlo.trials;
  PointResult out;
  out.depth = g.depth;
  out.trials = trials;
  out.has_weight_gradients = g.weight_gradients;
  out.matmul = std::string(to_string(estimate.matmul));
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
    run_team(team_size, [&](const Team& team) { ws.touch(team); });
    for (std::int64_t t = 0; t < trials; ++t) {
      run_team(team_size, [&](const Team& team) { runner.run(t, team, ws, out, tick); });
    }
  } else {
    const int workers = static_cast<int>(std::min<std::int64_t>(threads, trials));
    std::vector<std::unique_ptr<Workspace<T>>> spaces(static_cast<std::size_t>(workers));
    for (auto& s : spaces) s = std::make_unique<Workspace<T>>(g, 1);
    run_tasks(workers, trials, [&](std::int64_t t, int worker, const Team& solo) {
      runner.run(t, solo, *spaces[static_cast<std::size_t>(worker)], out, tick);
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

bool bf16x6_available() { return amx::available(); }

Matmul resolve_matmul(Matmul matmul, const PointSpec& spec) {
  if (matmul == Matmul::bf16x6 && !amx::available()) {
    throw std::invalid_argument(
        "bf16x6 products need a CPU with AMX-BF16 (Intel Sapphire Rapids or later) and a build for it; this one has "
        "none: use auto or fma");
  }
  if (spec.precision == Precision::float64 || matmul == Matmul::fma) return Matmul::fma;
  if (matmul == Matmul::bf16x6) return Matmul::bf16x6;
  return amx::available() && spec.monte_carlo.batch >= kBf16x6MinBatch ? Matmul::bf16x6 : Matmul::fma;
}

std::string_view to_string(Matmul m) {
  switch (m) {
    case Matmul::automatic: return "auto";
    case Matmul::fma: return "fma";
    case Matmul::bf16x6: return "bf16x6";
  }
  return "?";
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
