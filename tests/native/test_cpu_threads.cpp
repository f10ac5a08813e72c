// run_parts: every part runs exactly once, on the calling thread and at most threads - 1 helpers,
// for part counts below, at and above the thread count (and none at all).
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

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

// Helpers come from a pool: over many calls the same helper threads (kernel thread ids) run the
// parts, where starting threads per call would show a new id each time.
PONDER_TEST(run_parts_reuses_pooled_helpers_across_calls) {
  std::mutex mu;
  std::set<long> helper_tids;
  const long caller = static_cast<long>(syscall(SYS_gettid));
  for (int call = 0; call < 50; ++call) {
    std::atomic<int64_t> count{0};
    ponder::run_parts(64, 3, [&](int64_t) {
      count.fetch_add(1);
      const long tid = static_cast<long>(syscall(SYS_gettid));
      // a part long enough for the helpers to wake and take some
      std::this_thread::sleep_for(std::chrono::microseconds(200));
      if (tid != caller) {
        std::lock_guard<std::mutex> lock(mu);
        helper_tids.insert(tid);
      }
    });
    CHECK_EQ(count.load(), 64);
  }
  CHECK(!helper_tids.empty());
  CHECK(helper_tids.size() <= 2);
}

// Calls from several threads at once (one gets the pool, the others start their own helpers)
// and a part that itself calls run_parts: every part still runs exactly once.
PONDER_TEST(run_parts_from_concurrent_and_nested_calls) {
  std::atomic<int64_t> total{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 4; ++c) {
    callers.emplace_back([&] {
      for (int call = 0; call < 20; ++call) {
        ponder::run_parts(8, 2, [&](int64_t) {
          ponder::run_parts(5, 2, [&](int64_t) { total.fetch_add(1); });
        });
      }
    });
  }
  for (auto& t : callers) t.join();
  CHECK_EQ(total.load(), int64_t{4} * 20 * 8 * 5);
}

// A child forked after the pool exists has none of its threads: its calls must not wait for
// them (an alarm ends a child that hangs).
PONDER_TEST(run_parts_in_a_forked_child) {
  std::atomic<int64_t> before{0};
  ponder::run_parts(16, 2, [&](int64_t) { before.fetch_add(1); });
  CHECK_EQ(before.load(), 16);
  const pid_t pid = fork();
  if (pid == 0) {
    alarm(20);
    std::atomic<int64_t> count{0};
    for (int call = 0; call < 10; ++call) ponder::run_parts(16, 2, [&](int64_t) { count.fetch_add(1); });
    _exit(count.load() == 160 ? 0 : 1);
  }
  CHECK(pid > 0);
  int status = 0;
  CHECK(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}
