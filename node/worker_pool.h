#pragma once
// WorkerPool: a few threads that run a flow's independent, pure jobs
// (flows::Parallel; the built-in flows verify a fetched backchain this way)
// while the executor thread that asked waits and takes jobs too.
//
// One forEach at a time (callers queue on a mutex); jobs are taken by index
// from a shared counter, so a slow job does not hold up the others. The
// threads sleep between calls and are joined by the destructor.

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "flows/services.h"

namespace ccal::node {

inline constexpr uint32_t worker_threads_max = 16;

class WorkerPool final : public flows::Parallel {
 public:
  // `threads` helpers (0..worker_threads_max) besides the calling thread.
  explicit WorkerPool(uint32_t threads);
  ~WorkerPool() override;
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  void forEach(size_t count, const std::function<void(size_t)>& fn) override;
  uint32_t threads() const { return static_cast<uint32_t>(threads_.size()); }
  // One helper fewer than the machine's hardware threads (the executor
  // takes part), at least 1, at most worker_threads_max.
  static uint32_t defaultThreads();

 private:
  void run();
  // Takes and runs jobs of the current call until none is left.
  void drain(uint64_t call);

  std::mutex call_mutex_;  // one forEach at a time
  std::mutex mutex_;       // guards everything below
  std::condition_variable work_;
  std::condition_variable finished_;
  const std::function<void(size_t)>* fn_ = nullptr;
  size_t count_ = 0;
  size_t next_ = 0;    // the next index to take
  size_t done_ = 0;    // jobs finished in this call
  uint64_t call_ = 0;  // which call the fields describe
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace ccal::node
