#include "test/sim/sim.h"

#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <system_error>
#include <utility>

#include "ledger/assert.h"

namespace ccal::sim {

// --- Rng ------------------------------------------------------------------------------

uint64_t Rng::next() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t Rng::below(uint64_t n) {
  CCAL_ASSERT(n > 0);
  // Rejection sampling keeps it uniform (and still deterministic).
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  for (;;) {
    const uint64_t v = next();
    if (v < limit) return v % n;
  }
}

int64_t Rng::between(int64_t lo, int64_t hi) {
  CCAL_ASSERT(lo <= hi);
  return lo + static_cast<int64_t>(below(static_cast<uint64_t>(hi - lo) + 1));
}

bool Rng::chance(double probability) {
  if (probability <= 0) return false;
  return static_cast<double>(next() >> 11) * 0x1.0p-53 < probability;
}

std::optional<uint64_t> seedFromEnvironment() {
  const char* text = ::getenv("CCAL_SIM_SEED");
  if (text == nullptr || *text == '\0') return std::nullopt;
  char* end = nullptr;
  const unsigned long long v = ::strtoull(text, &end, 10);
  CCAL_ASSERT_MSG(end != nullptr && *end == '\0', "CCAL_SIM_SEED is not a decimal number");
  return static_cast<uint64_t>(v);
}

// --- executor and scheduler -----------------------------------------------------------

void MemberExecutor::post(std::function<void()> fn) {
  scheduler_.post(member_, alive_, std::move(fn));
}

flows::Executor::TimerId MemberExecutor::runAfter(int64_t delay_micros, std::function<void()> fn) {
  return scheduler_.schedule(delay_micros, member_, alive_, std::move(fn));
}

void MemberExecutor::cancel(TimerId id) { scheduler_.cancel(id); }

Scheduler::Scheduler() : thread_(std::this_thread::get_id()) {}

uint64_t Scheduler::schedule(int64_t delay_micros, int member, std::shared_ptr<const bool> alive,
                             std::function<void()> fn) {
  CCAL_ASSERT_MSG(std::this_thread::get_id() == thread_, "schedule() off the simulator thread");
  CCAL_ASSERT(delay_micros >= 0);
  const uint64_t seq = next_seq_++;
  const int64_t at = now_ + delay_micros;
  events_.emplace(std::make_pair(at, seq), Event{member, std::move(alive), std::move(fn)});
  timer_times_.emplace(seq, at);
  return seq;
}

void Scheduler::cancel(uint64_t id) {
  auto it = timer_times_.find(id);
  if (it == timer_times_.end()) return;
  events_.erase(std::make_pair(it->second, id));
  timer_times_.erase(it);
}

void Scheduler::post(int member, std::shared_ptr<const bool> alive, std::function<void()> fn) {
  if (std::this_thread::get_id() == thread_) {
    const uint64_t seq = next_seq_++;
    events_.emplace(std::make_pair(now_, seq), Event{member, std::move(alive), std::move(fn)});
    return;
  }
  std::lock_guard lock(foreign_mutex_);
  foreign_.push_back(Foreign{member, std::move(alive), std::move(fn)});
}

void Scheduler::takeForeign() {
  std::vector<Foreign> taken;
  {
    std::lock_guard lock(foreign_mutex_);
    taken.swap(foreign_);
  }
  for (Foreign& f : taken) {
    const uint64_t seq = next_seq_++;
    events_.emplace(std::make_pair(now_, seq),
                    Event{f.member, std::move(f.alive), std::move(f.fn)});
  }
}

bool Scheduler::step(int64_t deadline_micros, const std::function<void(int member)>& after,
                     const std::function<void(int member)>& before) {
  takeForeign();
  if (events_.empty() || events_.begin()->first.first > deadline_micros) {
    now_ = std::max(now_, deadline_micros);
    return false;
  }
  auto node = events_.extract(events_.begin());
  const auto [at, seq] = node.key();
  Event& event = node.mapped();
  timer_times_.erase(seq);
  now_ = std::max(now_, at);
  if (event.alive && !*event.alive) return true;  // its incarnation died
  ++events_run_;
  trace(static_cast<uint64_t>(now_));
  trace(static_cast<uint64_t>(static_cast<int64_t>(event.member)));
  if (before) before(event.member);
  event.fn();
  if (after) after(event.member);
  takeForeign();
  return true;
}

void Scheduler::trace(uint64_t v) {
  uint8_t bytes[8];
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<uint8_t>(v >> (8 * i));
  trace_.update(ByteView(bytes, 8));
}

SecureHash Scheduler::traceHash() {
  SecureHash h = trace_.finish();
  trace_.update(h.view());  // the trace goes on from here
  return h;
}

// --- the network ----------------------------------------------------------------------

class SimLink final : public flows::Link {
 public:
  SimLink(Simulation& sim, int member) : sim_(sim), member_(member) {}
  void setHandler(flows::LinkHandler* handler) override { handler_ = handler; }
  Status send(std::string_view peer, Bytes frame) override {
    return sim_.sendFrame(member_, peer, std::move(frame));
  }
  size_t frameBytesMax() const override { return sim_.network_.frame_bytes_max; }
  flows::LinkHandler* handler() const { return handler_; }

 private:
  Simulation& sim_;
  int member_;
  flows::LinkHandler* handler_ = nullptr;
};

struct Simulation::Incarnation {
  std::shared_ptr<bool> alive = std::make_shared<bool>(true);
  std::unique_ptr<MemberExecutor> executor;
  std::unique_ptr<SimLink> link;
  std::unique_ptr<Node> node;
};

struct Simulation::Member {
  std::string name;
  std::string root;  // removed with the simulation
  std::string dir;
  NodeFactory factory;
  SimClock clock;
  int incarnations = 0;
  std::unique_ptr<Incarnation> current;  // null while down

  Member(std::string n, std::string r, NodeFactory f, const Scheduler& s)
      : name(std::move(n)), root(std::move(r)), dir(root + "/data"), factory(std::move(f)),
        clock(s) {}
};

Simulation::Simulation(uint64_t seed, NetworkConfig network)
    : seed_(seed), rng_(seed), network_(network) {
  scheduler_.trace(seed);
}

Simulation::~Simulation() {
  // Nodes first (their stores drain into executors still alive), then the rest.
  for (auto& m : members_) {
    if (!m->current) continue;
    *m->current->alive = false;
    m->current->node.reset();
  }
  for (auto& m : members_) {
    std::error_code ec;
    std::filesystem::remove_all(m->root, ec);
  }
}

int Simulation::indexOf(std::string_view name) const {
  for (size_t i = 0; i < names_.size(); ++i) {
    if (names_[i] == name) return static_cast<int>(i);
  }
  return -1;
}

void Simulation::addMember(const std::string& name, NodeFactory factory) {
  CCAL_ASSERT_MSG(indexOf(name) < 0, "a member added twice");
  std::string pattern = "/tmp/ccal-sim-XXXXXX";
  CCAL_ASSERT(::mkdtemp(pattern.data()) != nullptr);
  names_.push_back(name);
  members_.push_back(std::make_unique<Member>(name, pattern, std::move(factory), scheduler_));
  for (auto& row : linked_) row.push_back(false);
  linked_.emplace_back(names_.size(), false);
  start(static_cast<int>(names_.size() - 1));
}

void Simulation::start(int index) {
  Member& m = *members_[static_cast<size_t>(index)];
  CCAL_ASSERT(!m.current);
  auto inc = std::make_unique<Incarnation>();
  inc->executor = std::make_unique<MemberExecutor>(scheduler_, index, inc->alive);
  inc->link = std::make_unique<SimLink>(*this, index);
  MemberEnv env{m.name, m.dir, m.incarnations++, *inc->executor, m.clock, *inc->link};
  m.current = std::move(inc);
  scheduler_.trace(asBytes("start " + m.name));
  m.current->node = m.factory(env);
  quiesce(index);
  updateLinks();
}

bool Simulation::isUp(std::string_view name) const {
  const int i = indexOf(name);
  CCAL_ASSERT_MSG(i >= 0, "no such member");
  return members_[static_cast<size_t>(i)]->current != nullptr;
}

Node* Simulation::node(std::string_view name) {
  const int i = indexOf(name);
  CCAL_ASSERT_MSG(i >= 0, "no such member");
  auto& m = *members_[static_cast<size_t>(i)];
  return m.current ? m.current->node.get() : nullptr;
}

void Simulation::crash(std::string_view name) {
  const int i = indexOf(name);
  CCAL_ASSERT_MSG(i >= 0, "no such member");
  Member& m = *members_[static_cast<size_t>(i)];
  if (!m.current) return;
  ++crashes_;
  scheduler_.trace(asBytes("crash " + m.name));
  std::unique_ptr<Incarnation> inc = std::move(m.current);
  *inc->alive = false;
  inc->node.reset();  // its stores drain; their completions are dropped
  inc->link.reset();
  graveyard_.push_back(std::move(inc->executor));
  for (size_t j = 0; j < members_.size(); ++j) linked_[static_cast<size_t>(i)][j] = false;
  updateLinks();
}

void Simulation::restart(std::string_view name) {
  const int i = indexOf(name);
  CCAL_ASSERT_MSG(i >= 0, "no such member");
  if (members_[static_cast<size_t>(i)]->current) return;
  start(i);
}

void Simulation::isolate(const std::set<std::string>& side) {
  for (size_t a = 0; a < names_.size(); ++a) {
    for (size_t b = a + 1; b < names_.size(); ++b) {
      if (side.count(names_[a]) != side.count(names_[b])) {
        cuts_.insert({static_cast<int>(a), static_cast<int>(b)});
      }
    }
  }
  scheduler_.trace(asBytes("isolate"));
  for (const auto& s : side) scheduler_.trace(asBytes(s));
  updateLinks();
}

void Simulation::heal() {
  cuts_.clear();
  scheduler_.trace(asBytes("heal"));
  updateLinks();
}

bool Simulation::connected(std::string_view a, std::string_view b) const {
  int i = indexOf(a), j = indexOf(b);
  CCAL_ASSERT_MSG(i >= 0 && j >= 0, "no such member");
  if (i > j) std::swap(i, j);
  return cuts_.count({i, j}) == 0;
}

void Simulation::setSkew(std::string_view name, int64_t skew_micros) {
  const int i = indexOf(name);
  CCAL_ASSERT_MSG(i >= 0, "no such member");
  members_[static_cast<size_t>(i)]->clock.skew_micros = skew_micros;
  scheduler_.trace(static_cast<uint64_t>(skew_micros));
}

// Tells each up member about peers that became reachable or unreachable.
void Simulation::updateLinks() {
  for (size_t a = 0; a < members_.size(); ++a) {
    Member& ma = *members_[a];
    if (!ma.current) continue;
    for (size_t b = 0; b < members_.size(); ++b) {
      if (a == b) continue;
      const bool now_linked = members_[b]->current && connected(ma.name, members_[b]->name);
      if (linked_[a][b] == now_linked) continue;
      linked_[a][b] = now_linked;
      Incarnation* inc = ma.current.get();
      const std::string peer = members_[b]->name;
      inc->executor->post([link = inc->link.get(), peer, now_linked] {
        if (link->handler() == nullptr) return;
        if (now_linked) {
          link->handler()->onPeerUp(peer);
        } else {
          link->handler()->onPeerDown(peer);
        }
      });
    }
  }
}

Status Simulation::sendFrame(int from, std::string_view peer, Bytes frame) {
  const int to = indexOf(peer);
  if (to < 0) return makeError(Errc::not_found, "unknown peer '" + std::string(peer) + "'");
  if (frame.size() > network_.frame_bytes_max) {
    return makeError(Errc::too_large, "frame of " + std::to_string(frame.size()) +
                                          " bytes is over the limit of " +
                                          std::to_string(network_.frame_bytes_max));
  }
  ++net_stats_.frames_sent;
  scheduler_.trace(static_cast<uint64_t>(from * 1000 + to));
  scheduler_.trace(ByteView(frame));
  if (rng_.chance(network_.loss)) {
    ++net_stats_.frames_lost;
    return {};
  }
  int copies = 1;
  if (rng_.chance(network_.duplication)) {
    ++copies;
    ++net_stats_.frames_duplicated;
  }
  auto shared = std::make_shared<const Bytes>(std::move(frame));
  const std::string sender = names_[static_cast<size_t>(from)];
  for (int c = 0; c < copies; ++c) {
    int64_t delay = rng_.between(network_.delay_micros_min, network_.delay_micros_max);
    if (rng_.chance(network_.reorder)) {
      ++net_stats_.frames_reordered;
      delay += rng_.between(0, network_.delay_micros_max * 20);
    }
    // Delivered to whichever incarnation of the receiver is up on arrival,
    // if the two are connected then: a late frame may reach a restarted member.
    scheduler_.schedule(delay, to, nullptr, [this, from, to, sender, shared] {
      Member& receiver = *members_[static_cast<size_t>(to)];
      if (!receiver.current || !connected(sender, receiver.name) ||
          receiver.current->link->handler() == nullptr) {
        ++net_stats_.frames_undeliverable;
        return;
      }
      (void)from;
      ++net_stats_.frames_delivered;
      receiver.current->link->handler()->onFrame(sender, *shared);
    });
  }
  return {};
}

void Simulation::forNodes(int member, const std::function<void(Node&)>& fn) {
  for (size_t i = 0; i < members_.size(); ++i) {
    if (member != Scheduler::global_member && static_cast<size_t>(member) != i) continue;
    auto& m = *members_[i];
    if (m.current && m.current->node) fn(*m.current->node);
  }
}

void Simulation::beginEvent(int member) {
  forNodes(member, [](Node& n) { n.beginEvent(); });
}

void Simulation::quiesce(int member) {
  forNodes(member, [](Node& n) { n.quiesce(); });
}

void Simulation::at(int64_t delay_micros, std::function<void()> fn) {
  scheduler_.schedule(delay_micros, Scheduler::global_member, nullptr, std::move(fn));
}

bool Simulation::runUntil(const std::function<bool()>& pred, int64_t deadline_micros) {
  const int64_t end = scheduler_.now() + deadline_micros;
  for (;;) {
    if (pred()) return true;
    if (!scheduler_.step(
            end, [this](int member) { quiesce(member); },
            [this](int member) { beginEvent(member); }))
      return pred();
  }
}

}  // namespace ccal::sim
