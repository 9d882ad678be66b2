#include "node/asio_executor.h"

#include <chrono>
#include <future>
#include <map>
#include <optional>
#include <unordered_map>

#include "ledger/assert.h"
#include "node/asio.h"

namespace ccal::node {

struct AsioExecutor::Impl {
  asio::io_context context{1};  // one thread runs it: no locking inside Asio's scheduler
  asio::executor_work_guard<asio::io_context::executor_type> work{context.get_executor()};

  // The timers, in one ordered map under one Asio timer armed for the
  // earliest: a timer costs two map nodes instead of an Asio timer object
  // with its own wait, and a cancel is two erasures instead of an aborted
  // wait that still runs a completion (a notary client arms and cancels
  // two timers per request). Executor thread only (or before start).
  using SteadyClock = std::chrono::steady_clock;
  using Due = std::pair<SteadyClock::time_point, TimerId>;  // deadline, then creation order
  std::map<Due, std::function<void()>> timers;
  std::unordered_map<TimerId, SteadyClock::time_point> deadlines;
  asio::steady_timer wake{context};
  std::optional<SteadyClock::time_point> wake_at;  // what `wake` waits for, if it waits
  TimerId next_timer_id = 1;

  // Arms `wake` for the earliest timer unless it already waits for a time
  // no later (a wake with nothing due finds nothing and re-arms).
  void arm() {
    if (timers.empty()) return;
    const SteadyClock::time_point earliest = timers.begin()->first.first;
    if (wake_at && *wake_at <= earliest) return;
    wake_at = earliest;
    wake.expires_at(earliest);  // a wait still pending completes as aborted
    wake.async_wait([this](const boost::system::error_code& ec) {
      if (ec) return;  // re-armed (or destroyed) meanwhile
      wake_at.reset();
      fire();
    });
  }

  // Runs the timers due now, earliest first; one a callback schedules for
  // now runs on the next wake, after the I/O ready meanwhile.
  void fire() {
    const SteadyClock::time_point now = SteadyClock::now();
    while (!timers.empty() && timers.begin()->first.first <= now) {
      auto node = timers.extract(timers.begin());
      deadlines.erase(node.key().second);
      node.mapped()();
    }
    arm();
  }
};

AsioExecutor::AsioExecutor() : impl_(std::make_unique<Impl>()) {}

AsioExecutor::~AsioExecutor() {
  CCAL_ASSERT_MSG(!inExecutorThread(), "an executor destroyed from its own thread");
  stop();
  // The wake's handler, if still queued, is destroyed with the io_context
  // without running; the timers' functions go here.
  impl_->timers.clear();
  impl_->deadlines.clear();
}

void AsioExecutor::start() {
  CCAL_ASSERT_MSG(!thread_.joinable(), "executor started twice");
  running_.store(true, std::memory_order_release);
  std::promise<void> started;
  auto started_future = started.get_future();
  thread_ = std::thread([this, &started] {
    thread_id_.store(std::this_thread::get_id());
    started.set_value();
    impl_->context.run();
  });
  started_future.wait();
}

void AsioExecutor::stop() {
  if (!thread_.joinable()) return;
  CCAL_ASSERT_MSG(!inExecutorThread(), "executor stopped from its own thread");
  impl_->work.reset();
  impl_->context.stop();
  thread_.join();
  thread_id_.store(std::thread::id{});
  running_.store(false, std::memory_order_release);
}

void AsioExecutor::runSync(const std::function<void()>& fn) {
  if (!running() || inExecutorThread()) {
    fn();
    return;
  }
  std::promise<void> done;
  auto done_future = done.get_future();
  post([&fn, &done] {
    fn();
    done.set_value();
  });
  done_future.wait();
}

void AsioExecutor::post(std::function<void()> fn) {
  CCAL_ASSERT(fn != nullptr);
  asio::post(impl_->context, std::move(fn));
}

flows::Executor::TimerId AsioExecutor::runAfter(int64_t delay_micros, std::function<void()> fn) {
  CCAL_ASSERT_MSG(!running() || inExecutorThread(), "runAfter off the executor thread");
  CCAL_ASSERT(delay_micros >= 0);
  CCAL_ASSERT(fn != nullptr);
  const TimerId id = impl_->next_timer_id++;
  const auto at = Impl::SteadyClock::now() + std::chrono::microseconds(delay_micros);
  impl_->timers.emplace(Impl::Due{at, id}, std::move(fn));
  impl_->deadlines.emplace(id, at);
  impl_->arm();
  return id;
}

void AsioExecutor::cancel(TimerId id) {
  CCAL_ASSERT_MSG(!running() || inExecutorThread(), "cancel off the executor thread");
  auto it = impl_->deadlines.find(id);
  if (it == impl_->deadlines.end()) return;  // fired, cancelled, or never made
  impl_->timers.erase(Impl::Due{it->second, id});
  impl_->deadlines.erase(it);
}

size_t AsioExecutor::pendingTimers() const {
  CCAL_ASSERT_MSG(!running() || inExecutorThread(), "pendingTimers off the executor thread");
  return impl_->timers.size();
}

int64_t AsioExecutor::nowMicros() const {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

asio::io_context& AsioExecutor::context() { return impl_->context; }

}  // namespace ccal::node
