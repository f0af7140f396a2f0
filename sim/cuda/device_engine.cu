// The CUDA engine: one trial of one point on the GPU, with the semantics of core/engine.cpp.
//
// Layout: every batch is row-major B x n with leading dimension n, as on the CPU. cuBLAS is
// column-major, where the same memory is the n x B matrix X^T, so (W row-major n_in x n_out, i.e.
// W^T column-major n_out x n_in with ld n_out):
//   forward  H = X W           is  H^T (n_out x B)  = W^T X^T      cublas(N, N, n_out, B, n_in)
//   backward dX = dH W^T       is  dX^T (n_in x B)  = W dH^T       cublas(T, N, n_in, B, n_out)
//   weights  dW = X^T dH       is  dW^T (n_out x n_in) = dH^T X    cublas(N, T, n_out, n_in, B)
//
// Random numbers: Philox4x32-10 (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2,
// 3"), the counter-based generator of cuRAND, used directly as a function of (key, counter): the
// key is core/random.hpp's stream_key(seed, point, kind, trial, layer), the counter the element's
// group. Element e of a float stream comes from call e / 4 (two Box-Muller pairs), of a double
// stream from call e / 2 (one pair of 53-bit uniforms). Values depend only on (key, e), never on
// the launch configuration. They differ from the CPU engine's SplitMix64 streams.
//
// Reductions: each block sums its entries in double around a shift (its first entry), turns the
// sums into (count, mean, M2), and one finishing block merges the blocks' moments with Chan's
// update in a fixed order (a sequential pass per thread, then a fixed tree). No floating-point
// atomics: the same GPU gives the same bits on every run.
#include "cuda/device_engine.hpp"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <curand_philox4x32_x.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "core/random.hpp"

#ifndef SELFNORM_CUDA_ARCHITECTURES
#define SELFNORM_CUDA_ARCHITECTURES "unknown"
#endif

namespace selfnorm::cuda {
namespace {

// ---------------------------------------------------------------------------------------------
// Error checking: every CUDA and cuBLAS call goes through one of these.

void check_cuda(cudaError_t e, const char* call) {
  if (e == cudaSuccess) return;
  (void)cudaGetLastError();  // clear a non-sticky error so that later calls report their own
  throw CudaError(std::string(call) + " failed: " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")",
                  e == cudaErrorMemoryAllocation);
}

void check_cublas(cublasStatus_t s, const char* call) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  throw CudaError(std::string(call) + " failed: " + cublasGetStatusName(s) + " (" + cublasGetStatusString(s) + ")",
                  s == CUBLAS_STATUS_ALLOC_FAILED);
}

#define SELFNORM_CUDA(call) check_cuda((call), #call)
#define SELFNORM_CUBLAS(call) check_cublas((call), #call)
// After a kernel launch: a bad configuration is reported here, faults at the next synchronisation.
#define SELFNORM_LAUNCHED(kernel) check_cuda(cudaGetLastError(), "launch of " kernel)

// Device memory, freed by the destructor.
class DeviceMemory {
 public:
  DeviceMemory() = default;
  explicit DeviceMemory(std::size_t bytes) {
    if (bytes > 0) SELFNORM_CUDA(cudaMalloc(&ptr_, bytes));
    bytes_ = bytes;
  }
  ~DeviceMemory() {
    if (ptr_) cudaFree(ptr_);
  }
  DeviceMemory(DeviceMemory&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceMemory& operator=(DeviceMemory&& o) noexcept {
    if (this != &o) {
      if (ptr_) cudaFree(ptr_);
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  std::size_t bytes() const { return bytes_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

// Keeps `m` if it holds at least `bytes`, else replaces it (freeing the old block first).
void ensure(DeviceMemory& m, std::size_t bytes) {
  if (m.bytes() >= bytes) return;
  m = DeviceMemory();
  m = DeviceMemory(bytes);
}

// ---------------------------------------------------------------------------------------------
// Random numbers

__device__ __forceinline__ uint4 philox(std::uint64_t key, std::uint64_t counter, unsigned sub) {
  return curand_Philox4x32_10(make_uint4(static_cast<unsigned>(counter), static_cast<unsigned>(counter >> 32), sub, 0u),
                              make_uint2(static_cast<unsigned>(key), static_cast<unsigned>(key >> 32)));
}

// Uniform on (0, 1] from the top 24 bits of a word (1 where the largest rounds up, as on the CPU).
__device__ __forceinline__ float uniform24(unsigned w) { return (static_cast<float>(w >> 8) + 0.5f) * 0x1p-24f; }
// Uniform on (0, 1] from a whole word, for the radius of Box-Muller: as small as 2^-33, so that
// |z| reaches 6.8 as in the CPU's float streams.
__device__ __forceinline__ float uniform32(unsigned w) { return fmaf(static_cast<float>(w), 0x1p-32f, 0x1p-33f); }
// Uniform on (0, 1] from 53 bits of two words (1 where the largest rounds up, as on the CPU).
__device__ __forceinline__ double uniform53(unsigned hi, unsigned lo) {
  const std::uint64_t a = ((static_cast<std::uint64_t>(hi) << 32) | lo) >> 11;
  return (static_cast<double>(a) + 0.5) * 0x1p-53;
}

template <class T>
struct Group;
template <>
struct Group<float> {
  static constexpr int size = 4;
};
template <>
struct Group<double> {
  static constexpr int size = 2;
};

// The standard normals of group g of stream `key`.
__device__ __forceinline__ void normals(std::uint64_t key, std::uint64_t g, float* z) {
  const uint4 w = philox(key, g, 0);
  float s, c;
  const float r0 = sqrtf(-2.0f * logf(uniform32(w.x)));
  sincospif(2.0f * uniform24(w.y), &s, &c);
  z[0] = r0 * c;
  z[1] = r0 * s;
  const float r1 = sqrtf(-2.0f * logf(uniform32(w.z)));
  sincospif(2.0f * uniform24(w.w), &s, &c);
  z[2] = r1 * c;
  z[3] = r1 * s;
}
__device__ __forceinline__ void normals(std::uint64_t key, std::uint64_t g, double* z) {
  const uint4 w = philox(key, g, 0);
  double s, c;
  const double r = sqrt(-2.0 * log(uniform53(w.x, w.y)));
  sincospi(2.0 * uniform53(w.z, w.w), &s, &c);
  z[0] = r * c;
  z[1] = r * s;
}

// The uniforms on (0, 1] of group g.
__device__ __forceinline__ void uniforms(std::uint64_t key, std::uint64_t g, float* u) {
  const uint4 w = philox(key, g, 0);
  u[0] = uniform24(w.x);
  u[1] = uniform24(w.y);
  u[2] = uniform24(w.z);
  u[3] = uniform24(w.w);
}
__device__ __forceinline__ void uniforms(std::uint64_t key, std::uint64_t g, double* u) {
  const uint4 w = philox(key, g, 0);
  u[0] = uniform53(w.x, w.y);
  u[1] = uniform53(w.z, w.w);
}

// Uniform element e alone (its group's other elements are not used).
template <class T>
__device__ __forceinline__ T uniform_at(std::uint64_t key, std::uint64_t e) {
  T u[Group<T>::size];
  uniforms(key, e / Group<T>::size, u);
  return u[e % Group<T>::size];
}

// N(0, 1) truncated to [-2, 2] at element e, by rejection: attempt k uses counter (e, k + 1), so
// elements stay independent of each other and of the launch.
__device__ double truncated_normal_at(std::uint64_t key, std::uint64_t e) {
  for (unsigned k = 0; k < 32; ++k) {
    const uint4 w = philox(key, e, k + 1);
    const double z = sqrt(-2.0 * log(uniform53(w.x, w.y))) * cospi(2.0 * uniform53(w.z, w.w));
    if (fabs(z) <= 2.0) return z;
  }
  return 0.0;  // probability 0.046^32 < 1e-42
}

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over `work` items: a function of the size alone.
unsigned grid_for(std::int64_t work) {
  const std::int64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::clamp<std::int64_t>(blocks, 1, 65536));
}

// out[e] = offset + scale * v_e, v the standard normals (Normal) or the uniforms on (0, 1] of the
// stream, drawn a group at a time.
template <class T, bool Normal>
__global__ void fill_kernel(T* out, std::int64_t count, std::uint64_t key, T offset, T scale) {
  constexpr int G = Group<T>::size;
  const std::int64_t groups = (count + G - 1) / G;
  for (std::int64_t g = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; g < groups;
       g += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    T v[G];
    if constexpr (Normal) {
      normals(key, static_cast<std::uint64_t>(g), v);
    } else {
      uniforms(key, static_cast<std::uint64_t>(g), v);
    }
    for (int k = 0; k < G; ++k) {
      const std::int64_t e = g * G + k;
      if (e < count) out[e] = offset + scale * v[k];
    }
  }
}

// out[e] = mean + scale * (truncated normal)_e, computed in double as on the CPU.
template <class T>
__global__ void fill_truncated_kernel(T* out, std::int64_t count, std::uint64_t key, double mean, double scale) {
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < count;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    out[e] = static_cast<T>(mean + scale * truncated_normal_at(key, static_cast<std::uint64_t>(e)));
  }
}

template <class T>
void fill_normal(cudaStream_t stream, T* out, std::int64_t count, std::uint64_t key, double mean, double stddev) {
  fill_kernel<T, true><<<grid_for((count + Group<T>::size - 1) / Group<T>::size), kThreads, 0, stream>>>(
      out, count, key, static_cast<T>(mean), static_cast<T>(stddev));
  SELFNORM_LAUNCHED("fill_kernel (normal)");
}

template <class T>
void fill_uniform(cudaStream_t stream, T* out, std::int64_t count, std::uint64_t key, double lo, double hi) {
  fill_kernel<T, false><<<grid_for((count + Group<T>::size - 1) / Group<T>::size), kThreads, 0, stream>>>(
      out, count, key, static_cast<T>(lo), static_cast<T>(hi) - static_cast<T>(lo));
  SELFNORM_LAUNCHED("fill_kernel (uniform)");
}

// ---------------------------------------------------------------------------------------------
// Activations: the formulas of core/activations.hpp, evaluated the same way (the exponential only
// at non-positive arguments, NaN kept NaN, PyTorch's one-sided derivatives at the kinks).

__device__ __forceinline__ float d_exp(float x) { return expf(x); }
__device__ __forceinline__ double d_exp(double x) { return exp(x); }
__device__ __forceinline__ float d_expm1(float x) { return expm1f(x); }
__device__ __forceinline__ double d_expm1(double x) { return expm1(x); }
__device__ __forceinline__ float d_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double d_log1p(double x) { return log1p(x); }
__device__ __forceinline__ float d_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double d_abs(double x) { return fabs(x); }
__device__ __forceinline__ float d_copysign(float x, float s) { return copysignf(x, s); }
__device__ __forceinline__ double d_copysign(double x, double s) { return copysign(x, s); }
__device__ __forceinline__ bool d_finite(float x) { return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u; }
__device__ __forceinline__ bool d_finite(double x) {
  return (static_cast<unsigned long long>(__double_as_longlong(x)) & 0x7ff0000000000000ull) != 0x7ff0000000000000ull;
}

// Parameters in the working precision: p0, p1 as DeviceJob's act_p0, act_p1.
template <class T>
struct ActArgs {
  int kind;
  T p0;
  T p1;
};

template <class T>
__device__ __forceinline__ void activate(const ActArgs<T>& a, T x, T& y, T& dy) {
  const T zero = T(0), one = T(1);
  switch (static_cast<ActKind>(a.kind)) {
    case ActKind::relu:
      y = x < zero ? zero : x;
      dy = x > zero ? one : zero;
      break;
    case ActKind::relu6:
      y = x < zero ? zero : (x > T(6) ? T(6) : x);
      dy = (x > zero && x < T(6)) ? one : zero;
      break;
    case ActKind::leaky_relu:  // p0 = negative_slope
      y = x > zero ? x : a.p0 * x;
      dy = x > zero ? one : a.p0;
      break;
    case ActKind::softplus: {  // p0 = beta, p1 = threshold
      const T z = a.p0 * x;
      const T e = d_exp(-d_abs(z));
      const T s = one / (one + e);
      const T sig = z >= zero ? s : e * s;
      const T sp = ((z > zero ? z : zero) + d_log1p(e)) / a.p0;
      const bool linear = z > a.p1;
      y = linear ? x : sp;
      dy = linear ? one : sig;
      break;
    }
    case ActKind::elu: {  // p0 = alpha
      const T m = x > zero ? zero : x;
      y = x > zero ? x : a.p0 * d_expm1(m);
      dy = x > zero ? one : a.p0 * d_exp(m);
      break;
    }
    case ActKind::selu: {  // p0 = lambda, p1 = lambda * alpha
      const T m = x > zero ? zero : x;
      y = x > zero ? a.p0 * x : a.p1 * d_expm1(m);
      dy = x > zero ? a.p0 : a.p1 * d_exp(m);
      break;
    }
    case ActKind::celu: {  // p0 = alpha, p1 = 1 / alpha
      const T m = (x > zero ? zero : x) * a.p1;
      y = x > zero ? x : a.p0 * d_expm1(m);
      dy = x > zero ? one : d_exp(m);
      break;
    }
    case ActKind::tanh: {
      const T m = T(-2) * d_abs(x);
      const T e = d_exp(m);
      const T t = d_expm1(m);
      const T d = t + T(2);
      y = d_copysign(-t / d, x);
      dy = T(4) * e / (d * d);
      break;
    }
    case ActKind::sigmoid: {
      const T e = d_exp(-d_abs(x));
      const T s = one / (one + e);
      y = x >= zero ? s : e * s;
      dy = e * s * s;
      break;
    }
    case ActKind::gelu: {  // exact x Phi(x), in double with CUDA's erfc
      const double xd = static_cast<double>(x);
      const double cdf = 0.5 * erfc(-xd * 0.70710678118654752440);
      const double pdf = 0.39894228040143267794 * exp(-0.5 * xd * xd);
      y = static_cast<T>(xd * cdf);
      dy = static_cast<T>(cdf + xd * pdf);
      break;
    }
    case ActKind::silu: {
      const T e = d_exp(-d_abs(x));
      const T r = one / (one + e);
      const T s = x >= zero ? r : e * r;              // sigmoid(x)
      const T one_minus_s = x >= zero ? e * r : r;    // sigmoid(-x)
      y = x * s;
      dy = s * (one + x * one_minus_s);
      break;
    }
    default:  // identity
      y = x;
      dy = one;
      break;
  }
}

template <class T>
struct DropoutArgs {
  int on;
  T keep;
  T a;
  T b;
  T dropped;
  std::uint64_t key;
};

// ---------------------------------------------------------------------------------------------
// Moments

// Chan, Golub, LeVeque's merge of (nb, mean_b, m2_b) into (na, mean, m2); the caller adds nb to na.
__device__ __forceinline__ void chan_merge(double na, double& mean, double& m2, double nb, double mean_b,
                                           double m2_b) {
  if (nb == 0.0) return;
  if (na == 0.0) {
    mean = mean_b;
    m2 = m2_b;
    return;
  }
  const double n = na + nb;
  const double delta = mean_b - mean;
  mean += delta * (nb / n);
  m2 += m2_b + delta * delta * (na * nb / n);
}

// Moments of `count` values from their sums of deviations from `shift` (core/engine.cpp's
// moments_from_sums).
__device__ __forceinline__ void moments_from_sums(double count, double shift, double s1, double s2, double& mean,
                                                  double& m2) {
  mean = shift + s1 / count;
  m2 = fmax(0.0, s2 - s1 * s1 / count);
  if (!d_finite(s2)) m2 = s2;  // keep inf/NaN visible
}

// ---------------------------------------------------------------------------------------------
// Forward: x = f(h + b) in place, d = f'(h + b) (times dropout's factor), and partial statistics.
// A block covers 32 units and kTileRows samples; thread (tx, ty) walks unit tx over rows ty,
// ty + 8, ... Per block it writes (count, pre mean, pre M2, act mean, act M2, non-finite) and the
// sum of x over its rows for each of its units.

constexpr int kTileCols = 32;
constexpr int kTileRowThreads = 8;
constexpr int kTileRows = 64;
constexpr int kForwardFields = 6;
constexpr int kSums = 6;  // pre s1, s2, act s1, s2, column sum, non-finite

template <class T>
__global__ void __launch_bounds__(kTileCols* kTileRowThreads)
    forward_kernel(T* hx, T* deriv, const T* bias, std::int64_t batch, std::int64_t n, std::int64_t col_blocks,
                   ActArgs<T> act, DropoutArgs<T> drop, double* part, double* colsum_part) {
  __shared__ double red[kTileRowThreads][kTileCols][kSums];
  const int tx = threadIdx.x;
  const int ty = threadIdx.y;
  const std::int64_t cb = blockIdx.x % col_blocks;
  const std::int64_t rb = blockIdx.x / col_blocks;
  const std::int64_t col0 = cb * kTileCols;
  const std::int64_t row0 = rb * kTileRows;
  const std::int64_t col = col0 + tx;
  const std::int64_t row_end = row0 + kTileRows < batch ? row0 + kTileRows : batch;
  const std::int64_t col_end = col0 + kTileCols < n ? col0 + kTileCols : n;

  // The shift: the block's first entry, read by every thread before any is overwritten.
  T h0 = hx[row0 * n + col0];
  if (bias) h0 += bias[col0];
  T y0, d0;
  activate(act, h0, y0, d0);
  if (drop.on) y0 = drop.a * y0 + drop.b;
  const double pre_shift = static_cast<double>(h0);
  const double act_shift = static_cast<double>(y0);
  __syncthreads();

  double v[kSums] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  if (col < n) {
    const T bj = bias ? bias[col] : T(0);
    for (std::int64_t r = row0 + ty; r < row_end; r += kTileRowThreads) {
      const std::int64_t i = r * n + col;
      T h = hx[i];
      if (bias) h += bj;
      T y, dy;
      activate(act, h, y, dy);
      v[5] += (d_finite(h) && d_finite(y)) ? 0.0 : 1.0;
      if (drop.on) {
        const bool kept = uniform_at<T>(drop.key, static_cast<std::uint64_t>(i)) < drop.keep;
        y = kept ? drop.a * y + drop.b : drop.dropped;
        dy = kept ? drop.a * dy : T(0);
      }
      hx[i] = y;
      deriv[i] = dy;
      const double dh = static_cast<double>(h) - pre_shift;
      v[0] += dh;
      v[1] += dh * dh;
      const double dx = static_cast<double>(y) - act_shift;
      v[2] += dx;
      v[3] += dx * dx;
      v[4] += static_cast<double>(y);
    }
  }
  for (int k = 0; k < kSums; ++k) red[ty][tx][k] = v[k];
  __syncthreads();
  // Column totals over the 8 row threads, in order; the column sum goes out per unit.
  if (ty == 0) {
    double t[kSums] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    for (int r = 0; r < kTileRowThreads; ++r) {
      for (int k = 0; k < kSums; ++k) t[k] += red[r][tx][k];
    }
    if (col < n) colsum_part[rb * n + col] = t[4];
    for (int k = 0; k < kSums; ++k) red[0][tx][k] = t[k];
  }
  __syncthreads();
  if (tx == 0 && ty == 0) {
    double t[kSums] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    for (int c = 0; c < kTileCols; ++c) {
      for (int k = 0; k < kSums; ++k) t[k] += red[0][c][k];
    }
    const double count = static_cast<double>((row_end - row0) * (col_end - col0));
    double* out = part + static_cast<std::int64_t>(blockIdx.x) * kForwardFields;
    out[0] = count;
    moments_from_sums(count, pre_shift, t[0], t[1], out[1], out[2]);
    moments_from_sums(count, act_shift, t[2], t[3], out[3], out[4]);
    out[5] = t[5];
  }
}

// Merges the forward partials of one layer into its LayerMoments (one block of kThreads).
__global__ void __launch_bounds__(kThreads)
    forward_finish_kernel(const double* part, std::int64_t blocks, const double* colsum_part, std::int64_t row_blocks,
                          std::int64_t n, std::int64_t batch, double* layer) {
  __shared__ double sm[kThreads][kForwardFields];
  const int t = threadIdx.x;
  double c = 0.0, pm = 0.0, pm2 = 0.0, am = 0.0, am2 = 0.0, bad = 0.0;
  for (std::int64_t b = t; b < blocks; b += kThreads) {
    const double* p = part + b * kForwardFields;
    chan_merge(c, pm, pm2, p[0], p[1], p[2]);
    chan_merge(c, am, am2, p[0], p[3], p[4]);
    c += p[0];
    bad += p[5];
  }
  sm[t][0] = c;
  sm[t][1] = pm;
  sm[t][2] = pm2;
  sm[t][3] = am;
  sm[t][4] = am2;
  sm[t][5] = bad;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s /= 2) {
    if (t < s) {
      double* a = sm[t];
      const double* b = sm[t + s];
      chan_merge(a[0], a[1], a[2], b[0], b[1], b[2]);
      chan_merge(a[0], a[3], a[4], b[0], b[3], b[4]);
      a[0] += b[0];
      a[5] += b[5];
    }
    __syncthreads();
  }
  if (t == 0) {
    layer[0] = sm[0][0];
    layer[1] = sm[0][1];
    layer[2] = sm[0][2];
    layer[3] = sm[0][3];
    layer[4] = sm[0][4];
    layer[6] = sm[0][5];
  }
  __syncthreads();

  // Spread of the per-unit means over the units, two passes as on the CPU.
  __shared__ double tree[kThreads];
  const double inv_batch = 1.0 / static_cast<double>(batch);
  auto unit_mean = [&](std::int64_t j) {
    double u = 0.0;
    for (std::int64_t r = 0; r < row_blocks; ++r) u += colsum_part[r * n + j];
    return u * inv_batch;
  };
  double s = 0.0;
  for (std::int64_t j = t; j < n; j += kThreads) s += unit_mean(j);
  tree[t] = s;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w /= 2) {
    if (t < w) tree[t] += tree[t + w];
    __syncthreads();
  }
  const double mean_of_means = tree[0] / static_cast<double>(n);
  __syncthreads();
  double q = 0.0;
  for (std::int64_t j = t; j < n; j += kThreads) {
    const double d = unit_mean(j) - mean_of_means;
    q += d * d;
  }
  tree[t] = q;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w /= 2) {
    if (t < w) tree[t] += tree[t + w];
    __syncthreads();
  }
  if (t == 0) layer[5] = tree[0] / static_cast<double>(n);
}

// ---------------------------------------------------------------------------------------------
// Backward and weight gradients: grid-stride loops, per-block sums, one finishing block.

constexpr int kMaxReduceBlocks = 1024;

unsigned reduce_grid(std::int64_t count) {
  const std::int64_t blocks = (count + 4 * kThreads - 1) / (4 * kThreads);
  return static_cast<unsigned>(std::clamp<std::int64_t>(blocks, 1, kMaxReduceBlocks));
}

// Fixed-order tree sum of `fields` values per thread in `sm`, result in sm[0][*].
template <int Fields>
__device__ __forceinline__ void tree_sum(double (*sm)[Fields]) {
  const int t = threadIdx.x;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s /= 2) {
    if (t < s) {
      for (int k = 0; k < Fields; ++k) sm[t][k] += sm[t + s][k];
    }
    __syncthreads();
  }
}

// dL/dh = dL/dx * f'(h) in place; per block the sums of (dL/dx)^2, (dL/dh)^2 and the non-finite dL/dh.
template <class T>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(T* delta, const T* deriv, std::int64_t count, double* part) {
  __shared__ double sm[kThreads][3];
  double sx = 0.0, sh = 0.0, bad = 0.0;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(kThreads) + threadIdx.x; i < count;
       i += static_cast<std::int64_t>(gridDim.x) * kThreads) {
    const T gx = delta[i];
    const T gh = gx * deriv[i];
    bad += d_finite(gh) ? 0.0 : 1.0;
    delta[i] = gh;
    const double a = static_cast<double>(gx), c = static_cast<double>(gh);
    sx += a * a;
    sh += c * c;
  }
  sm[threadIdx.x][0] = sx;
  sm[threadIdx.x][1] = sh;
  sm[threadIdx.x][2] = bad;
  tree_sum<3>(sm);
  if (threadIdx.x == 0) {
    for (int k = 0; k < 3; ++k) part[blockIdx.x * 3 + k] = sm[0][k];
  }
}

// Per block the sum of squares of a[0..count).
template <class T>
__global__ void __launch_bounds__(kThreads) sum_squares_kernel(const T* a, std::int64_t count, double* part) {
  __shared__ double sm[kThreads][1];
  double s = 0.0;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(kThreads) + threadIdx.x; i < count;
       i += static_cast<std::int64_t>(gridDim.x) * kThreads) {
    const double v = static_cast<double>(a[i]);
    s += v * v;
  }
  sm[threadIdx.x][0] = s;
  tree_sum<1>(sm);
  if (threadIdx.x == 0) part[blockIdx.x] = sm[0][0];
}

// out[k] = sum over blocks of part[b * Fields + k], in a fixed order (one block of kThreads).
template <int Fields>
__global__ void __launch_bounds__(kThreads) sum_finish_kernel(const double* part, int blocks, double* out) {
  __shared__ double sm[kThreads][Fields];
  double s[Fields] = {};
  for (int b = threadIdx.x; b < blocks; b += kThreads) {
    for (int k = 0; k < Fields; ++k) s[k] += part[b * Fields + k];
  }
  for (int k = 0; k < Fields; ++k) sm[threadIdx.x][k] = s[k];
  tree_sum<Fields>(sm);
  if (threadIdx.x == 0) {
    for (int k = 0; k < Fields; ++k) out[k] = sm[0][k];
  }
}

__global__ void probe_kernel(int* flag) {
  if (threadIdx.x == 0) *flag = 1;
}

// ---------------------------------------------------------------------------------------------
// cuBLAS in either precision: C = op(A) op(B), column-major, no accumulation.

cublasStatus_t gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const float* a,
                    int lda, const float* b, int ldb, float* c, int ldc) {
  const float one = 1.0f, zero = 0.0f;
  return cublasSgemm(h, ta, tb, m, n, k, &one, a, lda, b, ldb, &zero, c, ldc);
}
cublasStatus_t gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const double* a,
                    int lda, const double* b, int ldb, double* c, int ldc) {
  const double one = 1.0, zero = 0.0;
  return cublasDgemm(h, ta, tb, m, n, k, &one, a, lda, b, ldb, &zero, c, ldc);
}

int as_int(std::int64_t v) { return static_cast<int>(v); }

// Sizes of one point's device buffers, in elements of the working type or doubles.
struct Plan {
  std::size_t element = 4;
  int depth = 0;
  std::vector<std::int64_t> n;
  std::int64_t batch = 0;
  std::int64_t n_max = 0;
  std::vector<std::size_t> w_off, b_off, d_off, x_off;
  std::size_t weights = 0, biases = 0, derivs = 0, xs = 0, delta = 0, grad = 0;
  std::size_t forward_part = 0;  // doubles
  std::size_t colsum_part = 0;   // doubles
  std::size_t reduce_part = 0;   // doubles

  explicit Plan(const DeviceJob& job) {
    element = job.float64 ? 8 : 4;
    depth = job.depth();
    n = job.widths;
    batch = job.batch;
    for (auto w : n) n_max = std::max(n_max, w);
    const auto B = static_cast<std::size_t>(batch);
    std::size_t grad_max = 0, blocks_max = 0;
    for (int l = 1; l <= depth; ++l) {
      const auto in = static_cast<std::size_t>(n[l - 1]);
      const auto out = static_cast<std::size_t>(n[l]);
      w_off.push_back(weights);
      weights += in * out;
      b_off.push_back(biases);
      biases += job.bias ? out : 0;
      d_off.push_back(derivs);
      derivs += B * out;
      grad_max = std::max(grad_max, in * out);
      const std::size_t col_blocks = (out + kTileCols - 1) / kTileCols;
      const std::size_t row_blocks = (B + kTileRows - 1) / kTileRows;
      blocks_max = std::max(blocks_max, col_blocks * row_blocks);
    }
    if (job.weight_gradients) {
      for (int l = 0; l <= depth; ++l) {
        x_off.push_back(xs);
        xs += B * static_cast<std::size_t>(n[l]);
      }
      grad = grad_max;
    } else {
      x_off = {0, B * static_cast<std::size_t>(n_max)};
      xs = 2 * B * static_cast<std::size_t>(n_max);
    }
    delta = 2 * B * static_cast<std::size_t>(n_max);
    forward_part = blocks_max * kForwardFields;
    colsum_part = ((B + kTileRows - 1) / kTileRows) * static_cast<std::size_t>(n_max);
    reduce_part = kMaxReduceBlocks * 3;
  }

  double bytes() const {
    const double e = static_cast<double>(element);
    return e * (static_cast<double>(weights) + static_cast<double>(biases) + static_cast<double>(derivs) +
                static_cast<double>(xs) + static_cast<double>(delta) + static_cast<double>(grad)) +
           8.0 * (static_cast<double>(forward_part) + static_cast<double>(colsum_part) +
                  static_cast<double>(reduce_part) + static_cast<double>(depth) * kLayerFields);
  }
};

}  // namespace

DeviceProperties probe_device() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    throw NoDeviceError(std::string("no CUDA device found: cudaGetDeviceCount failed with ") + cudaGetErrorName(e) +
                        " (" + cudaGetErrorString(e) + ")");
  }
  if (count < 1) throw NoDeviceError("no CUDA device found: cudaGetDeviceCount reports 0 devices");
  DeviceProperties p;
  p.ordinal = 0;
  cudaDeviceProp prop{};
  SELFNORM_CUDA(cudaGetDeviceProperties(&prop, 0));
  p.name = prop.name;
  p.compute_major = prop.major;
  p.compute_minor = prop.minor;
  p.multiprocessors = prop.multiProcessorCount;
  SELFNORM_CUDA(cudaSetDevice(0));
  SELFNORM_CUDA(cudaDriverGetVersion(&p.driver_version));
  SELFNORM_CUDA(cudaRuntimeGetVersion(&p.runtime_version));
  SELFNORM_CUDA(cudaMemGetInfo(&p.free_bytes, &p.total_bytes));
  // A device this build has no code for fails its first launch; say so plainly.
  int* flag = nullptr;
  SELFNORM_CUDA(cudaMalloc(&flag, sizeof(int)));
  probe_kernel<<<1, 1>>>(flag);
  const cudaError_t launched = cudaGetLastError();
  const cudaError_t done = launched == cudaSuccess ? cudaDeviceSynchronize() : launched;
  cudaFree(flag);
  if (done == cudaErrorNoKernelImageForDevice || done == cudaErrorUnsupportedPtxVersion) {
    throw NoDeviceError("the GPU " + p.name + " (compute capability " + std::to_string(p.compute_major) + "." +
                        std::to_string(p.compute_minor) + ") cannot run this build's kernels, compiled for CUDA "
                        "architectures " SELFNORM_CUDA_ARCHITECTURES " (" + cudaGetErrorString(done) +
                        "); rebuild with -DCMAKE_CUDA_ARCHITECTURES=" + std::to_string(p.compute_major) +
                        std::to_string(p.compute_minor));
  }
  check_cuda(done, "probe_kernel");
  return p;
}

double device_bytes(const DeviceJob& job) { return Plan(job).bytes(); }

struct DeviceEngine::Impl {
  DeviceProperties props;
  cudaStream_t stream = nullptr;
  cublasHandle_t handle = nullptr;
  std::vector<cudaEvent_t> events;  // pairs around each GEMM of a trial, then the trial's first and last
  DeviceTiming timing;

  DeviceJob job;
  DeviceMemory weights, biases, derivs, xs, delta, grad, forward_part, colsum_part, reduce_part, layer_out;
  std::vector<unsigned char> host_weights;
  std::vector<double> layer_host;

  ~Impl() {
    for (auto ev : events) cudaEventDestroy(ev);
    if (handle) cublasDestroy(handle);
    if (stream) cudaStreamDestroy(stream);
  }

  void ensure_events(std::size_t count) {
    while (events.size() < count) {
      cudaEvent_t ev = nullptr;
      SELFNORM_CUDA(cudaEventCreate(&ev));
      events.push_back(ev);
    }
  }

  template <class T>
  void run(std::int64_t trial, LayerMoments* out);
};

DeviceEngine::DeviceEngine() : impl_(std::make_unique<Impl>()) {
  impl_->props = probe_device();
  SELFNORM_CUDA(cudaStreamCreateWithFlags(&impl_->stream, cudaStreamNonBlocking));
  SELFNORM_CUBLAS(cublasCreate(&impl_->handle));
  SELFNORM_CUBLAS(cublasSetStream(impl_->handle, impl_->stream));
  // Deterministic GEMMs: no atomics inside cuBLAS (its default, made explicit).
  SELFNORM_CUBLAS(cublasSetAtomicsMode(impl_->handle, CUBLAS_ATOMICS_NOT_ALLOWED));
}

DeviceEngine::~DeviceEngine() = default;

const DeviceProperties& DeviceEngine::properties() const { return impl_->props; }

DeviceTiming DeviceEngine::timing() const { return impl_->timing; }

void DeviceEngine::prepare(const DeviceJob& job) {
  Impl& m = *impl_;
  if (job.depth() < 1 || job.batch < 1 || job.batch > INT_MAX) {
    throw std::invalid_argument("the CUDA engine needs depth >= 1 and a batch from 1 to 2147483647");
  }
  m.job = job;
  const Plan plan(job);
  const std::size_t e = plan.element;
  // cuBLAS reads TF32 only where asked; float64 GEMMs never use it.
  SELFNORM_CUBLAS(cublasSetMathMode(m.handle, (job.tf32 && !job.float64) ? CUBLAS_TF32_TENSOR_OP_MATH
                                                                          : CUBLAS_DEFAULT_MATH));
  ensure(m.weights, plan.weights * e);
  ensure(m.biases, plan.biases * e);
  ensure(m.derivs, plan.derivs * e);
  ensure(m.xs, plan.xs * e);
  ensure(m.delta, plan.delta * e);
  ensure(m.grad, plan.grad * e);
  ensure(m.forward_part, plan.forward_part * sizeof(double));
  ensure(m.colsum_part, plan.colsum_part * sizeof(double));
  ensure(m.reduce_part, plan.reduce_part * sizeof(double));
  ensure(m.layer_out, static_cast<std::size_t>(plan.depth) * kLayerFields * sizeof(double));
  const int gemms = 2 * plan.depth - 1 + (job.weight_gradients ? plan.depth : 0);
  m.ensure_events(2 * static_cast<std::size_t>(gemms) + 2);
  m.layer_host.assign(static_cast<std::size_t>(plan.depth) * kLayerFields, 0.0);
  if (job.draw == WeightDraw::host) {
    std::size_t largest = 0;
    for (int l = 1; l <= plan.depth; ++l) {
      largest = std::max(largest, static_cast<std::size_t>(plan.n[l - 1] * plan.n[l]));
    }
    m.host_weights.assign(largest * e, 0);
  }
}

void DeviceEngine::run_trial(std::int64_t trial, LayerMoments* out) {
  if (impl_->job.float64) {
    impl_->run<double>(trial, out);
  } else {
    impl_->run<float>(trial, out);
  }
}

template <class T>
void DeviceEngine::Impl::run(std::int64_t trial, LayerMoments* out) {
  const Plan plan(job);
  const int L = plan.depth;
  const auto& n = plan.n;
  const std::int64_t B = plan.batch;
  T* W = weights.as<T>();
  T* bias = biases.as<T>();
  T* D = derivs.as<T>();
  T* X = xs.as<T>();
  T* dl = delta.as<T>();
  double* layers = layer_out.as<double>();
  auto key = [&](StreamKind kind, int layer) {
    return stream_key(job.seed, job.point, kind, static_cast<std::uint64_t>(trial), static_cast<std::uint64_t>(layer));
  };
  auto x_of = [&](int l) { return X + plan.x_off[job.weight_gradients ? l : l % 2]; };
  auto delta_of = [&](int l) { return dl + static_cast<std::size_t>(l % 2) * static_cast<std::size_t>(B * plan.n_max); };

  std::size_t ev = 0;
  cudaEvent_t trial_start = events[events.size() - 2];
  cudaEvent_t trial_end = events[events.size() - 1];
  SELFNORM_CUDA(cudaEventRecord(trial_start, stream));
  auto timed_gemm = [&](cublasOperation_t ta, cublasOperation_t tb, std::int64_t m, std::int64_t nn, std::int64_t k,
                        const T* a, std::int64_t lda, const T* b, std::int64_t ldb, T* c, std::int64_t ldc) {
    SELFNORM_CUDA(cudaEventRecord(events[ev++], stream));
    SELFNORM_CUBLAS(gemm(handle, ta, tb, as_int(m), as_int(nn), as_int(k), a, as_int(lda), b, as_int(ldb), c,
                         as_int(ldc)));
    SELFNORM_CUDA(cudaEventRecord(events[ev++], stream));
  };

  // Parameters: W_l and b_l for every layer; W_l(i, j) is element i * fan_out + j of the GPU's stream
  // (the CPU engine draws its own streams in strip order: core/init.hpp).
  for (int l = 1; l <= L; ++l) {
    const std::int64_t count = n[l - 1] * n[l];
    T* w = W + plan.w_off[static_cast<std::size_t>(l - 1)];
    const std::uint64_t wkey = key(StreamKind::weights, l);
    const double mean = job.weight_mean[static_cast<std::size_t>(l - 1)];
    const double scale = job.weight_scale[static_cast<std::size_t>(l - 1)];
    switch (job.draw) {
      case WeightDraw::normal:
        fill_normal<T>(stream, w, count, wkey, mean, scale);
        break;
      case WeightDraw::uniform:
        fill_uniform<T>(stream, w, count, wkey, mean - scale, mean + scale);
        break;
      case WeightDraw::truncated_normal:
        fill_truncated_kernel<T><<<grid_for(count), kThreads, 0, stream>>>(w, count, wkey, mean, scale);
        SELFNORM_LAUNCHED("fill_truncated_kernel");
        break;
      case WeightDraw::host:
        job.host_weights(trial, l, host_weights.data());
        // From pageable memory: returns once the data is staged, so the buffer can be refilled.
        SELFNORM_CUDA(cudaMemcpyAsync(w, host_weights.data(), static_cast<std::size_t>(count) * sizeof(T),
                                      cudaMemcpyHostToDevice, stream));
        break;
    }
    if (job.bias) {
      fill_normal<T>(stream, bias + plan.b_off[static_cast<std::size_t>(l - 1)], n[l], key(StreamKind::biases, l),
                     job.bias_mean, job.bias_stddev);
    }
  }

  // Inputs x_0: element sample * n_0 + j.
  if (job.uniform_input) {
    fill_uniform<T>(stream, x_of(0), B * n[0], key(StreamKind::inputs, 0), job.input_mean - job.input_scale,
                    job.input_mean + job.input_scale);
  } else {
    fill_normal<T>(stream, x_of(0), B * n[0], key(StreamKind::inputs, 0), job.input_mean, job.input_scale);
  }

  const ActArgs<T> act{static_cast<int>(job.activation), static_cast<T>(job.act_p0), static_cast<T>(job.act_p1)};
  for (int l = 1; l <= L; ++l) {
    const std::int64_t n_in = n[l - 1], n_out = n[l];
    const T* w = W + plan.w_off[static_cast<std::size_t>(l - 1)];
    T* h = x_of(l);
    timed_gemm(CUBLAS_OP_N, CUBLAS_OP_N, n_out, B, n_in, w, n_out, x_of(l - 1), n_in, h, n_out);
    const std::int64_t col_blocks = (n_out + kTileCols - 1) / kTileCols;
    const std::int64_t row_blocks = (B + kTileRows - 1) / kTileRows;
    const DropoutArgs<T> drop{job.dropout ? 1 : 0, static_cast<T>(job.keep), static_cast<T>(job.dropout_a),
                              static_cast<T>(job.dropout_b), static_cast<T>(job.dropped_value),
                              key(StreamKind::dropout, l)};
    forward_kernel<T><<<static_cast<unsigned>(col_blocks * row_blocks), dim3(kTileCols, kTileRowThreads), 0, stream>>>(
        h, D + plan.d_off[static_cast<std::size_t>(l - 1)],
        job.bias ? bias + plan.b_off[static_cast<std::size_t>(l - 1)] : nullptr, B, n_out, col_blocks, act, drop,
        forward_part.as<double>(), colsum_part.as<double>());
    SELFNORM_LAUNCHED("forward_kernel");
    forward_finish_kernel<<<1, kThreads, 0, stream>>>(forward_part.as<double>(), col_blocks * row_blocks,
                                                      colsum_part.as<double>(), row_blocks, n_out, B,
                                                      layers + static_cast<std::size_t>(l - 1) * kLayerFields);
    SELFNORM_LAUNCHED("forward_finish_kernel");
  }

  // Backward: g = dL/dx_L ~ N(0, 1), element sample * n_L + j.
  fill_normal<T>(stream, delta_of(L), B * n[L], key(StreamKind::upstream, L), 0.0, 1.0);
  double* rpart = reduce_part.as<double>();
  for (int l = L; l >= 1; --l) {
    const std::int64_t n_in = n[l - 1], n_out = n[l];
    T* d = delta_of(l);
    double* layer = layers + static_cast<std::size_t>(l - 1) * kLayerFields;
    const std::int64_t count = B * n_out;
    const unsigned blocks = reduce_grid(count);
    backward_kernel<T><<<blocks, kThreads, 0, stream>>>(d, D + plan.d_off[static_cast<std::size_t>(l - 1)], count,
                                                        rpart);
    SELFNORM_LAUNCHED("backward_kernel");
    sum_finish_kernel<3><<<1, kThreads, 0, stream>>>(rpart, static_cast<int>(blocks), layer + 7);
    SELFNORM_LAUNCHED("sum_finish_kernel");
    const T* w = W + plan.w_off[static_cast<std::size_t>(l - 1)];
    if (l > 1) timed_gemm(CUBLAS_OP_T, CUBLAS_OP_N, n_in, B, n_out, w, n_out, d, n_out, delta_of(l - 1), n_in);
    if (job.weight_gradients) {
      T* g = grad.as<T>();
      timed_gemm(CUBLAS_OP_N, CUBLAS_OP_T, n_out, n_in, B, d, n_out, x_of(l - 1), n_in, g, n_out);
      const std::int64_t gcount = n_in * n_out;
      const unsigned gblocks = reduce_grid(gcount);
      sum_squares_kernel<T><<<gblocks, kThreads, 0, stream>>>(g, gcount, rpart);
      SELFNORM_LAUNCHED("sum_squares_kernel");
      sum_finish_kernel<1><<<1, kThreads, 0, stream>>>(rpart, static_cast<int>(gblocks), layer + 10);
      SELFNORM_LAUNCHED("sum_finish_kernel");
    }
  }
  SELFNORM_CUDA(cudaEventRecord(trial_end, stream));
  SELFNORM_CUDA(cudaMemcpyAsync(layer_host.data(), layers, layer_host.size() * sizeof(double), cudaMemcpyDeviceToHost,
                                stream));
  SELFNORM_CUDA(cudaStreamSynchronize(stream));

  float ms = 0.0f;
  SELFNORM_CUDA(cudaEventElapsedTime(&ms, trial_start, trial_end));
  timing.total_seconds += 1e-3 * ms;
  for (std::size_t k = 0; k + 1 < ev; k += 2) {
    SELFNORM_CUDA(cudaEventElapsedTime(&ms, events[k], events[k + 1]));
    timing.gemm_seconds += 1e-3 * ms;
    ++timing.gemm_calls;
  }
  for (int l = 0; l < L; ++l) {
    const double* f = layer_host.data() + static_cast<std::size_t>(l) * kLayerFields;
    LayerMoments& o = out[l];
    o.count = f[0];
    o.pre_mean = f[1];
    o.pre_m2 = f[2];
    o.act_mean = f[3];
    o.act_m2 = f[4];
    o.unit_mean_spread = f[5];
    o.nonfinite = f[6];
    o.grad_act_sq = f[7];
    o.grad_pre_sq = f[8];
    o.grad_nonfinite = f[9];
    o.grad_weight_sq = job.weight_gradients ? f[10] : 0.0;
  }
}

}  // namespace selfnorm::cuda
