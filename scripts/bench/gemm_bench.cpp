// The engine's matrix products alone, on the engine's shapes and layouts (sim/core/gemm.hpp): how
// close the kernels come to the machine's peak without the rest of a run around them. Each thread
// multiplies its own row block of activations (panels) by weight strips shared by all threads, as
// the engine does in samples mode: forward (A = W^T as strips) or backward (A = W, the same strips
// read as panels). With --cold, the weights cycle through enough matrices (64 MiB and more) that
// every product reads them from memory, as a run does; otherwise one matrix stays in cache.
// --matmul bf16x6 times the float32 products on the AMX tile units instead (core/amx.hpp), with the
// split copies of both operands in their layouts; forward and backward are the same kernel there.
//
//   gemm_bench [--width N] [--rows R] [--threads T] [--direction forward|backward] [--precision
//              float32|float64] [--matmul fma|bf16x6] [--cold] [--repeat K]
//
// (exit status 77 for --matmul bf16x6 where there are no tile units)
// prints JSON: {"direction": ..., "precision": ..., "matmul": ..., "width": N, "rows": R, "threads":
// T, "cold": bool, "gflops": total GFLOP/s (median of K rounds), "per_thread": [...]}. Divide by
// fma_peak's figure for the fraction of peak.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "core/amx.hpp"
#include "core/gemm.hpp"

namespace {

using selfnorm::gemm;
using selfnorm::kPanel;
using selfnorm::kStrip;
using selfnorm::PanelView;
using selfnorm::StripView;

struct Options {
  std::int64_t width = 1024;
  std::int64_t rows = 256;
  int threads = static_cast<int>(std::thread::hardware_concurrency());
  bool backward = false;
  bool float64 = false;
  bool cold = false;
  bool bf16x6 = false;
  int repeat = 5;
};

// 64-byte aligned storage, as the engine's buffers are: with std::vector's 16-byte alignment
// every vector load of a panel would straddle two cache lines, which costs the kernels 3-6%.
template <class T>
struct Aligned {
  using value_type = T;
  Aligned() = default;
  template <class U>
  Aligned(const Aligned<U>&) {}  // NOLINT(google-explicit-constructor): allocator rebinding
  T* allocate(std::size_t n) {
    const std::size_t bytes = (n * sizeof(T) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, bytes);
    if (p == nullptr) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t) { std::free(p); }
  friend bool operator==(const Aligned&, const Aligned&) { return true; }
};
template <class T>
using AlignedVector = std::vector<T, Aligned<T>>;

template <class T>
AlignedVector<T> filled(std::size_t count, double scale) {
  AlignedVector<T> v(count);
  for (std::size_t i = 0; i < count; ++i) v[i] = static_cast<T>(scale * static_cast<double>(i % 17) - 8 * scale);
  return v;
}

// Prints the JSON line: per thread the median round, the total their sum (the threads run side by
// side).
int report(const Options& o, std::vector<std::vector<double>>& seconds, double flop, std::int64_t n,
           std::int64_t rows) {
  std::vector<double> per_thread;
  double total = 0;
  for (auto& s : seconds) {
    std::sort(s.begin(), s.end());
    per_thread.push_back(flop / s[s.size() / 2] / 1e9);
    total += per_thread.back();
  }
  std::printf("{\"direction\": \"%s\", \"precision\": \"%s\", \"matmul\": \"%s\", \"width\": %lld, \"rows\": %lld, "
              "\"threads\": %d, \"cold\": %s, \"gflops\": %.1f, \"per_thread\": [",
              o.backward ? "backward" : "forward", o.float64 ? "float64" : "float32", o.bf16x6 ? "bf16x6" : "fma",
              static_cast<long long>(n), static_cast<long long>(rows), o.threads, o.cold ? "true" : "false", total);
  for (std::size_t t = 0; t < per_thread.size(); ++t) std::printf("%s%.1f", t ? ", " : "", per_thread[t]);
  std::printf("]}\n");
  return 0;
}

// Weight matrices to cycle through: enough that cycling evicts every cache (>= 64 MiB), or one.
int matrix_count(const Options& o, double matrix_bytes) {
  return o.cold ? std::max(2, static_cast<int>(64.0 * 1024 * 1024 / matrix_bytes) + 1) : 1;
}

// Times o.repeat rounds of `products` products on each of o.threads threads, side by side, and
// reports them. setup() runs on each thread: it allocates the thread's operands and returns the
// product, called as multiply(p, done) for product p.
template <class C, class Setup>
int time_products(const Options& o, int products, std::int64_t rows, Setup setup) {
  const double flop = 2.0 * static_cast<double>(o.width) * static_cast<double>(o.width) * static_cast<double>(rows);
  std::vector<std::vector<double>> seconds(static_cast<std::size_t>(o.threads));
  auto work = [&](int t) {
    auto multiply = setup();
    double sink = 0;
    auto done = [&](std::int64_t, std::int64_t, const C* block, std::ptrdiff_t) { sink += static_cast<double>(block[0]); };
    for (int r = 0; r < o.repeat; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int p = 0; p < products; ++p) multiply(p, selfnorm::RowsDone<C>(done));
      seconds[static_cast<std::size_t>(t)].push_back(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / products);
    }
    if (sink == 12345.678) std::puts("");  // keeps the products observable
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < o.threads; ++t) pool.emplace_back(work, t);
  for (auto& th : pool) th.join();
  return report(o, seconds, flop, o.width, rows);
}

// On the tile units: weights as split A tiles, activations as split B panels (bfloat16 bit
// patterns of values near 1; the kernel's speed does not depend on them).
int run_bf16x6(const Options& o) {
  namespace amx = selfnorm::amx;
  const std::int64_t n = o.width;
  const std::int64_t panels = (o.rows + kPanel<float> - 1) / kPanel<float>;
  const std::ptrdiff_t bs = amx::b_plane_stride(n);
  const auto a_count = static_cast<std::size_t>(amx::a_size(n, n));
  const int matrices = matrix_count(o, static_cast<double>(a_count) * 2);
  auto bf16_filled = [](std::size_t count) {
    AlignedVector<std::uint16_t> v(count);
    for (std::size_t i = 0; i < count; ++i) v[i] = static_cast<std::uint16_t>(0x3f80 + i % 7);
    return v;
  };
  std::vector<AlignedVector<std::uint16_t>> weights;
  for (int w = 0; w < matrices; ++w) weights.push_back(bf16_filled(a_count));
  return time_products<float>(o, std::max(8, matrices), panels * kPanel<float>, [&] {
    return [&, x = bf16_filled(static_cast<std::size_t>(panels * amx::kPlanes * bs)),
            c = AlignedVector<float>(selfnorm::gemm_block_size<float>(panels))](int p, selfnorm::RowsDone<float> done) mutable {
      const amx::SplitA a{weights[static_cast<std::size_t>(p % matrices)].data(), amx::row_tiles(n),
                          amx::round_k(n) / amx::kChunk};
      amx::gemm(n, n, panels, a, amx::SplitB{x.data(), bs}, c.data(), done);
    };
  });
}

template <class T>
int run(const Options& o) {
  const std::int64_t n = o.width;
  const std::int64_t strips = (n + kStrip - 1) / kStrip;
  const std::ptrdiff_t ss = selfnorm::padded_ld(strips * kStrip * kStrip, sizeof(T));
  const std::int64_t panels = (o.rows + kPanel<T> - 1) / kPanel<T>;
  const std::ptrdiff_t ps = selfnorm::padded_ld(strips * kStrip * kPanel<T>, sizeof(T));
  const int matrices = matrix_count(o, static_cast<double>(strips * ss) * sizeof(T));
  std::vector<AlignedVector<T>> weights;
  for (int w = 0; w < matrices; ++w) weights.push_back(filled<T>(static_cast<std::size_t>(strips * ss), 0.01));
  return time_products<T>(o, std::max(8, matrices), panels * kPanel<T>, [&] {
    return [&, x = filled<T>(static_cast<std::size_t>(panels * ps), 0.02),
            c = AlignedVector<T>(selfnorm::gemm_block_size<T>(panels))](int p, selfnorm::RowsDone<T> done) mutable {
      const T* w = weights[static_cast<std::size_t>(p % matrices)].data();
      const PanelView<T> b{x.data(), ps, kPanel<T>};
      if (o.backward) {
        gemm<T>(n, n, panels, PanelView<T>{w, ss, kStrip}, b, c.data(), done);
      } else {
        gemm<T>(n, n, panels, StripView<T>{w, ss}, b, c.data(), done);
      }
    };
  });
}

constexpr const char* kUsage =
    "usage: gemm_bench [--width N] [--rows R] [--threads T] [--direction forward|backward] "
    "[--precision float32|float64] [--matmul fma|bf16x6] [--cold] [--repeat K]\n"
    "The engine's matrix products alone, on its shapes and layouts; prints JSON with the median GFLOP/s of K "
    "rounds (defaults: width 1024, 256 rows per thread, every processor, forward, float32, fma, weights in "
    "cache, 5 rounds). --cold cycles the weights through 64 MiB or more, as a run reads them.\n";

int usage(const char* problem) {
  std::fprintf(stderr, "gemm_bench: %s\n%s", problem, kUsage);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    const bool has_value = i + 1 < argc;
    if (a == "--width" && has_value) {
      o.width = std::atoll(argv[++i]);
    } else if (a == "--rows" && has_value) {
      o.rows = std::atoll(argv[++i]);
    } else if (a == "--threads" && has_value) {
      o.threads = std::atoi(argv[++i]);
    } else if (a == "--repeat" && has_value) {
      o.repeat = std::atoi(argv[++i]);
    } else if (a == "--direction" && has_value) {
      const std::string d = argv[++i];
      if (d != "forward" && d != "backward") return usage("--direction must be forward or backward");
      o.backward = d == "backward";
    } else if (a == "--precision" && has_value) {
      const std::string p = argv[++i];
      if (p != "float32" && p != "float64") return usage("--precision must be float32 or float64");
      o.float64 = p == "float64";
    } else if (a == "--matmul" && has_value) {
      const std::string m = argv[++i];
      if (m != "fma" && m != "bf16x6") return usage("--matmul must be fma or bf16x6");
      o.bf16x6 = m == "bf16x6";
    } else if (a == "--cold") {
      o.cold = true;
    } else {
      return usage(("unknown or incomplete argument " + a).c_str());
    }
  }
  if (o.width < 1 || o.rows < 1 || o.threads < 1 || o.repeat < 1) {
    return usage("--width, --rows, --threads and --repeat must be >= 1");
  }
  if (o.bf16x6) {
    if (o.float64) return usage("--matmul bf16x6 computes float32 products only");
    if (!selfnorm::amx::available()) {
      std::fprintf(stderr, "gemm_bench: --matmul bf16x6 needs a CPU with AMX-BF16 and a build for it\n");
      return 77;  // "skipped" to CTest
    }
    return run_bf16x6(o);
  }
  return o.float64 ? run<double>(o) : run<float>(o);
}
