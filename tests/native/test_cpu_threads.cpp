// run_parts: every part runs exactly once, on the calling thread and at most threads - 1 helpers,
// for part counts below, at and above the thread count (and none at all).
#include <atomic>
#include <cstdint>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "check.h"
#include "cpu_threads.h"

PONDER_TEST(run_parts_runs_every_part_once_on_at_most_the_threads_given) {
  for (int64_t parts : {0, 1, 3, 64, 1000}) {
    for (int threads : {1, 2, 5, 300}) {
      std::vector<std::atomic<int>> runs(static_cast<size_t>(parts));
      for (auto& r : runs) r.store(0);
      std::mutex mu;
      std::set<std::thread::id> ids;
      ponder::run_parts(parts, threads, [&](int64_t i) {
        runs[static_cast<size_t>(i)].fetch_add(1);
        std::lock_guard<std::mutex> lock(mu);
        ids.insert(std::this_thread::get_id());
      });
      for (auto& r : runs) CHECK_EQ(r.load(), 1);
      CHECK(static_cast<int64_t>(ids.size()) <= std::min<int64_t>(threads, std::max<int64_t>(parts, 1)));
      if (threads == 1 && parts > 0) CHECK(ids.count(std::this_thread::get_id()) == 1);
    }
  }
}

// A part that blocks until every other part is done cannot hold the call up: the parts of a
// helper that is busy (or never started) are taken by the threads that are free.
PONDER_TEST(run_parts_hands_a_busy_threads_share_to_the_others) {
  const int64_t parts = 40;
  std::atomic<int64_t> done{0};
  ponder::run_parts(parts, 2, [&](int64_t i) {
    if (i == 0) {
      while (done.load() < parts - 1) std::this_thread::yield();
    }
    done.fetch_add(1);
  });
  CHECK_EQ(done.load(), parts);
}
