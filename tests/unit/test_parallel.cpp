// The engine's threads (core/parallel): a team's barrier holds every rank until all arrive, a rank
// that throws ends the team with its exception instead of leaving the others waiting, and tasks
// never share a worker's resources, whatever number of threads OpenMP gives.
#include <catch2/catch.hpp>

#include <atomic>
#include <stdexcept>
#include <vector>

#include "core/parallel.hpp"

using namespace selfnorm;

TEST_CASE("a team's barrier lets no rank past until every rank has arrived", "[threads]") {
  constexpr int kThreads = 4;
  constexpr int kRounds = 500;
  std::vector<std::atomic<int>> round(kThreads);
  std::atomic<int> errors{0};
  std::atomic<int> ranks{0};
  run_team(kThreads, [&](const Team& team) {
    ranks.fetch_add(1);
    for (int r = 1; r <= kRounds; ++r) {
      round[static_cast<std::size_t>(team.rank())].store(r, std::memory_order_relaxed);
      team.barrier();
      for (int k = 0; k < team.size(); ++k) {
        if (round[static_cast<std::size_t>(k)].load(std::memory_order_relaxed) != r) errors.fetch_add(1);
      }
      team.barrier();  // nobody starts round r + 1 before everybody has checked round r
    }
  });
  CHECK(ranks.load() >= 2);  // a team of one would check nothing
  CHECK(errors.load() == 0);
}

TEST_CASE("a rank that throws ends the team with its exception; the others do not wait for it", "[threads]") {
  // Before: the other ranks waited at the barrier for the rank that had left, and the process hung.
  SECTION("the others are at a barrier") {
    CHECK_THROWS_WITH(run_team(2,
                               [](const Team& team) {
                                 if (team.rank() == 1) throw std::runtime_error("rank 1 ran out of memory");
                                 team.barrier();
                                 team.barrier();
                               }),
                      "rank 1 ran out of memory");
  }
  SECTION("the others spin on work the rank would have done") {
    std::atomic<bool> done{false};
    CHECK_THROWS_WITH(run_team(2,
                               [&](const Team& team) {
                                 if (team.rank() == 1) throw std::runtime_error("rank 1 failed");
                                 while (!done.load()) team.pause();
                               }),
                      "rank 1 failed");
  }
  SECTION("the team still works afterwards") {
    std::atomic<int> ran{0};
    run_team(2, [&](const Team& team) {
      team.barrier();
      ran.fetch_add(1);
    });
    CHECK(ran.load() == 2);
  }
}

TEST_CASE("run_tasks gives each task the thread it runs on, and no worker runs two tasks at once", "[threads]") {
  constexpr int kThreads = 3;
  constexpr std::int64_t kTasks = 60;
  std::vector<std::atomic<int>> busy(kThreads);
  std::vector<std::atomic<int>> ran(static_cast<std::size_t>(kTasks));
  std::atomic<int> clashes{0};
  std::atomic<int> bad_worker{0};
  run_tasks(kThreads, kTasks, [&](std::int64_t index, int worker, const Team& solo) {
    if (worker < 0 || worker >= kThreads || solo.size() != 1) {
      bad_worker.fetch_add(1);
      return;
    }
    if (busy[static_cast<std::size_t>(worker)].fetch_add(1) != 0) clashes.fetch_add(1);
    volatile double x = 0;
    for (int i = 0; i < 20000; ++i) x = x + i;  // long enough for other workers to overlap
    busy[static_cast<std::size_t>(worker)].fetch_sub(1);
    ran[static_cast<std::size_t>(index)].fetch_add(1);
  });
  CHECK(bad_worker.load() == 0);
  CHECK(clashes.load() == 0);
  for (std::int64_t i = 0; i < kTasks; ++i) CHECK(ran[static_cast<std::size_t>(i)].load() == 1);
}
