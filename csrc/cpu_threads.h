// Splitting one host-kernel call over threads. The calling thread and up to threads - 1 helper
// threads take numbered parts of the work from one counter until none is left, so a helper
// that starts late (its core busy with another process, or with torch's idle threads spinning)
// leaves its parts to the others instead of holding the call up, and a helper the system
// cannot start leaves all of them to the calling thread. Which thread runs a part never changes
// what the part computes, so results are the same bits whichever way the parts are shared out.
//
// Helpers come from a process-wide pool of sleeping threads (cpu_threads.cpp): waking one costs
// a few microseconds where starting a thread cost about 30, and a decode step makes over a
// hundred such calls. A call that finds the pool in use by another call (a second Python
// thread, a nested call), or that wants more helpers than the pool keeps, or that runs in a
// process forked from the one that made the pool, starts its own threads as before.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <system_error>
#include <thread>
#include <vector>

namespace ponder {

// Calls part(i) once for every i in [0, num_parts), on the calling thread and up to
// min(num_threads, num_parts) - 1 helpers; returns when all parts are done. part must not throw.
namespace detail {

// Runs task(ctx) on the calling thread and on `helpers` pooled threads, returning when all of
// them have returned (a pooled thread that has not picked the call up by the time the calling
// thread's task returns is not waited for and does not run it). Returns false, running nothing,
// when the pool cannot take the call (see the top of this file). task must not throw.
bool run_on_pool(int helpers, void (*task)(void*), void* ctx);

}  // namespace detail

template <typename Part>
void run_parts(int64_t num_parts, int num_threads, Part&& part) {
  if (num_parts <= 0) return;
  std::atomic<int64_t> next{0};
  auto work = [&] {
    for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < num_parts;
         i = next.fetch_add(1, std::memory_order_relaxed))
      part(i);
  };
  const int64_t helpers_wanted = std::min<int64_t>(std::max(num_threads, 1), num_parts) - 1;
  if (helpers_wanted <= 0) {
    work();
    return;
  }
  using Work = decltype(work);
  if (detail::run_on_pool(static_cast<int>(helpers_wanted), [](void* w) { (*static_cast<Work*>(w))(); }, &work)) {
    return;
  }
  std::vector<std::thread> helpers;
  helpers.reserve(static_cast<size_t>(helpers_wanted));
  for (int64_t t = 0; t < helpers_wanted; ++t) {
    try {
      helpers.emplace_back(work);
    } catch (const std::system_error&) {
      break;  // no thread to be had: the calling thread takes the parts it would have run
    }
  }
  work();
  for (auto& h : helpers) h.join();
}

// Calls rows(r0, r1) over [0, num_rows) in contiguous runs: on the calling thread alone for
// calls of fewer than 2 * min_macs multiply-adds (`macs`, the whole call's), else on up to
// num_threads threads, `parts_per_thread` runs each (so that a helper that starts late leaves
// its share to the others). For kernels whose rows do not depend on each other, so the result
// is the same at any thread count. rows must not throw.
template <typename Rows>
void split_rows(int64_t num_rows, int64_t macs, int num_threads, int64_t min_macs, int64_t parts_per_thread,
                Rows&& rows) {
  const int64_t threads = std::max<int64_t>(
      1, std::min<int64_t>({static_cast<int64_t>(std::max(num_threads, 1)), num_rows, macs / min_macs}));
  if (threads <= 1) {
    rows(int64_t{0}, num_rows);
    return;
  }
  const int64_t parts = std::min<int64_t>(num_rows, threads * parts_per_thread);
  run_parts(parts, static_cast<int>(threads),
            [&](int64_t i) { rows(num_rows * i / parts, num_rows * (i + 1) / parts); });
}

}  // namespace ponder
