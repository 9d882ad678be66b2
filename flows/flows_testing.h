#pragma once
// Test helpers for flows/ unit tests: a single-threaded executor with
// virtual time driven by the test (store completions posted from writer
// threads are waited for by a barrier), and a hub of in-process links that
// carries frames between named members in order, none lost (a member that
// is down loses them). Tests only.

#include <algorithm>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <utility>

#include "flows/io.h"

namespace ccal::flows::testing {

// A single-threaded executor with virtual time, driven by the test.
class TestExecutor final : public Executor, public Clock {
 public:
  void post(std::function<void()> fn) override {
    std::lock_guard lock(mutex_);
    posted_.push_back(std::move(fn));
  }
  TimerId runAfter(int64_t delay_micros, std::function<void()> fn) override {
    const TimerId id = ++last_timer_;
    timers_.emplace(std::make_pair(now_ + delay_micros, id), std::move(fn));
    return id;
  }
  void cancel(TimerId id) override {
    for (auto it = timers_.begin(); it != timers_.end(); ++it) {
      if (it->first.second == id) {
        timers_.erase(it);
        return;
      }
    }
  }
  int64_t nowMicros() const override { return now_; }

  // Runs posted work and timers until pred() holds or virtual time passes
  // deadline_micros from now; `barrier` (waiting for the stores' queued
  // writes) runs whenever nothing is posted.
  bool runUntil(const std::function<bool()>& pred, int64_t deadline_micros,
                const std::function<void()>& barrier) {
    const int64_t end = now_ + deadline_micros;
    for (;;) {
      if (pred()) return true;
      std::deque<std::function<void()>> batch;
      {
        std::lock_guard lock(mutex_);
        batch.swap(posted_);
      }
      if (!batch.empty()) {
        for (auto& fn : batch) fn();
        continue;
      }
      barrier();
      {
        std::lock_guard lock(mutex_);
        if (!posted_.empty()) continue;
      }
      if (timers_.empty() || timers_.begin()->first.first > end) return pred();
      auto it = timers_.begin();
      now_ = std::max(now_, it->first.first);
      auto fn = std::move(it->second);
      timers_.erase(it);
      fn();
    }
  }

 private:
  std::mutex mutex_;
  std::deque<std::function<void()>> posted_;
  std::map<std::pair<int64_t, TimerId>, std::function<void()>> timers_;
  TimerId last_timer_ = 0;
  int64_t now_ = 1'700'000'000'000'000;
};

class HubLink;

struct Hub {
  TestExecutor* executor = nullptr;
  std::set<std::string> names;
  std::map<std::string, HubLink*> members;
  void deliver(const std::string& from, const std::string& to, Bytes frame);
};

class HubLink final : public Link {
 public:
  HubLink(Hub& hub, std::string self) : hub_(hub), self_(std::move(self)) {
    hub_.members[self_] = this;
  }
  ~HubLink() override { hub_.members.erase(self_); }
  void setHandler(LinkHandler* handler) override { handler_ = handler; }
  Status send(std::string_view peer, Bytes frame) override {
    if (!hub_.names.count(std::string(peer))) {
      return makeError(Errc::not_found, "unknown peer '" + std::string(peer) + "'");
    }
    hub_.deliver(self_, std::string(peer), std::move(frame));
    return {};
  }
  size_t frameBytesMax() const override { return 1u << 20; }
  LinkHandler* handler_ = nullptr;

 private:
  Hub& hub_;
  std::string self_;
};

inline void Hub::deliver(const std::string& from, const std::string& to, Bytes frame) {
  executor->post([this, from, to, frame] {
    auto it = members.find(to);
    if (it != members.end() && it->second->handler_) it->second->handler_->onFrame(from, frame);
  });
}

}  // namespace ccal::flows::testing
