// Exactly-once, ordered delivery (flows/delivery.h) under the simulator:
// four members send each other a few hundred messages while the network
// loses, duplicates, delays and reorders frames, partitions come and go,
// members crash and restart over their LMDB directories and clocks jump.
// Every receiver checks, as each message is handed over, that it was sent,
// that it was not consumed before (exactly once) and that it comes in the
// sender's order, skipping only messages whose consumption was asked for
// before a restart; at the end, after healing, every message sent has been
// consumed exactly once and every outbox and inbox is empty.
//
// Each seed is one run; a failure names its seed, and CCAL_SIM_SEED=<n>
// replays that run exactly. CCAL_SIM_SEEDS=<count> runs more seeds and
// CCAL_SIM_MESSAGES=<n> sends more messages per seed.

#include <doctest/doctest.h>

#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "flows/delivery.h"
#include "ledger/contract.h"
#include "test/sim/sim.h"
#include "vault/message_store.h"
#include "vault/vault.h"

using namespace ccal;
using namespace ccal::flows;

namespace {

const std::vector<std::string> member_names = {
    "O=Haikou Fishing Cooperative, L=Haikou, C=CN",
    "O=Sanya Tea Cooperative, L=Sanya, C=CN",
    "O=Hainan Rural Bank, L=Haikou, C=CN",
    "O=Hainan Financial Regulator, L=Haikou, C=CN",
};

MessageId idOf(const std::string& from, const std::string& to, uint64_t index) {
  return SecureHash::of(asBytes(from + "|" + to + "|" + std::to_string(index)));
}

// The payload names the pair and the index; its length varies with the index.
std::string payloadOf(const std::string& from, const std::string& to, uint64_t index) {
  return from + "|" + to + "|" + std::to_string(index) + "|" + std::string(index % 53, 'x');
}

struct Plan {
  uint32_t messages = 300;            // in all, between random pairs
  int64_t fault_phase_micros = 20'000'000;
  int64_t settle_deadline_micros = 900'000'000;
  bool faults = true;
  uint32_t window_messages_max = 16;  // small, so the window and its refills are exercised
  uint32_t inbox_waiting_messages_max = 32;
};

class World;

// A member: its vault's store, message store and Delivery, over the member's directory.
class DeliveryNode final : public sim::Node, public MessageHandler {
 public:
  DeliveryNode(sim::MemberEnv& env, World& world, const Plan& plan);
  ~DeliveryNode() override {
    delivery_.reset();
    vault_.reset();  // drains queued writes, which run against messages_
    messages_.reset();
  }
  // Delivery is the only writer to this store.
  void quiesce() override { delivery_->waitForStore(); }
  void onMessage(std::string_view peer, const MessageId& id, ByteView payload) override;

  void send(const std::string& to, uint64_t index);
  bool idle() const {
    if (!messages_->outboxPeers(1).value().empty()) return false;
    for (const std::string& peer : member_names) {
      if (!messages_->unconsumed(peer, 1).value().empty()) return false;
    }
    return true;
  }
  const Delivery& delivery() const { return *delivery_; }

 private:
  std::string name_;
  int incarnation_;
  Executor& executor_;
  World& world_;
  ContractRegistry registry_;
  std::unique_ptr<vault::Vault> vault_;
  std::unique_ptr<vault::MessageStore> messages_;
  std::unique_ptr<Delivery> delivery_;
};

// The application and the checker: what was sent, accepted, handed over and consumed.
class World {
 public:
  World(uint64_t seed, const Plan& plan) : sim(seed), plan_(plan) {}

  struct PairLog {
    uint64_t sent = 0;               // send() called for indexes below this
    std::set<uint64_t> accepted;     // done(ok): durably queued
    std::set<uint64_t> delivered;    // handed over at least once
    std::set<uint64_t> consume_requested;  // consume() called
    std::set<uint64_t> consumed;     // consume done(ok)
    int receiver_incarnation = -1;   // of the last hand-over
    uint64_t last_index = 0;         // handed over last, in that incarnation
  };

  sim::Simulation sim;
  std::map<std::pair<std::string, std::string>, PairLog> pairs;
  std::vector<std::string> failures;
  uint64_t delivered_total = 0, redelivered_after_restart = 0;

  void fail(const std::string& what) {
    if (failures.size() < 20) failures.push_back(what);
  }

  void onSendDone(const std::string& from, const std::string& to, uint64_t index,
                  const Status& status) {
    if (!status) {
      fail("send " + std::to_string(index) + " from '" + from + "' failed: " +
           status.error().toString());
      return;
    }
    pairs[{from, to}].accepted.insert(index);
  }

  void onDelivered(const std::string& receiver, int incarnation, std::string_view peer,
                   const MessageId& id, ByteView payload) {
    const std::string from(peer);
    const std::string text(payload.begin(), payload.end());
    // from|to|index|padding
    const size_t a = text.find('|'), b = text.find('|', a + 1), c = text.find('|', b + 1);
    if (a == std::string::npos || b == std::string::npos || c == std::string::npos) {
      return fail(receiver + " got a payload that is not one the test sent");
    }
    const uint64_t index = std::stoull(text.substr(b + 1, c - b - 1));
    const std::string where = "message " + std::to_string(index) + " from '" + from + "' at '" +
                              receiver + "' (incarnation " + std::to_string(incarnation) + ")";
    if (text.substr(0, a) != from || text.substr(a + 1, b - a - 1) != receiver ||
        text != payloadOf(from, receiver, index) || id != idOf(from, receiver, index)) {
      return fail(where + ": payload, peer or id do not match what was sent");
    }
    sim.trace(where);
    ++delivered_total;
    PairLog& log = pairs[{from, receiver}];
    if (index >= log.sent) return fail(where + ": never sent");
    if (log.consumed.count(index)) fail(where + ": handed over again after it was consumed");
    // Messages are handed over in the sender's order; only messages whose
    // consumption was asked for (in an earlier incarnation) may be skipped:
    // after a restart, every message not consumed comes again, in order.
    const bool same_incarnation = log.receiver_incarnation == incarnation;
    if (same_incarnation && index <= log.last_index) {
      fail(where + ": handed over again or out of order, after " +
           std::to_string(log.last_index));
    }
    for (uint64_t j = same_incarnation ? log.last_index + 1 : 0; j < index; ++j) {
      if (!log.consume_requested.count(j)) {
        fail(where + ": handed over before message " + std::to_string(j) +
             (same_incarnation ? " (after " + std::to_string(log.last_index) + ")" : ""));
        break;
      }
    }
    if (log.delivered.count(index)) ++redelivered_after_restart;
    log.delivered.insert(index);
    log.receiver_incarnation = incarnation;
    log.last_index = index;
  }

  void onConsumeRequested(const std::string& receiver, std::string_view peer,
                          const MessageId& id) {
    PairLog& log = pairs[{std::string(peer), receiver}];
    for (uint64_t i : log.delivered) {
      if (idOf(std::string(peer), receiver, i) == id) {
        log.consume_requested.insert(i);
        return;
      }
    }
    fail("asked to consume a message never handed over");
  }

  void onConsumed(const std::string& receiver, std::string_view peer, const MessageId& id,
                  const Status& status) {
    if (!status) {
      return fail("consume at '" + receiver + "' failed: " + status.error().toString());
    }
    // Find the index (ids are per pair and index).
    PairLog& log = pairs[{std::string(peer), receiver}];
    for (uint64_t i : log.delivered) {
      if (idOf(std::string(peer), receiver, i) == id) {
        log.consumed.insert(i);
        return;
      }
    }
    fail("consumed a message never handed over");
  }

  // A restarted sender re-sends what it had not seen accepted, like a flow
  // replaying from its checkpoint (same ids, same payloads, same order).
  void resendUnaccepted(const std::string& from) {
    auto* node = sim.nodeAs<DeliveryNode>(from);
    for (auto& [key, log] : pairs) {
      if (key.first != from) continue;
      for (uint64_t i = 0; i < log.sent; ++i) {
        if (!log.accepted.count(i)) node->send(key.second, i);
      }
    }
  }

  void sendOne() {
    auto& rng = sim.rng();
    const std::string& from = member_names[rng.below(member_names.size())];
    std::string to = from;
    while (to == from) to = member_names[rng.below(member_names.size())];
    auto* node = sim.nodeAs<DeliveryNode>(from);
    if (node == nullptr) return;  // down: the application is down too
    PairLog& log = pairs[{from, to}];
    node->send(to, log.sent++);
  }

  bool allDone() {
    for (auto& [key, log] : pairs) {
      if (log.consumed.size() != log.sent) return false;
    }
    for (const auto& name : member_names) {
      auto* node = sim.nodeAs<DeliveryNode>(name);
      if (node == nullptr || !node->idle()) return false;
    }
    return true;
  }

  const Plan& plan() const { return plan_; }

 private:
  const Plan& plan_;
};

DeliveryNode::DeliveryNode(sim::MemberEnv& env, World& world, const Plan& plan)
    : name_(env.name), incarnation_(env.incarnation), executor_(env.executor), world_(world) {
  vault::VaultConfig vc;
  vc.store.path = env.dir;
  vc.store.durable = false;
  vault_ = vault::Vault::open(vc, registry_, {}).value();
  const Clock* clock = &env.clock;
  messages_ = std::make_unique<vault::MessageStore>(vault_->store(),
                                                    [clock] { return clock->nowMicros(); });
  DeliveryConfig config;
  config.window_messages_max = plan.window_messages_max;
  config.inbox_waiting_messages_max = plan.inbox_waiting_messages_max;
  config.retransmit_delay_micros_min = 50'000;
  config.retransmit_delay_micros_max = 2'000'000;
  config.log = [](std::string_view) {};  // malformed frames are not expected here
  delivery_ = std::make_unique<Delivery>(env.link, *messages_, env.executor, env.clock, config);
  delivery_->setHandler(this);
  CCAL_ASSERT(delivery_->start().ok());
}

void DeliveryNode::send(const std::string& to, uint64_t index) {
  const std::string payload = payloadOf(name_, to, index);
  delivery_->send(to, idOf(name_, to, index), Bytes(payload.begin(), payload.end()),
                  [world = &world_, from = name_, to, index](const Status& s) {
                    world->onSendDone(from, to, index, s);
                  });
}

void DeliveryNode::onMessage(std::string_view peer, const MessageId& id, ByteView payload) {
  world_.onDelivered(name_, incarnation_, peer, id, payload);
  auto consume = [this, peer = std::string(peer), id] {
    world_.onConsumeRequested(name_, peer, id);
    delivery_->consume(peer, id, [world = &world_, name = name_, peer, id](const Status& s) {
      world->onConsumed(name, peer, id, s);
    });
  };
  // Consumed at once or a little later (messages then pile up unconsumed).
  auto& rng = world_.sim.rng();
  if (rng.chance(0.5)) {
    consume();
  } else {
    executor_.runAfter(rng.between(0, 300'000), consume);
  }
}

struct Outcome {
  std::vector<std::string> failures;
  SecureHash trace;
  uint64_t delivered = 0, redelivered = 0, crashes = 0, events = 0;
  // Of the Deliveries alive at the end: first transmissions, and refills
  // that read the outbox (the rest went out from send()'s copy).
  uint64_t messages_sent = 0, outbox_reads = 0;
  sim::Simulation::NetworkStats network;
};

Outcome runSeed(uint64_t seed, const Plan& plan) {
  World world(seed, plan);
  sim::Simulation& sim = world.sim;
  auto& rng = sim.rng();
  if (plan.faults) {
    const double losses[] = {0, 0.05, 0.2, 0.4};
    const double dups[] = {0, 0.1, 0.3};
    const int64_t delays[] = {1'000, 20'000, 200'000};
    sim.network().loss = losses[rng.below(4)];
    sim.network().duplication = dups[rng.below(3)];
    sim.network().reorder = dups[rng.below(3)];
    sim.network().delay_micros_max = delays[rng.below(3)];
  }
  for (const auto& name : member_names) {
    sim.addMember(name, [&world, &plan](sim::MemberEnv& env) -> std::unique_ptr<sim::Node> {
      auto node = std::make_unique<DeliveryNode>(env, world, plan);
      return node;
    });
  }
  // The workload: messages at random moments of the fault phase.
  for (uint32_t i = 0; i < plan.messages; ++i) {
    sim.at(rng.between(0, plan.fault_phase_micros), [&world] { world.sendOne(); });
  }
  // Faults: crashes with restarts, partitions with heals, clock jumps.
  if (plan.faults) {
    for (int64_t t = rng.between(0, 2'000'000); t < plan.fault_phase_micros;
         t += rng.between(200'000, 3'000'000)) {
      const std::string victim = member_names[rng.below(member_names.size())];
      switch (rng.below(3)) {
        case 0:
          sim.at(t, [&sim, &world, victim, down = rng.between(1'000, 3'000'000)] {
            if (!sim.isUp(victim)) return;
            sim.crash(victim);
            sim.at(down, [&sim, &world, victim] {
              if (sim.isUp(victim)) return;
              sim.restart(victim);
              world.resendUnaccepted(victim);
            });
          });
          break;
        case 1: {
          std::set<std::string> side{victim};
          if (rng.chance(0.5)) side.insert(member_names[rng.below(member_names.size())]);
          sim.at(t, [&sim, side, heal_after = rng.between(1'000, 4'000'000)] {
            sim.isolate(side);
            sim.at(heal_after, [&sim] { sim.heal(); });
          });
          break;
        }
        default:
          sim.at(t, [&sim, victim, skew = rng.between(-60'000'000, 60'000'000)] {
            sim.setSkew(victim, skew);
          });
      }
    }
  }
  sim.runFor(plan.fault_phase_micros + 5'000'000);
  // Heal: everyone up and connected; the network keeps its loss and duplication.
  sim.heal();
  for (const auto& name : member_names) {
    if (!sim.isUp(name)) {
      sim.restart(name);
      world.resendUnaccepted(name);
    }
  }
  if (!sim.runUntil([&] { return world.allDone(); }, plan.settle_deadline_micros)) {
    for (auto& [key, log] : world.pairs) {
      if (log.consumed.size() != log.sent) {
        world.fail("not all consumed from '" + key.first + "' to '" + key.second + "': " +
                   std::to_string(log.consumed.size()) + " of " + std::to_string(log.sent) +
                   " (accepted " + std::to_string(log.accepted.size()) + ", handed over " +
                   std::to_string(log.delivered.size()) + ")");
      }
    }
    if (world.failures.empty()) world.fail("outboxes or inboxes not empty at the end");
  }
  for (auto& [key, log] : world.pairs) {
    if (log.accepted.size() != log.sent) {
      world.fail("sends from '" + key.first + "' to '" + key.second + "' not all accepted");
    }
  }
  Outcome out;
  out.failures = world.failures;
  out.trace = sim.traceHash();
  out.delivered = world.delivered_total;
  out.redelivered = world.redelivered_after_restart;
  out.crashes = sim.crashes();
  out.events = sim.scheduler().eventsRun();
  out.network = sim.networkStats();
  for (const auto& name : member_names) {
    if (auto* node = sim.nodeAs<DeliveryNode>(name)) {
      out.messages_sent += node->delivery().stats().messages_sent;
      out.outbox_reads += node->delivery().stats().outbox_reads;
    }
  }
  return out;
}

// CI runs 24 seeds of 150 messages (1.5 s of CPU each under ASan, where
// LMDB's allocations for each nested write transaction and the writer
// threads' start and join dominate); CCAL_SIM_SEEDS and CCAL_SIM_MESSAGES
// run more (200 seeds of 300 messages were run while writing this).
uint64_t envOr(const char* name, uint64_t fallback) {
  const char* text = ::getenv(name);
  return text && *text ? std::stoull(text) : fallback;
}

}  // namespace

TEST_CASE("delivery sim: exactly once and in order under loss, duplication, reordering, "
          "partitions, crashes and clock jumps") {
  Plan plan;
  plan.messages = static_cast<uint32_t>(envOr("CCAL_SIM_MESSAGES", 150));
  std::vector<uint64_t> seeds;
  if (auto one = sim::seedFromEnvironment()) {
    seeds.push_back(*one);
  } else {
    for (uint64_t s = 1; s <= envOr("CCAL_SIM_SEEDS", 24); ++s) seeds.push_back(s);
  }
  uint64_t delivered = 0, redelivered = 0, crashes = 0, events = 0, lost = 0, duplicated = 0;
  for (uint64_t seed : seeds) {
    Outcome out = runSeed(seed, plan);
    delivered += out.delivered;
    redelivered += out.redelivered;
    crashes += out.crashes;
    events += out.events;
    lost += out.network.frames_lost;
    duplicated += out.network.frames_duplicated;
    if (!out.failures.empty()) {
      std::string all;
      for (const auto& f : out.failures) all += "\n  " + f;
      FAIL_CHECK("seed " << seed << " failed (replay it with CCAL_SIM_SEED=" << seed << "):" << all);
      std::fprintf(stderr, "delivery sim: seed %llu FAILED; replay with CCAL_SIM_SEED=%llu\n",
                   static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed));
    }
  }
  MESSAGE(seeds.size() << " seeds: " << delivered << " hand-overs (" << redelivered
                       << " again after a restart), " << crashes << " crashes, " << lost
                       << " frames lost, " << duplicated << " duplicated, " << events
                       << " events");
  if (seeds.size() >= 10) {  // the faults did happen
    CHECK(crashes > 0);
    CHECK(lost > 0);
    CHECK(redelivered > 0);
  }
}

TEST_CASE("delivery sim: one seed replays exactly (same trace hash), another differs") {
  Plan plan;
  plan.messages = 120;
  const uint64_t seed = sim::seedFromEnvironment().value_or(7);
  Outcome first = runSeed(seed, plan);
  Outcome second = runSeed(seed, plan);
  CHECK(first.failures.empty());
  CHECK(first.trace == second.trace);
  CHECK(first.events == second.events);
  CHECK(first.delivered == second.delivered);
  Outcome other = runSeed(seed + 1, plan);
  CHECK(other.trace != first.trace);
}

TEST_CASE("delivery sim: without faults every message is handed over once, in order") {
  Plan plan;
  plan.faults = false;
  plan.messages = 200;
  Outcome out = runSeed(sim::seedFromEnvironment().value_or(1), plan);
  CHECK(out.failures.empty());
  CHECK(out.delivered == 200);
  CHECK(out.redelivered == 0);
  // Without restarts and with room in the windows, a message goes out from
  // the copy send() kept once its enqueue is durable: the outbox is read
  // about once per stream, not per batch.
  CHECK(out.messages_sent == 200);
  MESSAGE(out.outbox_reads << " outbox reads for " << out.messages_sent << " messages");
  CHECK(out.outbox_reads * 4 < out.messages_sent);
}
