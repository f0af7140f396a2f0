// Threads for the engine. This is the only place that knows about OpenMP: the engine describes
// its work as a team of cooperating ranks or as independent indexed tasks, and never sees a
// pragma. run_tasks and Team::owns assign work statically (task i goes to rank i % size, where size
// is the number of threads OpenMP gives, which may be fewer than asked for). The
// engine also hands some work to whichever rank takes it first (drawing a layer's weights, the
// next backward chain), always work whose result does not depend on who computes it: results
// never depend on timing or on the number of threads.
#pragma once

#include <cstdint>
#include <functional>

namespace selfnorm {

namespace detail {
struct TeamState;
}

// One member of a team running the same body. Ranks are 0..size-1.
class Team {
 public:
  Team(int rank, int size, detail::TeamState* state = nullptr) : rank_(rank), size_(size), state_(state) {}
  int rank() const { return rank_; }
  int size() const { return size_; }
  // True if this rank owns task `index` in the static round-robin assignment.
  bool owns(std::int64_t index) const { return index % size_ == rank_; }
  // Waits for every rank of the team. Every rank must call it the same number of times. If a rank
  // has left the team by an exception, the others leave the barrier by an exception too instead of
  // waiting for it forever (run_team rethrows the first).
  void barrier() const;
  // One step of a spin wait for work of another rank (see cpu_pause); leaves by an exception, as
  // barrier() does, once a rank has left the team by one.
  void pause() const;

 private:
  int rank_;
  int size_;
  detail::TeamState* state_;
};

// Runs body(team) on up to `threads` threads that form one team (OpenMP may give fewer); returns
// when all have finished. The first exception any rank throws is rethrown here after the team has
// ended; the other ranks leave at their next barrier() or pause().
void run_team(int threads, const std::function<void(const Team&)>& body);

// Runs body(index, worker, team_of_one) for index in [0, count) on up to `threads` threads, index i
// on thread i % size, where size is the number of threads OpenMP gives (OMP_THREAD_LIMIT or
// OMP_DYNAMIC may give fewer than asked for). `worker` in [0, size) is the thread running the task:
// per-thread resources are indexed by it, never by the task, since two tasks run at the same time
// only on different workers. The first exception is rethrown after all tasks have ended.
void run_tasks(int threads, std::int64_t count,
               const std::function<void(std::int64_t index, int worker, const Team& solo)>& body);

// Tells the CPU that the thread is spinning while it waits for another (x86's pause), so that
// the wait costs the other hardware thread of its core less.
inline void cpu_pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// True on the thread that called run_team/run_tasks (OpenMP thread 0), false on the others.
bool is_main_thread();

// Number of processors available to this process.
int available_processors();

}  // namespace selfnorm
