#include "core/parallel.hpp"

#include <exception>
#include <mutex>

#include <omp.h>

#if defined(__SSE__)
#include <xmmintrin.h>
#endif

namespace selfnorm {
namespace {

// Flush-to-zero and denormals-are-zero for the engine's threads. A vanishing signal (relu at
// depth 1000, say) otherwise runs into subnormal numbers, where every FMA takes a hundred cycles;
// with FTZ/DAZ such values become exact zeros, which the statistics record as 0.
class FlushDenormals {
 public:
  FlushDenormals() {
#if defined(__SSE__)
    saved_ = _mm_getcsr();
    _mm_setcsr(saved_ | 0x8040u);  // FTZ (bit 15) | DAZ (bit 6)
#endif
  }
  ~FlushDenormals() {
#if defined(__SSE__)
    _mm_setcsr(saved_);
#endif
  }
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
  unsigned saved_ = 0;
};

// Keeps the first exception thrown by any thread (celeritas' MultiExceptionHandler, simplified).
class FirstException {
 public:
  void capture() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!first_) first_ = std::current_exception();
  }
  void rethrow() {
    if (first_) std::rethrow_exception(first_);
  }

 private:
  std::mutex mutex_;
  std::exception_ptr first_;
};

}  // namespace

void Team::barrier() const {
  if (size_ > 1) {
#pragma omp barrier
  }
}

void run_team(int threads, const std::function<void(const Team&)>& body) {
  FirstException error;
  if (threads <= 1) {
    FlushDenormals ftz;
    body(Team(0, 1));
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    FlushDenormals ftz;
    const Team team(omp_get_thread_num(), omp_get_num_threads());
    try {
      body(team);
    } catch (...) {
      error.capture();
    }
  }
  error.rethrow();
}

void run_tasks(int threads, std::int64_t count,
               const std::function<void(std::int64_t index, int worker, const Team& solo)>& body) {
  FirstException error;
  const Team solo(0, 1);
#pragma omp parallel num_threads(threads > 1 ? threads : 1)
  {
    FlushDenormals ftz;
    const int id = omp_get_thread_num();
    const int size = omp_get_num_threads();
    for (std::int64_t i = id; i < count; i += size) {
      try {
        body(i, id, solo);
      } catch (...) {
        error.capture();
      }
    }
  }
  error.rethrow();
}

bool is_main_thread() { return omp_get_thread_num() == 0; }

int available_processors() { return omp_get_num_procs(); }

}  // namespace selfnorm
