// The helper pool behind run_parts (cpu_threads.h).
#include "cpu_threads.h"

#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include <unistd.h>

namespace ponder {
namespace detail {

namespace {

// More helpers than this are never pooled (a call asking for more starts its own threads).
constexpr int kMaxPooled = 64;

class HelperPool {
 public:
  HelperPool() : pid_(getpid()) {}

  bool run(int helpers, void (*task)(void*), void* ctx) {
    if (helpers > kMaxPooled || getpid() != pid_) return false;
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      while (static_cast<int>(started_) < helpers) {
        try {
          // the new thread starts from the generation before this call's, so it can join this call
          std::thread(&HelperPool::loop, this, static_cast<int>(started_), generation_).detach();
        } catch (const std::system_error&) {
          break;  // no more threads to be had: the call uses the ones there are
        }
        ++started_;
      }
      task_ = task;
      ctx_ = ctx;
      wanted_ = std::min(helpers, static_cast<int>(started_));
      ++generation_;
    }
    wake_.notify_all();
    task(ctx);
    std::unique_lock<std::mutex> lock(mutex_);
    wanted_ = 0;  // helpers that have not picked the call up yet leave it alone
    idle_.wait(lock, [&] { return running_ == 0; });
    task_ = nullptr;
    ctx_ = nullptr;
    return true;
  }

 private:
  void loop(int index, uint64_t seen) {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (index >= wanted_) continue;  // not asked this time, or the call is already over
      ++running_;
      void (*task)(void*) = task_;
      void* ctx = ctx_;
      lock.unlock();
      task(ctx);
      lock.lock();
      if (--running_ == 0) idle_.notify_all();
    }
  }

  const pid_t pid_;
  std::mutex busy_;   // held by the call using the pool
  std::mutex mutex_;  // guards everything below
  std::condition_variable wake_, idle_;
  uint64_t generation_ = 0;
  unsigned started_ = 0;
  int wanted_ = 0;
  int running_ = 0;
  void (*task_)(void*) = nullptr;
  void* ctx_ = nullptr;
};

}  // namespace

bool run_on_pool(int helpers, void (*task)(void*), void* ctx) {
  // Never destroyed: its threads sleep until the process exits.
  static HelperPool* pool = new HelperPool();
  return pool->run(helpers, task, ctx);
}

}  // namespace detail
}  // namespace ponder
