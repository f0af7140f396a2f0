// The Monte Carlo engine: T random networks, each fed B random inputs, forward and backward,
// with per-layer statistics.
//
// Conventions (one trial):
//   forward   h_l = x_{l-1} W_l (+ b_l),  x_l = f(h_l),  l = 1..L,  x_0 the input batch (B x n_0);
//   backward  the loss is sum(x_L * g) with g ~ N(0, 1) of the shape of x_L, so dL/dx_L = g;
//             dL/dh_l = dL/dx_l * f'(h_l),  dL/dx_{l-1} = dL/dh_l W_l^T,
//             dL/dW_l = x_{l-1}^T dL/dh_l (summed over the batch; only on request).
// Each statistic is computed per trial over all B n_l entries of the layer, then averaged over
// trials with its standard error across trials.
//
// Reproducibility: a result depends only on (spec, seed, point index). Random numbers come from
// counter-based streams keyed by (seed, point, kind, trial, layer); rows are processed in blocks
// of row_block(B) samples whatever the thread count, and partial statistics are merged in block and
// trial order, so 1 or 64 threads give the same bits.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "core/spec.hpp"

namespace selfnorm {

// The per-layer statistics, in the order of the result file.
enum class Stat : int {
  preactivation_mean,
  preactivation_var,
  activation_mean,
  activation_var,
  activation_msq,
  unit_mean_spread,
  grad_activation_msq,
  grad_preactivation_msq,
  grad_weight_msq,
};
inline constexpr int kStatCount = 9;

// Name (as in the result file), a short long_name, units and the precise definition.
struct StatInfo {
  Stat stat;
  std::string_view name;
  std::string_view long_name;
  std::string_view units;
  std::string_view definition;
};

// All statistics, indexed by static_cast<int>(Stat).
const std::array<StatInfo, kStatCount>& stat_catalog();

// How the threads share a point's work. Results are identical in every mode.
enum class ParallelMode {
  automatic,  // samples, unless whole trials balance the threads' load better than the row blocks do
  trials,     // each thread runs whole trials with its own buffers (memory x threads)
  samples,    // all threads work on one trial, each on its own row blocks of the batch
};

// How the float32 products are computed. float64 products always use FMA.
enum class Matmul {
  automatic,  // bf16x6 for batches of kBf16x6MinBatch or more where the CPU has AMX-BF16, else fma
  fma,        // float32 FMA on the vector units (AVX-512 where the build has it)
  bf16x6,     // the matrix units: each operand split into three bfloat16 pieces, six products
              // summed in float32 (core/amx.hpp); as accurate as fma; needs AMX-BF16
};

// The smallest batch for which `automatic` takes bf16x6. Every layer's weights are split anew
// for the matrix units, a cost that the batch pays off: at width 512 and depth 64, bf16x6 takes
// 1.17 times as long as fma at B = 64, 1.01 at 128, 0.93 at 256 and 0.82 at 512.
inline constexpr std::int64_t kBf16x6MinBatch = 256;

// True if bf16x6 can run here: this build has the AMX kernel and the CPU has AMX-BF16.
bool bf16x6_available();

struct RunOptions {
  int threads = 1;                        // OpenMP threads, >= 1
  ParallelMode parallel = ParallelMode::automatic;
  Matmul matmul = Matmul::automatic;
};

// The kernel `matmul` resolves to for point `spec` on this CPU: fma or bf16x6 (always fma for
// float64). Throws std::invalid_argument for bf16x6 where it cannot run (bf16x6_available).
Matmul resolve_matmul(Matmul matmul, const PointSpec& spec);
std::string_view to_string(Matmul m);

// Samples per row block: the unit of work, and of the order of every reduction. A function of the
// batch size alone (never of the thread count): 128 below 1024 samples, then 256, 384 and 512 from
// 1024, 1536 and 2048 samples. Larger blocks reuse each strip of weights over more panels of
// samples, and leave at least 4 blocks to share out. A multiple of every panel width (32 and 16
// samples), so that blocks start on a panel.
constexpr std::int64_t row_block(std::int64_t batch) {
  const std::int64_t k = batch / 512;
  return 128 * (k < 1 ? 1 : (k > 4 ? 4 : k));
}
// The largest row block, of any batch.
inline constexpr std::int64_t kMaxRowBlock = 512;
static_assert(row_block(std::int64_t(1) << 62) == kMaxRowBlock);

// Where a point's random streams come from.
struct StreamSeed {
  std::uint64_t seed = 0;   // the experiment's seed
  std::uint64_t point = 0;  // the point's index in its sweep
};

// Progress inside one point: completed layer passes (forward or backward) out of the total.
// Called from the main thread only, at most every few milliseconds.
using ProgressCallback = std::function<void(std::int64_t done, std::int64_t total)>;

// Statistics of one configuration point.
struct PointResult {
  int depth = 0;
  std::int64_t trials = 0;
  bool has_weight_gradients = false;
  std::string matmul;  // how the products were computed: "fma", "bf16x6" (CPU); "cublas", "cublas-tf32"
  // per_trial[s][t * depth + (l - 1)]: statistic s of trial t at layer l. NaN where the layer
  // had non-finite entries in that trial; the gradient statistics are NaN at every layer of a trial
  // whose forward pass had a non-finite entry at any layer (the backward pass runs through it).
  std::array<std::vector<double>, kStatCount> per_trial;
  // Entries where h_l or x_l is inf or NaN (forward), and where dL/dh_l is (backward), per trial
  // at [t * depth + (l - 1)], and summed over trials at [l - 1].
  std::vector<std::int64_t> nonfinite_per_trial;
  std::vector<std::int64_t> grad_nonfinite_per_trial;
  std::vector<std::int64_t> nonfinite_count;
  std::vector<std::int64_t> grad_nonfinite_count;
  // First layer (1-based) with a non-finite entry (pre-activation or activation) in any trial; 0 if none.
  int first_nonfinite_layer = 0;

  bool has(Stat s) const { return s != Stat::grad_weight_msq || has_weight_gradients; }
  // Mean over trials at layer l (1-based).
  double mean(Stat s, int layer) const;
  // Standard error of that mean: sample standard deviation over trials / sqrt(T); NaN for T = 1.
  double sem(Stat s, int layer) const;
};

// Runs all trials of one point. Throws std::invalid_argument for an inconsistent spec.
PointResult simulate_point(const PointSpec& spec, const StreamSeed& seed, const RunOptions& options,
                           const ProgressCallback& progress = {});

// What a point costs, before running it. Byte counts saturate at SIZE_MAX for absurd sizes.
struct WorkEstimate {
  double gemm_flop = 0.0;           // multiply-adds counted as 2 FLOP
  std::size_t buffer_bytes = 0;     // engine buffers allocated for the point
  std::size_t result_bytes = 0;     // the PointResult: every statistic of every trial and layer
  ParallelMode mode = ParallelMode::samples;  // the mode `automatic` resolves to
  Matmul matmul = Matmul::fma;                // the kernel the products use
  int threads_used = 1;
  // Peak memory of simulate_point: buffers and result together (saturating).
  std::size_t total_bytes() const {
    return buffer_bytes > SIZE_MAX - result_bytes ? SIZE_MAX : buffer_bytes + result_bytes;
  }
};

// The cost of a point without running it or allocating anything. Throws std::invalid_argument for
// an inconsistent spec, like simulate_point.
WorkEstimate estimate_work(const PointSpec& spec, const RunOptions& options);

// The saturation value f(-inf) that alpha dropout sets dropped units to (-lambda alpha for selu);
// false if the activation has no finite left limit (leaky_relu, identity).
bool dropout_saturation(const Activation& activation, double& value);

// The affine correction (a, b) of alpha dropout with keep probability q and saturation value
// alpha_prime, which keeps mean mu and variance nu (Klambauer et al. 2017, section 4):
// a = sqrt(nu / (q ((1 - q) (alpha_prime - mu)^2 + nu))), b = mu - a (q mu + (1 - q) alpha_prime).
// For mu = 0, nu = 1 this is the paper's a = (q + alpha'^2 q (1 - q))^(-1/2), b = -a (1 - q) alpha'.
void alpha_dropout_affine(double q, double alpha_prime, double mu, double nu, double& a, double& b);

}  // namespace selfnorm
