#pragma once
// Test helpers for the PBFT replica and its client without the simulator:
// one executor with virtual time that the test thread runs (thread-safe
// post, for completions from a Store's writer thread), the clock it keeps,
// and an in-memory hub of Links between named members that delivers each
// frame through the executor and lets a test drop or inspect frames.
// Used by notary/*_test.cpp only.

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "flows/io.h"

namespace ccal::notary::testing {

class ManualLoop final : public flows::Executor, public flows::Clock {
 public:
  explicit ManualLoop(int64_t start_micros = 1'700'000'000'000'000) : now_(start_micros) {}

  void post(std::function<void()> fn) override {
    std::lock_guard lock(mutex_);
    queue_.push_back(std::move(fn));
    posted_.notify_all();
  }
  TimerId runAfter(int64_t delay_micros, std::function<void()> fn) override {
    const TimerId id = next_++;
    timers_[id] = {now_ + delay_micros, std::move(fn)};
    return id;
  }
  void cancel(TimerId id) override { timers_.erase(id); }
  int64_t nowMicros() const override { return now_; }

  // Runs every queued function (and what they queue); true if any ran.
  bool runQueued() {
    bool ran = false;
    for (;;) {
      std::function<void()> fn;
      {
        std::lock_guard lock(mutex_);
        if (queue_.empty()) return ran;
        fn = std::move(queue_.front());
        queue_.pop_front();
      }
      fn();
      ran = true;
    }
  }
  // Waits up to wait_micros of real time for a post from another thread.
  bool waitForPost(int64_t wait_micros) {
    std::unique_lock lock(mutex_);
    return posted_.wait_for(lock, std::chrono::microseconds(wait_micros), [&] { return !queue_.empty(); });
  }
  // Fires the earliest timer due at or before `until`; false if none.
  bool fireNextTimer(int64_t until) {
    auto due = timers_.end();
    for (auto it = timers_.begin(); it != timers_.end(); ++it) {
      if (it->second.first <= until && (due == timers_.end() || it->second.first < due->second.first)) due = it;
    }
    if (due == timers_.end()) return false;
    now_ = std::max(now_, due->second.first);
    auto fn = std::move(due->second.second);
    timers_.erase(due);
    fn();
    return true;
  }
  // Runs until pred() holds or virtual time has advanced by micros. Before
  // virtual time moves, `settle` (waits for background work, such as
  // Store writes, to post its completions) runs and what it brought runs.
  bool runUntil(const std::function<bool()>& pred, int64_t micros,
                const std::function<void()>& settle = {}) {
    const int64_t until = now_ + micros;
    for (;;) {
      runQueued();
      if (pred()) return true;
      if (settle) settle();
      if (runQueued()) continue;
      if (waitForPost(200)) continue;
      if (!fireNextTimer(until)) break;
    }
    now_ = std::max(now_, until);
    runQueued();
    return pred();
  }
  void advance(int64_t micros, const std::function<void()>& settle = {}) {
    runUntil([] { return false; }, micros, settle);
  }
  size_t timers() const { return timers_.size(); }

 private:
  std::mutex mutex_;  // guards queue_
  std::condition_variable posted_;
  std::deque<std::function<void()>> queue_;
  std::map<TimerId, std::pair<int64_t, std::function<void()>>> timers_;
  TimerId next_ = 1;
  int64_t now_;
};

// A clock `skew_micros` away from the loop's.
class SkewedClock final : public flows::Clock {
 public:
  SkewedClock(const flows::Clock& base, int64_t skew_micros) : base_(base), skew_(skew_micros) {}
  int64_t nowMicros() const override { return base_.nowMicros() + skew_; }
  void setSkew(int64_t skew_micros) { skew_ = skew_micros; }

 private:
  const flows::Clock& base_;
  int64_t skew_;
};

// Frames between named members, delivered in order through the loop.
class LinkHub {
 public:
  // Returns false to drop a frame (from, to, frame).
  using Filter = std::function<bool(const std::string&, const std::string&, ByteView)>;

  explicit LinkHub(ManualLoop& loop) : loop_(loop) {}

  class MemberLink final : public flows::Link {
   public:
    MemberLink(LinkHub& hub, std::string name) : hub_(hub), name_(std::move(name)) {}
    void setHandler(flows::LinkHandler* handler) override { hub_.handlers_[name_] = handler; }
    Status send(std::string_view peer, Bytes frame) override {
      if (frame.size() > frameBytesMax()) return makeError(Errc::too_large, "frame over the link's limit");
      return hub_.send(name_, std::string(peer), std::move(frame));
    }
    size_t frameBytesMax() const override { return 16u << 20; }

   private:
    LinkHub& hub_;
    std::string name_;
  };

  MemberLink& link(const std::string& name) {
    auto it = links_.find(name);
    if (it == links_.end()) it = links_.emplace(name, std::make_unique<MemberLink>(*this, name)).first;
    return *it->second;
  }
  void setFilter(Filter filter) { filter_ = std::move(filter); }
  uint64_t framesSent() const { return frames_sent_; }

 private:
  Status send(const std::string& from, const std::string& to, Bytes frame) {
    ++frames_sent_;
    if (filter_ && !filter_(from, to, frame)) return Status();
    loop_.post([this, from, to, frame = std::move(frame)] {
      auto it = handlers_.find(to);
      if (it != handlers_.end() && it->second != nullptr) it->second->onFrame(from, frame);
    });
    return Status();
  }

  ManualLoop& loop_;
  std::map<std::string, std::unique_ptr<MemberLink>> links_;
  std::map<std::string, flows::LinkHandler*> handlers_;
  Filter filter_;
  uint64_t frames_sent_ = 0;
};

}  // namespace ccal::notary::testing
