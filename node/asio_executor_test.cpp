#include "node/asio_executor.h"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

using namespace ccal;
using namespace ccal::node;
using namespace std::chrono_literals;

TEST_CASE("AsioExecutor runs posts from many threads, one at a time, in each poster's order") {
  AsioExecutor executor;
  executor.start();
  constexpr int threads = 4, per_thread = 2000;
  std::vector<std::vector<int>> seen(threads);  // touched only on the executor thread
  std::atomic<int> inside{0}, overlap{0}, done{0};
  std::vector<std::thread> posters;
  for (int t = 0; t < threads; ++t) {
    posters.emplace_back([&, t] {
      for (int i = 0; i < per_thread; ++i) {
        executor.post([&, t, i] {
          if (inside.fetch_add(1) != 0) overlap.fetch_add(1);
          CHECK(executor.inExecutorThread());
          seen[t].push_back(i);
          inside.fetch_sub(1);
          done.fetch_add(1);
        });
      }
    });
  }
  for (auto& p : posters) p.join();
  executor.runSync([] {});
  CHECK(done.load() == threads * per_thread);
  CHECK(overlap.load() == 0);
  for (const auto& s : seen) {
    REQUIRE(s.size() == per_thread);
    for (int i = 0; i < per_thread; ++i) CHECK(s[i] == i);
  }
  CHECK_FALSE(executor.inExecutorThread());
}

TEST_CASE("AsioExecutor timers fire in deadline order and a cancelled one never fires") {
  AsioExecutor executor;
  executor.start();
  std::mutex m;
  std::vector<int> fired;
  std::promise<void> last;
  auto last_fired = last.get_future();
  executor.runSync([&] {
    executor.runAfter(30'000, [&] {
      std::lock_guard lock(m);
      fired.push_back(3);
      last.set_value();
    });
    auto cancelled = executor.runAfter(10'000, [&] {
      std::lock_guard lock(m);
      fired.push_back(99);
    });
    executor.runAfter(20'000, [&] {
      std::lock_guard lock(m);
      fired.push_back(2);
    });
    executor.runAfter(0, [&] {
      std::lock_guard lock(m);
      fired.push_back(1);
    });
    CHECK(executor.pendingTimers() == 4);
    executor.cancel(cancelled);
    executor.cancel(cancelled);  // twice: a no-op
    executor.cancel(12345);      // unknown: a no-op
    CHECK(executor.pendingTimers() == 3);
  });
  REQUIRE(last_fired.wait_for(5s) == std::future_status::ready);
  std::this_thread::sleep_for(20ms);  // the cancelled one would have fired by now
  std::lock_guard lock(m);
  CHECK(fired == std::vector<int>{1, 2, 3});
  size_t pending = 99;
  executor.runSync([&] { pending = executor.pendingTimers(); });
  CHECK(pending == 0);
}

TEST_CASE("AsioExecutor timer waits at least its delay; a timer may cancel another") {
  AsioExecutor executor;
  executor.start();
  std::promise<std::chrono::steady_clock::duration> waited;
  auto result = waited.get_future();
  std::atomic<bool> victim_fired{false};
  executor.runSync([&] {
    auto start = std::chrono::steady_clock::now();
    auto victim = executor.runAfter(40'000, [&] { victim_fired = true; });
    executor.runAfter(25'000, [&, victim] { executor.cancel(victim); });
    executor.runAfter(50'000, [&, start] { waited.set_value(std::chrono::steady_clock::now() - start); });
  });
  REQUIRE(result.wait_for(5s) == std::future_status::ready);
  CHECK(result.get() >= 50ms);
  CHECK_FALSE(victim_fired.load());
}

TEST_CASE(
    "AsioExecutor: an earlier timer made after a later one fires first; timers due together may "
    "cancel each other") {
  AsioExecutor executor;
  executor.start();
  std::mutex m;
  std::vector<int> fired;
  std::promise<void> done;
  auto done_fired = done.get_future();
  auto record = [&](int v) {
    std::lock_guard lock(m);
    fired.push_back(v);
  };
  flows::Executor::TimerId second = 0;
  executor.runSync([&] {
    executor.runAfter(2'000'000, [&] { record(9); });  // far: must not hold back the ones below
    executor.runAfter(10'000, [&] {
      record(1);
      // Made while timers run: at once, and a chain of them.
      executor.runAfter(0, [&] {
        record(2);
        executor.runAfter(0, [&] {
          record(3);
          done.set_value();
        });
      });
    });
    // Two due (nearly) together: the first cancels the second, whether or
    // not one wake finds both due.
    executor.runAfter(5'000, [&] {
      record(0);
      executor.cancel(second);
    });
    second = executor.runAfter(5'000, [&] { record(99); });
  });
  REQUIRE(done_fired.wait_for(1s) == std::future_status::ready);
  std::this_thread::sleep_for(20ms);
  {
    std::lock_guard lock(m);
    std::string seen;
    for (int v : fired) seen += std::to_string(v) + " ";
    INFO(seen);
    CHECK(fired == std::vector<int>{0, 1, 2, 3});
  }
  size_t pending = 0;
  executor.runSync([&] { pending = executor.pendingTimers(); });
  CHECK(pending == 1);  // the far one
}

TEST_CASE("AsioExecutor clock is the wall clock; stop drops pending work; runSync without a loop runs inline") {
  AsioExecutor executor;
  auto wall = std::chrono::duration_cast<std::chrono::microseconds>(
                  std::chrono::system_clock::now().time_since_epoch())
                  .count();
  CHECK(std::abs(executor.nowMicros() - wall) < 5'000'000);

  bool ran = false;
  executor.runSync([&] { ran = true; });  // not started: inline
  CHECK(ran);

  executor.start();
  std::atomic<bool> late{false};
  executor.runSync([&] { executor.runAfter(10'000'000, [&] { late = true; }); });
  executor.stop();
  executor.stop();  // idempotent
  CHECK_FALSE(executor.running());
  CHECK_FALSE(late.load());
}
