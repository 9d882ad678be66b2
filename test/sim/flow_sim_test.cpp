// The flow runtime (flows/flow_runtime.h) under the simulator: three members
// run ping-pong flows with each other -- several rounds, a subflow that pings
// a third member, a sleep, the clock and a random number -- while members
// crash and restart over their LMDB directories at random moments and the
// network loses, duplicates and reorders frames. Invariants: every flow
// whose start was durable finishes exactly once, ok, with the result its
// arguments determine; no flow handles a message twice (across all
// incarnations); every store ends with no unfinished flow.
//
// Each seed is one run; a failure names its seed, and CCAL_SIM_SEED=<n>
// replays that run exactly. CCAL_SIM_SEEDS=<count> runs more seeds and
// CCAL_SIM_FLOWS=<n> starts more flows per seed.

#include <doctest/doctest.h>

#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "flows/delivery.h"
#include "flows/flow_runtime.h"
#include "ledger/contract.h"
#include "test/sim/sim.h"
#include "vault/flow_store.h"
#include "vault/message_store.h"
#include "vault/vault.h"

using namespace ccal;
using namespace ccal::flows;

namespace {

const std::vector<std::string> member_names = {
    "O=Haikou Fishing Cooperative, L=Haikou, C=CN",
    "O=Sanya Tea Cooperative, L=Sanya, C=CN",
    "O=Hainan Rural Bank, L=Haikou, C=CN",
};

Bytes bytesOf(const std::string& s) { return Bytes(s.begin(), s.end()); }
std::string textOf(ByteView b) { return std::string(b.begin(), b.end()); }

// "<peer>|<rounds>": pings the peer; "ponged <rounds>".
Flow<Bytes> pingFlow(FlowContext& ctx, Bytes args) {
  const std::string text = textOf(args);
  const std::string peer = text.substr(0, text.find('|'));
  const int rounds = std::stoi(text.substr(text.find('|') + 1));
  Session s = co_await ctx.initiate(peer);
  for (int i = 0; i < rounds; ++i) {
    Bytes reply = co_await s.sendAndReceive(
        bytesOf("ping " + std::to_string(i) + "/" + std::to_string(rounds)));
    if (textOf(reply) != "pong " + std::to_string(i)) {
      failFlow(Errc::malformed, "round " + std::to_string(i) + " got '" + textOf(reply) + "'");
    }
  }
  co_return bytesOf("ponged " + std::to_string(rounds));
}

Flow<Bytes> pongFlow(FlowContext& ctx, Bytes) {
  Session s = *ctx.counterparty();
  for (;;) {
    const std::string ping = textOf(co_await s.receive());
    const size_t space = ping.find(' '), slash = ping.find('/');
    const int i = std::stoi(ping.substr(space + 1, slash - space - 1));
    const int n = std::stoi(ping.substr(slash + 1));
    co_await s.send(bytesOf("pong " + std::to_string(i)));
    if (i + 1 == n) co_return bytesOf("answered " + std::to_string(n));
  }
}

// "<peer>|<rounds>|<third>|<rounds2>|<sleep micros>": pings the peer, then
// the third member in a subflow, sleeps, reads the clock and a random number.
Flow<Bytes> relayFlow(FlowContext& ctx, Bytes args) {
  const std::string text = textOf(args);
  std::vector<std::string> parts;
  for (size_t at = 0;;) {
    const size_t bar = text.find('|', at);
    parts.push_back(text.substr(at, bar - at));
    if (bar == std::string::npos) break;
    at = bar + 1;
  }
  Bytes first = co_await pingFlow(ctx, bytesOf(parts[0] + "|" + parts[1]));
  Bytes second = co_await ctx.subFlow("ping-sub", pingFlow(ctx, bytesOf(parts[2] + "|" + parts[3])));
  const int64_t before = co_await ctx.now();
  co_await ctx.sleep(std::stoll(parts[4]));
  const int64_t after = co_await ctx.now();
  const uint64_t r = co_await ctx.random();
  (void)r;
  (void)before;
  (void)after;  // a skewed clock may jump: nothing to check
  co_return bytesOf(textOf(first) + " + " + textOf(second) + ", slept");
}

struct Plan {
  uint32_t flows = 6;
  int64_t fault_phase_micros = 8'000'000;
  int64_t settle_deadline_micros = 600'000'000;
  bool faults = true;
  // A directed crash instead of random ones: the member crashes right after
  // its crash_after_events-th journaled event (counting from 1) and comes
  // back after crash_down_micros.
  int crash_member = -1;
  uint64_t crash_after_events = 0;
  int64_t crash_down_micros = 300'000;
  // One relay flow with these arguments instead of random ones.
  bool one_flow = false;
};

class World;

class FlowNode final : public sim::Node {
 public:
  FlowNode(sim::MemberEnv& env, World& world);
  ~FlowNode() override {
    runtime_.reset();
    delivery_.reset();
    vault_.reset();  // drains queued writes, which run against the stores below
    flows_.reset();
    messages_.reset();
  }
  void quiesce() override {
    if (vault_) vault_->waitForWrites();  // vault writes queued by flows (their completions post back)
    delivery_->waitForStore();
    runtime_->waitForStore();
  }
  FlowRuntime& runtime() { return *runtime_; }
  vault::FlowStore& flowStore() { return *flows_; }

 private:
  std::string name_;
  ContractRegistry registry_;
  std::unique_ptr<vault::Vault> vault_;
  std::unique_ptr<vault::MessageStore> messages_;
  std::unique_ptr<vault::FlowStore> flows_;
  std::unique_ptr<Delivery> delivery_;
  std::unique_ptr<FlowRuntime> runtime_;
};

class World {
 public:
  World(uint64_t seed, const Plan& plan) : sim(seed), plan_(plan) {}

  sim::Simulation sim;
  std::vector<std::string> failures;
  struct Started {
    std::string member;
    std::string expected;
  };
  std::map<FlowId, Started> started;  // start durable
  std::map<FlowId, int> finished_count;
  std::set<std::tuple<FlowId, SecureHash, uint32_t, bool, uint64_t>> handled;
  uint64_t handled_total = 0, flows_finished = 0, responders_finished = 0;

  void fail(const std::string& what) {
    if (failures.size() < 20) failures.push_back(what);
  }

  void onFinished(const std::string& member, const FlowInfo& info) {
    sim.trace(member + " finished " + info.id.hex());
    if (++finished_count[info.id] > 1) {
      fail("flow " + info.id.shortHex() + " (" + info.name + ") on '" + member +
           "' finished twice");
    }
    if (info.outcome != vault::FlowOutcome::ok) {
      fail("flow " + info.id.shortHex() + " (" + info.name + ") on '" + member + "' failed: " +
           (info.error ? info.error->toString() : std::string("?")));
    }
    if (info.responder) {
      ++responders_finished;
    } else {
      ++flows_finished;
    }
  }

  void onHandled(const FlowId& flow, const SecureHash& opener, uint32_t index, bool to_responder,
                 uint64_t seq) {
    ++handled_total;
    if (!handled.emplace(flow, opener, index, to_responder, seq).second) {
      fail("flow " + flow.shortHex() + " handled message seq " + std::to_string(seq) +
           " of session " + opener.shortHex() + "/" + std::to_string(index) + " twice");
    }
  }

  std::map<std::string, uint64_t> journaled_by;  // events journaled per member, all incarnations
  bool crashed = false;

  void onJournaled(const std::string& member) {
    const uint64_t n = ++journaled_by[member];
    if (plan_.crash_member < 0 || crashed || member != member_names[plan_.crash_member] ||
        n != plan_.crash_after_events) {
      return;
    }
    crashed = true;
    // Right after this event (the crash cannot destroy the node under its own call).
    sim.at(0, [this, member] {
      sim.crash(member);
      sim.at(plan_.crash_down_micros, [this, member] { sim.restart(member); });
    });
  }

  void startFixed() {
    auto* node = sim.nodeAs<FlowNode>(member_names[0]);
    const std::string args = member_names[1] + "|2|" + member_names[2] + "|2|500000";
    auto id = std::make_shared<FlowId>();
    auto result = node->runtime().startFlow(
        "relay", bytesOf(args), -1, [this, id](const Status& status) {
          if (!status) return fail("start failed: " + status.error().toString());
          started[*id] = Started{member_names[0], "ponged 2 + ponged 2, slept"};
        });
    if (!result) return fail("startFlow: " + result.error().toString());
    *id = *result;
  }

  void startOne() {
    auto& rng = sim.rng();
    const size_t from = rng.below(member_names.size());
    const std::string& member = member_names[from];
    auto* node = sim.nodeAs<FlowNode>(member);
    if (node == nullptr) return;  // down: so is whoever would start it
    const std::string& peer = member_names[(from + 1 + rng.below(2)) % 3];
    std::string third;
    for (const auto& m : member_names) {
      if (m != member && m != peer) third = m;
    }
    const int rounds = static_cast<int>(rng.between(1, 4));
    const int rounds2 = static_cast<int>(rng.between(1, 3));
    const int64_t sleep = rng.between(0, 1'500'000);
    const std::string args = peer + "|" + std::to_string(rounds) + "|" + third + "|" +
                             std::to_string(rounds2) + "|" + std::to_string(sleep);
    const std::string expected = "ponged " + std::to_string(rounds) + " + ponged " +
                                 std::to_string(rounds2) + ", slept";
    auto id = std::make_shared<FlowId>();
    auto result = node->runtime().startFlow(
        "relay", bytesOf(args), -1, [this, id, member, expected](const Status& status) {
          if (!status) return fail("start on '" + member + "' failed: " + status.error().toString());
          started[*id] = Started{member, expected};
        });
    if (!result) return fail("startFlow on '" + member + "': " + result.error().toString());
    *id = *result;
  }

  // Every durably started flow finished in its member's store, ok, with its result.
  bool allDone(bool report) {
    for (const auto& name : member_names) {
      auto* node = sim.nodeAs<FlowNode>(name);
      if (node == nullptr) return false;
      auto unfinished = node->flowStore().unfinishedFlows();
      if (!unfinished || !unfinished->empty()) {
        if (report) {
          fail("'" + name + "' has " + std::to_string(unfinished ? unfinished->size() : 0) +
               " unfinished flows at the end");
        }
        return false;
      }
    }
    for (const auto& [id, s] : started) {
      auto cp = sim.nodeAs<FlowNode>(s.member)->flowStore().flow(id).value();
      if (!cp || cp->status != vault::FlowStatus::finished) {
        if (report) fail("flow " + id.shortHex() + " of '" + s.member + "' never finished");
        return false;
      }
      if (report && (cp->outcome != vault::FlowOutcome::ok || textOf(cp->result) != s.expected)) {
        fail("flow " + id.shortHex() + " of '" + s.member + "' ended " +
             vault::flowOutcomeName(cp->outcome) + " with '" + textOf(cp->result) +
             "', want '" + s.expected + "'");
      }
    }
    return true;
  }

 private:
  const Plan& plan_;
};

FlowNode::FlowNode(sim::MemberEnv& env, World& world) : name_(env.name) {
  vault::VaultConfig vc;
  vc.store.path = env.dir;
  vc.store.durable = false;
  vault_ = vault::Vault::open(vc, registry_, {}).value();
  const Clock* clock = &env.clock;
  messages_ = std::make_unique<vault::MessageStore>(vault_->store(),
                                                    [clock] { return clock->nowMicros(); });
  flows_ = std::make_unique<vault::FlowStore>(vault_->store(),
                                              [clock] { return clock->nowMicros(); });
  DeliveryConfig dc;
  dc.retransmit_delay_micros_min = 50'000;
  dc.retransmit_delay_micros_max = 1'000'000;
  dc.log = [](std::string_view) {};
  delivery_ = std::make_unique<Delivery>(env.link, *messages_, env.executor, env.clock, dc);
  FlowRuntimeConfig fc;
  fc.self = env.name;
  fc.flow_timeout_micros = 0;  // the network heals; every flow must end by itself
  sim::Rng* rng = &world.sim.rng();
  fc.random_u64 = [rng] { return rng->next(); };
  fc.log = [&world, name = env.name](std::string_view line) {
    world.sim.trace(name + ": " + std::string(line));
  };
  runtime_ = std::make_unique<FlowRuntime>(*delivery_, env.executor, env.clock, *flows_, fc);
  CCAL_ASSERT(runtime_->registerFlow("pong", pongFlow).ok());
  CCAL_ASSERT(runtime_->registerFlow("relay", relayFlow).ok());
  CCAL_ASSERT(runtime_->registerInitiating("relay", "pong").ok());
  CCAL_ASSERT(runtime_->registerInitiating("ping-sub", "pong").ok());
  runtime_->setHooks(
      {[&world, name = env.name](const FlowInfo& info) { world.onFinished(name, info); },
       [&world](const FlowId& flow, const SecureHash& opener, uint32_t index, bool to_responder,
                uint64_t seq) { world.onHandled(flow, opener, index, to_responder, seq); },
       [&world, name = env.name](const FlowId&, uint64_t) { world.onJournaled(name); }});
  CCAL_ASSERT(runtime_->start().ok());
  CCAL_ASSERT(delivery_->start().ok());
}

struct Outcome {
  std::vector<std::string> failures;
  SecureHash trace;
  uint64_t started = 0, finished = 0, responders = 0, handled = 0, crashes = 0, events = 0;
  std::vector<uint64_t> journaled;  // per member
  // Of the runtimes alive at the end (their incarnation only):
  uint64_t resumed = 0, replayed = 0, suppressed = 0, duplicates = 0;
};

Outcome runSeed(uint64_t seed, const Plan& plan) {
  World world(seed, plan);
  sim::Simulation& sim = world.sim;
  auto& rng = sim.rng();
  if (plan.faults) {
    const double losses[] = {0, 0.05, 0.2};
    const double dups[] = {0, 0.1, 0.3};
    sim.network().loss = losses[rng.below(3)];
    sim.network().duplication = dups[rng.below(3)];
    sim.network().reorder = dups[rng.below(3)];
    sim.network().delay_micros_max = rng.chance(0.5) ? 2'000 : 50'000;
  }
  for (const auto& name : member_names) {
    sim.addMember(name, [&world](sim::MemberEnv& env) -> std::unique_ptr<sim::Node> {
      return std::make_unique<FlowNode>(env, world);
    });
  }
  if (plan.one_flow) {
    sim.at(1'000, [&world] { world.startFixed(); });
  } else {
    for (uint32_t i = 0; i < plan.flows; ++i) {
      sim.at(rng.between(0, plan.fault_phase_micros / 2), [&world] { world.startOne(); });
    }
  }
  if (plan.faults) {
    // Crashes at random moments, often soon after one another, so that
    // every step of a flow is hit in some seed; the member comes back after
    // a short or a long time.
    for (int64_t t = rng.between(0, 300'000); t < plan.fault_phase_micros;
         t += rng.between(20'000, 1'200'000)) {
      const std::string victim = member_names[rng.below(member_names.size())];
      sim.at(t, [&sim, victim, down = rng.between(1'000, 1'500'000)] {
        if (!sim.isUp(victim)) return;
        sim.crash(victim);
        sim.at(down, [&sim, victim] {
          if (!sim.isUp(victim)) sim.restart(victim);
        });
      });
    }
  }
  sim.runFor(plan.fault_phase_micros + 2'000'000);
  sim.heal();
  for (const auto& name : member_names) {
    if (!sim.isUp(name)) sim.restart(name);
  }
  if (!sim.runUntil([&] { return world.allDone(false); }, plan.settle_deadline_micros)) {
    world.allDone(true);
    if (world.failures.empty()) world.fail("not every flow finished");
  } else {
    world.allDone(true);  // checks the results
  }
  Outcome out;
  out.failures = world.failures;
  out.trace = sim.traceHash();
  out.started = world.started.size();
  out.finished = world.flows_finished;
  out.responders = world.responders_finished;
  out.handled = world.handled_total;
  out.crashes = sim.crashes();
  out.events = sim.scheduler().eventsRun();
  for (const auto& name : member_names) out.journaled.push_back(world.journaled_by[name]);
  for (const auto& name : member_names) {
    const auto& st = sim.nodeAs<FlowNode>(name)->runtime().stats();
    out.resumed += st.flows_resumed;
    out.replayed += st.events_replayed;
    out.suppressed += st.sends_suppressed;
    out.duplicates += st.messages_duplicate;
  }
  return out;
}

uint64_t envOr(const char* name, uint64_t fallback) {
  const char* text = ::getenv(name);
  return text && *text ? std::stoull(text) : fallback;
}

}  // namespace

TEST_CASE("flow sim: flows finish exactly once with their results across crashes and a lossy "
          "network") {
  Plan plan;
  plan.flows = static_cast<uint32_t>(envOr("CCAL_SIM_FLOWS", 6));
  std::vector<uint64_t> seeds;
  if (auto one = sim::seedFromEnvironment()) {
    seeds.push_back(*one);
  } else {
    for (uint64_t s = 1; s <= envOr("CCAL_SIM_SEEDS", 16); ++s) seeds.push_back(s);
  }
  uint64_t started = 0, finished = 0, responders = 0, handled = 0, crashes = 0, events = 0;
  uint64_t resumed = 0, replayed = 0, duplicates = 0;
  for (uint64_t seed : seeds) {
    Outcome out = runSeed(seed, plan);
    resumed += out.resumed;
    replayed += out.replayed;
    duplicates += out.duplicates;
    started += out.started;
    finished += out.finished;
    responders += out.responders;
    handled += out.handled;
    crashes += out.crashes;
    events += out.events;
    if (!out.failures.empty()) {
      std::string all;
      for (const auto& f : out.failures) all += "\n  " + f;
      FAIL_CHECK("seed " << seed << " failed (replay it with CCAL_SIM_SEED=" << seed << "):" << all);
      std::fprintf(stderr, "flow sim: seed %llu FAILED; replay with CCAL_SIM_SEED=%llu\n",
                   static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed));
    }
  }
  MESSAGE(seeds.size() << " seeds: " << started << " flows started durably, " << finished
                       << " finishes seen (" << responders << " responders), " << handled
                       << " messages handled, " << crashes << " crashes, " << events
                       << " events; the last incarnations resumed " << resumed << " flows, replayed "
                       << replayed << " events, dropped " << duplicates << " duplicates");
  if (seeds.size() >= 10) {
    CHECK(crashes > 0);
    CHECK(started > 0);
  }
}

TEST_CASE("flow sim: without faults every flow finishes and each message is handled once") {
  Plan plan;
  plan.faults = false;
  plan.flows = 8;
  Outcome out = runSeed(sim::seedFromEnvironment().value_or(3), plan);
  CHECK(out.failures.empty());
  for (const auto& f : out.failures) MESSAGE(f);
  CHECK(out.started == 8);
  CHECK(out.finished == 8);
  CHECK(out.responders == 16);  // one ping and one subflow ping per flow
}

TEST_CASE("flow sim: one seed replays exactly (same trace hash)") {
  Plan plan;
  const uint64_t seed = sim::seedFromEnvironment().value_or(5);
  Outcome first = runSeed(seed, plan);
  Outcome second = runSeed(seed, plan);
  CHECK(first.failures.empty());
  CHECK(first.trace == second.trace);
  CHECK(first.events == second.events);
}

TEST_CASE("flow sim: a crash of any member right after each of its journaled events") {
  // The clean run says how many events each member journals.
  Plan clean;
  clean.faults = false;
  clean.one_flow = true;
  Outcome base = runSeed(11, clean);
  REQUIRE(base.failures.empty());
  REQUIRE(base.started == 1);
  // 2 + 2 receives, subflow end, now, timer; the now and random after the
  // timer are deferred and dropped at the end (nothing outside depends on them).
  CHECK(base.journaled[0] == 7);
  CHECK(base.journaled[1] == 2);
  CHECK(base.journaled[2] == 2);
  uint64_t runs = 0, resumed = 0, replayed = 0, suppressed = 0, duplicates = 0;
  for (int member = 0; member < 3; ++member) {
    for (uint64_t k = 1; k <= base.journaled[member]; ++k) {
      for (int64_t down : {int64_t{1'000}, int64_t{2'000'000}}) {
        Plan plan = clean;
        plan.crash_member = member;
        plan.crash_after_events = k;
        plan.crash_down_micros = down;
        Outcome out = runSeed(11, plan);
        ++runs;
        resumed += out.resumed;
        replayed += out.replayed;
        suppressed += out.suppressed;
        duplicates += out.duplicates;
        CHECK(out.crashes == 1);
        if (!out.failures.empty()) {
          std::string all;
          for (const auto& f : out.failures) all += "\n  " + f;
          FAIL_CHECK("crash of member " << member << " after event " << k << " (down " << down
                                        << " us):" << all);
        }
      }
    }
  }
  MESSAGE(runs << " runs: " << resumed << " flows resumed, " << replayed << " events replayed, "
               << suppressed << " sends suppressed, " << duplicates
               << " duplicate messages dropped");
  CHECK(resumed > 0);
  CHECK(replayed > 0);
  CHECK(suppressed > 0);
}
