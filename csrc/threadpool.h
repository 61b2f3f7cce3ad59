// Minimal parallel-for over a fixed task list: N std::threads pull task indices from an atomic
// counter. The first exception thrown by any task stops the others and is rethrown to the caller.
#pragma once

#include <algorithm>
#include <atomic>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace bulkformer {

inline int resolve_threads(int requested) {
  if (requested > 0) return requested;
  unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

// Runs fn(worker_id, task_index) for task_index in [0, n_tasks) on `threads` threads.
// worker_id is in [0, threads) so callers can keep per-worker state without locks.
inline void parallel_for(int64_t n_tasks, int threads,
                         const std::function<void(int, int64_t)>& fn) {
  threads = std::max(1, std::min<int>(threads, static_cast<int>(std::max<int64_t>(n_tasks, 1))));
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex error_mu;
  auto worker = [&](int wid) {
    for (;;) {
      if (failed.load(std::memory_order_relaxed)) return;
      const int64_t t = next.fetch_add(1, std::memory_order_relaxed);
      if (t >= n_tasks) return;
      try {
        fn(wid, t);
      } catch (...) {
        std::lock_guard<std::mutex> lk(error_mu);
        if (!error) error = std::current_exception();
        failed = true;
        return;
      }
    }
  };
  if (threads == 1) {
    worker(0);
  } else {
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (int i = 0; i < threads; ++i) pool.emplace_back(worker, i);
    for (auto& th : pool) th.join();
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace bulkformer
