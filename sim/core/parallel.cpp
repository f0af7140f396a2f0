#include "core/parallel.hpp"

#include <atomic>
#include <cassert>
#include <exception>
#include <mutex>
#include <thread>

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

// Thrown out of barrier() and pause() in the ranks that are still running once one has left the
// team by an exception; run_team reports that one.
struct TeamAborted : std::exception {
  const char* what() const noexcept override { return "another thread of the team failed"; }
};

// Spin waits pause this many times before they start yielding the processor to other threads.
constexpr unsigned kSpinsBeforeYield = 1u << 14;

void spin(unsigned& spins) {
  if (spins < kSpinsBeforeYield) {
    ++spins;
    cpu_pause();
  } else {
    std::this_thread::yield();
  }
}

}  // namespace

namespace detail {
// What the ranks of one team share: a counting barrier, and whether a rank has thrown.
struct TeamState {
  int size = 1;
  std::atomic<int> arrived{0};
  std::atomic<std::uint64_t> generation{0};
  std::atomic<bool> aborted{false};
};
}  // namespace detail

void Team::barrier() const {
  if (size_ <= 1) return;
  assert(state_ != nullptr && state_->size == size_);
  detail::TeamState& s = *state_;
  // The generation cannot move on before this rank arrives, so reading it first is safe. The last
  // to arrive resets the count before it releases the others, so the next barrier counts afresh;
  // its release (and the acquire-release chain of arrivals before it) makes every rank's writes
  // before the barrier visible to every rank after it.
  const std::uint64_t generation = s.generation.load(std::memory_order_acquire);
  if (s.arrived.fetch_add(1, std::memory_order_acq_rel) == size_ - 1) {
    s.arrived.store(0, std::memory_order_relaxed);
    s.generation.fetch_add(1, std::memory_order_release);
    return;
  }
  unsigned spins = 0;
  while (s.generation.load(std::memory_order_acquire) == generation) {
    if (s.aborted.load(std::memory_order_acquire)) throw TeamAborted();
    spin(spins);
  }
}

void Team::pause() const {
  if (state_ && state_->aborted.load(std::memory_order_acquire)) throw TeamAborted();
  cpu_pause();
}

void run_team(int threads, const std::function<void(const Team&)>& body) {
  FirstException error;
  if (threads <= 1) {
    FlushDenormals ftz;
    body(Team(0, 1));
    return;
  }
  detail::TeamState state;
#pragma omp parallel num_threads(threads)
  {
#pragma omp single
    state.size = omp_get_num_threads();  // the single's implicit barrier publishes it
    FlushDenormals ftz;
    const Team team(omp_get_thread_num(), state.size, &state);
    try {
      body(team);
    } catch (...) {
      // The first exception is kept before the others are told to leave, so that theirs
      // (TeamAborted) is never the one reported.
      error.capture();
      state.aborted.store(true, std::memory_order_release);
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
    assert(id >= 0 && id < size && size <= (threads > 1 ? threads : 1));
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
