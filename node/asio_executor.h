#pragma once
// flows::Executor and flows::Clock over one asio::io_context run by one
// thread: the event loop of a node's link, messaging and flows.
//
// The io_context is hidden behind a pointer so that code using the executor
// does not compile Asio; node code that does I/O on it (the TLS link) gets
// it through context().

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>

#include "flows/io.h"

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace ccal::node {

class AsioExecutor final : public flows::Executor, public flows::Clock {
 public:
  AsioExecutor();
  // Stops the thread if it runs; pending posts and timers are dropped.
  ~AsioExecutor() override;
  AsioExecutor(const AsioExecutor&) = delete;
  AsioExecutor& operator=(const AsioExecutor&) = delete;

  // Starts the one thread that runs the loop. Once only.
  void start();
  // Stops the loop and joins its thread; callbacks not yet run are dropped
  // (their function objects are destroyed when the executor is). Not from
  // the executor thread. Idempotent.
  void stop();

  bool running() const { return running_.load(std::memory_order_acquire); }
  // Whether the caller is the executor's thread.
  bool inExecutorThread() const { return std::this_thread::get_id() == thread_id_.load(); }

  // Runs fn on the executor and waits for it; runs it directly when called
  // from the executor thread or when the loop does not run (then nothing
  // else runs on it). For setup and shutdown, not for hot paths.
  void runSync(const std::function<void()>& fn);

  // flows::Executor
  void post(std::function<void()> fn) override;
  TimerId runAfter(int64_t delay_micros, std::function<void()> fn) override;
  void cancel(TimerId id) override;
  // Timers scheduled and not yet fired or cancelled (for tests and metrics).
  size_t pendingTimers() const;

  // flows::Clock: the system's wall clock.
  int64_t nowMicros() const override;

  boost::asio::io_context& context();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::thread thread_;
  std::atomic<bool> running_{false};
  std::atomic<std::thread::id> thread_id_{};
};

}  // namespace ccal::node
