// The machine's floating-point peak, measured: every thread runs independent fused multiply-adds
// on the widest vectors the build targets (AVX-512, else AVX2 + FMA), enough chains in flight to
// fill both FMA pipes, and the best of several rounds is kept. The benchmark divides achieved
// GEMM rates by these figures. Where the CPU has AMX-BF16 (and the build targets it), it also
// measures the tile units' bfloat16 peak: TDPBF16PS on tiles held in registers, four independent
// accumulators; selfnorm's bf16x6 float32 products need six of them per product, so their
// ceiling is a sixth of it.
//
//   fma_peak [--threads N]   prints JSON: {"isa": ..., "threads": N, "float32_gflops": ..., "float64_gflops": ...,
//                            "amx_bf16_gflops": ... (null without AMX)}
#include <immintrin.h>

#include "core/amx.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace {

#if defined(__AVX512F__)
constexpr const char* kIsa = "avx512";
using VF = __m512;
using VD = __m512d;
inline VF fma(VF a, VF b, VF c) { return _mm512_fmadd_ps(a, b, c); }
inline VD fma(VD a, VD b, VD c) { return _mm512_fmadd_pd(a, b, c); }
inline VF splat(float x) { return _mm512_set1_ps(x); }
inline VD splat(double x) { return _mm512_set1_pd(x); }
inline float first(VF v) { return _mm512_cvtss_f32(v); }
inline double first(VD v) { return _mm512_cvtsd_f64(v); }
#elif defined(__AVX2__) && defined(__FMA__)
constexpr const char* kIsa = "avx2";
using VF = __m256;
using VD = __m256d;
inline VF fma(VF a, VF b, VF c) { return _mm256_fmadd_ps(a, b, c); }
inline VD fma(VD a, VD b, VD c) { return _mm256_fmadd_pd(a, b, c); }
inline VF splat(float x) { return _mm256_set1_ps(x); }
inline VD splat(double x) { return _mm256_set1_pd(x); }
inline float first(VF v) { return _mm256_cvtss_f32(v); }
inline double first(VD v) { return _mm256_cvtsd_f64(v); }
#else
#error "fma_peak needs AVX2 with FMA or AVX-512 (build with -march=native on such a machine)"
#endif

// Independent accumulators: FMA latency (4 cycles) x 2 pipes = 8 would do; more leave margin. All
// of them, with the two constant operands, must fit in the vector registers (32 with AVX-512, 16
// with AVX2): 16 chains spilled to the stack with AVX2 and read a peak 30% below what selfnorm's
// GEMM kernels reach.
#if defined(__AVX512F__)
constexpr int kChains = 16;
#else
constexpr int kChains = 12;
#endif
constexpr long kIterations = 50'000'000;

// Runs kIterations rounds of kChains FMAs on vectors of T; returns a value that depends on all of
// them, so the compiler keeps the work.
template <class V, class T>
T spin() {
  V acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = splat(static_cast<T>(i));
  const V b = splat(static_cast<T>(0.999999)), c = splat(static_cast<T>(1e-7));
  for (long k = 0; k < kIterations; ++k) {
#pragma GCC unroll 16
    for (int i = 0; i < kChains; ++i) acc[i] = fma(acc[i], b, c);
  }
  T sum = 0;
  for (int i = 0; i < kChains; ++i) sum += first(acc[i]);
  return sum;
}

// GFLOP/s of `threads` threads each running spin<V, T>, best of `rounds`.
template <class V, class T>
double measure(int threads, int rounds) {
  constexpr double lanes = sizeof(V) / sizeof(T);
  const double flop = 2.0 * lanes * kChains * static_cast<double>(kIterations) * threads;
  double best = 0.0;
  std::vector<T> sink(static_cast<std::size_t>(threads));
  for (int r = 0; r < rounds; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) pool.emplace_back([&sink, t] { sink[static_cast<std::size_t>(t)] = spin<V, T>(); });
    for (auto& t : pool) t.join();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, flop / s / 1e9);
  }
  if (sink[0] == static_cast<T>(-1)) std::puts("");  // keeps the results observable
  return best;
}

#if defined(SELFNORM_AMX)
constexpr long kTileIterations = 5'000'000;

// kTileIterations rounds of 4 TDPBF16PS (16 x 16 x 32 multiply-adds each) on tiles in registers.
float tile_spin() {
  selfnorm::amx::configure_tiles();
  alignas(64) static thread_local unsigned short ones[16 * 32];
  for (auto& v : ones) v = 0x3f80;  // 1.0 in bfloat16
  alignas(64) static thread_local float out[16 * 16];
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, ones, 64);
  _tile_loadd(5, ones, 64);
  _tile_loadd(6, ones, 64);
  _tile_loadd(7, ones, 64);
  for (long k = 0; k < kTileIterations; ++k) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, out, 64);
  return out[0];
}

double measure_amx(int threads, int rounds) {
  const double flop = 4.0 * 2 * 16 * 16 * 32 * static_cast<double>(kTileIterations) * threads;
  double best = 0.0;
  std::vector<float> sink(static_cast<std::size_t>(threads));
  for (int r = 0; r < rounds; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) pool.emplace_back([&sink, t] { sink[static_cast<std::size_t>(t)] = tile_spin(); });
    for (auto& t : pool) t.join();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, flop / s / 1e9);
  }
  if (sink[0] == -1.0f) std::puts("");
  return best;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  int threads = static_cast<int>(std::thread::hardware_concurrency());
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: fma_peak [--threads N]\n");
      return 2;
    }
  }
  if (threads < 1) {
    std::fprintf(stderr, "fma_peak: --threads must be >= 1\n");
    return 2;
  }
  const double f32 = measure<VF, float>(threads, 3);
  const double f64 = measure<VD, double>(threads, 3);
  char amx[32] = "null";
#if defined(SELFNORM_AMX)
  if (selfnorm::amx::available()) std::snprintf(amx, sizeof amx, "%.1f", measure_amx(threads, 3));
#endif
  std::printf("{\"isa\": \"%s\", \"threads\": %d, \"float32_gflops\": %.1f, \"float64_gflops\": %.1f, "
              "\"amx_bf16_gflops\": %s}\n",
              kIsa, threads, f32, f64, amx);
  return 0;
}
