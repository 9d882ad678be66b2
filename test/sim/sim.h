#pragma once
// The deterministic in-process simulator: many members in one process, one
// seeded scheduler with virtual time, a simulated network with delay, loss,
// duplication, reordering and partitions, crash and restart of members over
// their own storage directories, and per-member clock skew. One seed drives
// everything; runs of one seed are identical, which traceHash() shows.
//
// A member is a name, a directory that survives its restarts, and a factory
// that builds its node (whatever objects the test runs: Delivery, flows, a
// notary replica) from a MemberEnv (the executor, clock and link of that
// incarnation). A crash destroys the node and its incarnation's executor and
// link; a restart calls the factory again over the same directory.
//
// Determinism with real LMDB: a store's writer thread completes requests
// asynchronously and its completions are posted from that thread. After
// every event the simulator calls the member's Node::quiesce(), which must
// return only once every storage request the node has queued has posted its
// completion (a barrier write on the store does this: its writer runs
// requests and their done() in order). Completions posted from other
// threads are then queued in the order they were posted, after the event's
// own posts, at the current virtual time. Before every event the simulator
// calls Node::beginEvent(), where a node may hold its store's writer
// (vault::Store::Hold, released in quiesce()): the writes one event queues
// then always share one commit, instead of sharing it or not as the writer
// thread happens to wake, which would order a write's early completion
// (Store::submit's decided) and another's done() either way.
//
// What a crash means: the node's objects are destroyed at once; storage
// requests already queued still complete (the store drains on close) but
// their completions are dropped, as if the process died just after the
// commit. A write whose done() ran is durable. A real crash may also lose a
// queued write that was not yet committed; to the layers above that is the
// same as crashing just before queueing it (no done(), nothing stored),
// which the simulator does too, since a crash can come between any two
// events. (Torn LMDB writes are the vault's kill -9 tests' business.) The
// stores run without fsync: the simulated crash keeps the page cache.
//
// Not thread-safe, except MemberExecutor::post. Everything runs on the thread
// that made the Simulation.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "flows/io.h"
#include "ledger/secure_hash.h"

namespace ccal::sim {

// splitmix64: small, fast and the same on every platform (std:: distributions
// are not), so a seed means the same run everywhere.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next();
  uint64_t below(uint64_t n);                   // uniform in [0, n); n > 0
  int64_t between(int64_t lo, int64_t hi);      // uniform in [lo, hi]
  bool chance(double probability);              // true with that probability

 private:
  uint64_t state_;
};

// The seed of a test run: CCAL_SIM_SEED when set (to replay one run), else `fallback`.
std::optional<uint64_t> seedFromEnvironment();

class Scheduler;

// A member incarnation's executor: events of a dead incarnation never run.
class MemberExecutor final : public flows::Executor {
 public:
  MemberExecutor(Scheduler& scheduler, int member, std::shared_ptr<const bool> alive)
      : scheduler_(scheduler), member_(member), alive_(std::move(alive)) {}
  void post(std::function<void()> fn) override;  // any thread
  TimerId runAfter(int64_t delay_micros, std::function<void()> fn) override;
  void cancel(TimerId id) override;

 private:
  Scheduler& scheduler_;
  int member_;
  std::shared_ptr<const bool> alive_;
};

// Virtual time and the event queue.
class Scheduler {
 public:
  static constexpr int global_member = -1;  // events not bound to a member
  // Virtual time starts here (2024-01-01 in microseconds since the epoch).
  static constexpr int64_t start_micros = 1'704'067'200'000'000;

  Scheduler();
  int64_t now() const { return now_; }
  // Runs fn at now + delay_micros (>= 0) on `member`'s behalf, unless `alive`
  // is set and false by then. Returns an id for cancel(). Simulator thread.
  uint64_t schedule(int64_t delay_micros, int member, std::shared_ptr<const bool> alive,
                    std::function<void()> fn);
  void cancel(uint64_t id);
  // From any thread: a simulator-thread post is queued at once; another
  // thread's post when the current event ends (see quiesce).
  void post(int member, std::shared_ptr<const bool> alive, std::function<void()> fn);

  // Runs one event: false when none is due by deadline_micros (virtual,
  // absolute), after moving time on to the deadline.
  // `before` runs before the event, `after` after it, before foreign posts
  // are taken in.
  bool step(int64_t deadline_micros, const std::function<void(int member)>& after,
            const std::function<void(int member)>& before = nullptr);
  size_t pending() const { return events_.size(); }
  uint64_t eventsRun() const { return events_run_; }

  // The trace: every event run and whatever the layers above add.
  void trace(ByteView bytes) { trace_.update(bytes); }
  void trace(uint64_t v);
  SecureHash traceHash();  // of everything so far (the trace continues)

 private:
  struct Event {
    int member = global_member;
    std::shared_ptr<const bool> alive;
    std::function<void()> fn;
  };
  struct Foreign {
    int member;
    std::shared_ptr<const bool> alive;
    std::function<void()> fn;
  };
  void takeForeign();

  int64_t now_ = start_micros;
  uint64_t next_seq_ = 1;
  std::map<std::pair<int64_t, uint64_t>, Event> events_;  // (time, seq)
  std::map<uint64_t, int64_t> timer_times_;                // seq -> time, for cancel
  uint64_t events_run_ = 0;
  Sha256 trace_;
  std::thread::id thread_;
  std::mutex foreign_mutex_;  // guards foreign_
  std::vector<Foreign> foreign_;
};

// A member's clock: virtual time plus its skew, which may jump.
class SimClock final : public flows::Clock {
 public:
  explicit SimClock(const Scheduler& scheduler) : scheduler_(scheduler) {}
  int64_t nowMicros() const override { return scheduler_.now() + skew_micros; }
  int64_t skew_micros = 0;

 private:
  const Scheduler& scheduler_;
};

struct NetworkConfig {
  int64_t delay_micros_min = 200;
  int64_t delay_micros_max = 5'000;
  double loss = 0;         // probability a frame is lost
  double duplication = 0;  // probability a frame arrives twice
  double reorder = 0;      // probability a frame is held back (extra delay up to 20x the max)
  size_t frame_bytes_max = 1u << 20;
};

// What a node is built from, for one incarnation of its member.
struct MemberEnv {
  std::string name;
  std::string dir;  // the member's own directory, the same across restarts
  int incarnation = 0;
  flows::Executor& executor;
  const flows::Clock& clock;
  flows::Link& link;
};

// The objects a member runs. quiesce() returns once every storage request
// queued so far has posted its completion (see the file comment).
class Node {
 public:
  virtual ~Node() = default;
  virtual void beginEvent() {}  // before each event (see the file comment)
  virtual void quiesce() {}
};

using NodeFactory = std::function<std::unique_ptr<Node>(MemberEnv&)>;

class SimLink;

class Simulation {
 public:
  explicit Simulation(uint64_t seed, NetworkConfig network = {});
  ~Simulation();
  Simulation(const Simulation&) = delete;
  Simulation& operator=(const Simulation&) = delete;

  uint64_t seed() const { return seed_; }
  Rng& rng() { return rng_; }
  Scheduler& scheduler() { return scheduler_; }
  int64_t now() const { return scheduler_.now(); }
  NetworkConfig& network() { return network_; }

  // Adds a member (with a fresh directory under /tmp, removed with the
  // simulation) and starts it.
  void addMember(const std::string& name, NodeFactory factory);
  const std::vector<std::string>& members() const { return names_; }
  bool isUp(std::string_view name) const;
  // The member's current node, nullptr while it is down.
  Node* node(std::string_view name);
  template <class T>
  T* nodeAs(std::string_view name) {
    return static_cast<T*>(node(name));
  }

  // --- faults ---------------------------------------------------------------------
  void crash(std::string_view name);
  void restart(std::string_view name);
  // Cuts `side` off from everyone else (both ways), in addition to cuts made before.
  void isolate(const std::set<std::string>& side);
  void heal();  // every cut gone
  bool connected(std::string_view a, std::string_view b) const;
  void setSkew(std::string_view name, int64_t skew_micros);

  // Runs `fn` (a test action or fault) after delay_micros of virtual time.
  void at(int64_t delay_micros, std::function<void()> fn);
  // Runs events until pred() holds (true) or virtual time reaches now +
  // deadline_micros (pred() then).
  bool runUntil(const std::function<bool()>& pred, int64_t deadline_micros);
  void runFor(int64_t micros) { runUntil([] { return false; }, micros); }

  void trace(std::string_view text) { scheduler_.trace(asBytes(text)); }
  SecureHash traceHash() { return scheduler_.traceHash(); }

  struct NetworkStats {
    uint64_t frames_sent = 0, frames_lost = 0, frames_duplicated = 0, frames_delivered = 0,
             frames_undeliverable = 0, frames_reordered = 0;
  };
  const NetworkStats& networkStats() const { return net_stats_; }
  uint64_t crashes() const { return crashes_; }

 private:
  friend class SimLink;
  struct Incarnation;
  struct Member;

  int indexOf(std::string_view name) const;
  void start(int index);
  // `member`'s node, or every member's for Scheduler::global_member.
  void forNodes(int member, const std::function<void(Node&)>& fn);
  void beginEvent(int member);
  void quiesce(int member);
  void updateLinks();
  // A frame from member `from` sent on its link.
  Status sendFrame(int from, std::string_view peer, Bytes frame);

  uint64_t seed_;
  Rng rng_;
  Scheduler scheduler_;
  NetworkConfig network_;
  std::vector<std::string> names_;
  std::vector<std::unique_ptr<Member>> members_;
  std::set<std::pair<int, int>> cuts_;  // (a, b) with a < b: no frames either way
  std::vector<std::vector<bool>> linked_;  // what each member was last told: peer up or down
  // Executors of dead incarnations: their stores' writer threads may still
  // post to them while draining, so they live as long as the simulation.
  std::vector<std::unique_ptr<MemberExecutor>> graveyard_;
  NetworkStats net_stats_;
  uint64_t crashes_ = 0;
};

}  // namespace ccal::sim
