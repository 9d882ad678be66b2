#include "node/worker_pool.h"

#include <doctest/doctest.h>

#include <atomic>
#include <set>
#include <thread>
#include <vector>

using ccal::node::WorkerPool;

TEST_CASE(
    "WorkerPool: every job runs once, on several threads, and forEach returns after the last") {
  WorkerPool pool(3);
  CHECK(pool.threads() == 3);
  for (size_t count : {size_t{0}, size_t{1}, size_t{2}, size_t{7}, size_t{1000}}) {
    std::vector<std::atomic<int>> runs(count);
    std::mutex m;
    std::set<std::thread::id> threads;
    pool.forEach(count, [&](size_t i) {
      runs[i].fetch_add(1);
      if (count >= 1000) std::this_thread::sleep_for(std::chrono::microseconds(50));
      std::lock_guard lock(m);
      threads.insert(std::this_thread::get_id());
    });
    for (size_t i = 0; i < count; ++i) CHECK(runs[i].load() == 1);
    if (count == 1000) CHECK(threads.size() >= 2);  // the helpers took part
    if (count == 1)
      CHECK(threads.count(std::this_thread::get_id()) == 1);  // a lone job runs on the caller
  }
}

TEST_CASE("WorkerPool: calls from several threads take turns; a pool without helpers runs inline") {
  WorkerPool pool(2);
  std::atomic<int> total{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 4; ++c) {
    callers.emplace_back([&] {
      for (int k = 0; k < 50; ++k) pool.forEach(10, [&](size_t) { total.fetch_add(1); });
    });
  }
  for (auto& t : callers) t.join();
  CHECK(total.load() == 4 * 50 * 10);

  WorkerPool none(0);
  std::set<std::thread::id> threads;
  none.forEach(5, [&](size_t) { threads.insert(std::this_thread::get_id()); });
  CHECK(threads == std::set<std::thread::id>{std::this_thread::get_id()});
  CHECK(WorkerPool::defaultThreads() >= 1);
  CHECK(WorkerPool::defaultThreads() <= ccal::node::worker_threads_max);
}
