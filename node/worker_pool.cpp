#include "node/worker_pool.h"

#include <pthread.h>

#include <algorithm>

#include "ledger/assert.h"

namespace ccal::node {

WorkerPool::WorkerPool(uint32_t threads) {
  CCAL_ASSERT(threads <= worker_threads_max);
  threads_.reserve(threads);
  for (uint32_t i = 0; i < threads; ++i) threads_.emplace_back([this] { run(); });
}

WorkerPool::~WorkerPool() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  work_.notify_all();
  for (auto& t : threads_) t.join();
}

uint32_t WorkerPool::defaultThreads() {
  const unsigned hw = std::thread::hardware_concurrency();
  const unsigned helpers = hw > 1 ? hw - 1 : 1;
  return static_cast<uint32_t>(std::min<unsigned>(helpers, worker_threads_max));
}

void WorkerPool::forEach(size_t count, const std::function<void(size_t)>& fn) {
  if (count == 0) return;
  if (count == 1 || threads_.empty()) {
    for (size_t i = 0; i < count; ++i) fn(i);
    return;
  }
  std::lock_guard call_lock(call_mutex_);
  uint64_t call = 0;
  {
    std::lock_guard lock(mutex_);
    fn_ = &fn;
    count_ = count;
    next_ = 0;
    done_ = 0;
    call = ++call_;
  }
  work_.notify_all();
  drain(call);
  std::unique_lock lock(mutex_);
  finished_.wait(lock, [&] { return done_ == count_; });
  fn_ = nullptr;  // no helper takes a job of this call any more (next_ == count_)
}

void WorkerPool::drain(uint64_t call) {
  for (;;) {
    size_t index = 0;
    const std::function<void(size_t)>* fn = nullptr;
    {
      std::lock_guard lock(mutex_);
      if (call_ != call || fn_ == nullptr || next_ >= count_) return;
      index = next_++;
      fn = fn_;
    }
    (*fn)(index);
    bool all = false;
    {
      std::lock_guard lock(mutex_);
      all = ++done_ == count_;
    }
    if (all) finished_.notify_all();
  }
}

void WorkerPool::run() {
  ::pthread_setname_np(::pthread_self(), "ccal-worker");
  uint64_t seen = 0;
  for (;;) {
    uint64_t call = 0;
    {
      std::unique_lock lock(mutex_);
      work_.wait(lock,
                 [&] { return stopping_ || (call_ != seen && fn_ != nullptr && next_ < count_); });
      if (stopping_) return;
      call = seen = call_;
    }
    drain(call);
  }
}

}  // namespace ccal::node
