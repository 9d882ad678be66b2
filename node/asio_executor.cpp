#include "node/asio_executor.h"

#include <chrono>
#include <future>
#include <unordered_map>

#include "ledger/assert.h"
#include "node/asio.h"

namespace ccal::node {

struct AsioExecutor::Impl {
  asio::io_context context{1};  // one thread runs it: no locking inside Asio's scheduler
  asio::executor_work_guard<asio::io_context::executor_type> work{context.get_executor()};

  struct Timer {
    asio::steady_timer timer;
    std::function<void()> fn;
  };
  // Executor thread only (or before start).
  std::unordered_map<TimerId, std::unique_ptr<Timer>> timers;
  TimerId next_timer_id = 1;
};

AsioExecutor::AsioExecutor() : impl_(std::make_unique<Impl>()) {}

AsioExecutor::~AsioExecutor() {
  CCAL_ASSERT_MSG(!inExecutorThread(), "an executor destroyed from its own thread");
  stop();
  // Timer handlers still queued hold no pointer into impl_ beyond the
  // io_context, which destroys them before the timers map goes.
  impl_->timers.clear();
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
  TimerId id = impl_->next_timer_id++;
  auto timer = std::make_unique<Impl::Timer>(Impl::Timer{asio::steady_timer(impl_->context), std::move(fn)});
  timer->timer.expires_after(std::chrono::microseconds(delay_micros));
  Impl* impl = impl_.get();
  timer->timer.async_wait([impl, id](const boost::system::error_code& ec) {
    if (ec) return;  // cancelled
    auto it = impl->timers.find(id);
    if (it == impl->timers.end()) return;  // cancelled after it expired, before this ran
    auto fired = std::move(it->second->fn);
    impl->timers.erase(it);
    fired();
  });
  impl_->timers.emplace(id, std::move(timer));
  return id;
}

void AsioExecutor::cancel(TimerId id) {
  CCAL_ASSERT_MSG(!running() || inExecutorThread(), "cancel off the executor thread");
  auto it = impl_->timers.find(id);
  if (it == impl_->timers.end()) return;
  it->second->timer.cancel();
  impl_->timers.erase(it);
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
